//! Contract tests (filled below).
