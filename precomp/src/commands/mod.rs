//! One module per subcommand.

pub mod demo;
pub mod mirror;
pub mod repo;
pub mod serve;
pub mod toolchain;
