//! The worker library driven directly (no CLI) against a real mirror on loopback
//! (`common::TestMirror`: `precomp serve`'s server in this process), building in the real
//! sandbox on the host toolchain: a leased miss built and published closes the job; a lease
//! the mirror ends stops the build with nothing reported; an audit job's verdict is posted.

mod common;

use std::time::{Duration, Instant};

use std::sync::Arc;

use common::*;
use precomp_builder::Cancel;
use precomp_proto::api::{FailureReport, JobKind, LeaseRequest};
use precomp_proto::manifest::ArtifactSigningKey;
use precomp_worker::heartbeat::Heartbeat;
use precomp_worker::{chain, JobLine, JobStatus, RunEnd, WorkerError};

/// A build worker leases the reported miss of plain_ex, builds it in the sandbox with its
/// lease renewed (2 s, so heartbeats must keep it), publishes it: the job and the miss are
/// closed, the index lists the worker's key; run again, it finds no job and says so.
#[test]
fn a_leased_miss_is_built_published_and_its_job_closed() {
    let fixture = Fixture::get();
    let mirror = TestMirror::start();
    let token = mirror.token("builder", &fixture.builder.public_key());
    let worker = TestWorker::new(&mirror, JobKind::Build, &token, &fixture.builder, 2);
    let (otp, elixir) = worker.tuple();
    let lock = fixture.lock(&["plain_ex@1.0.0"]);
    let base_key = mirror.report_miss(&lock, "plain_ex", &otp, &elixir);

    let end = worker.run().unwrap();
    assert_eq!(end, RunEnd::Job(JobStatus::Done));
    let line = worker.recorder.last_line();
    assert_eq!(line["outcome"], "published", "{line}");
    assert_eq!(line["kind"], "build");
    assert_eq!(line["package"], "plain_ex");
    assert_eq!(line["base_key"], base_key.as_str());
    assert_eq!(line["lease_lost"], false);
    let key = line["key"].as_str().unwrap().to_string();
    let results = line["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{line}");
    assert_eq!(results[0]["status"], "built");
    assert_eq!(results[0]["published"], true);
    assert_eq!(results[0]["publish_result"], "created");
    assert_eq!(results[0]["key"], key.as_str());
    assert!(worker.recorder.noted("job "), "progress is noted");

    // The publish closed the miss, and with it the job: nothing is left to lease.
    let client = mirror.client(Some(&token));
    let misses = mirror.block_on(client.misses()).unwrap();
    assert!(
        misses.misses.iter().all(|m| m.miss_key() != base_key),
        "the miss is closed: {misses:?}"
    );
    let index = mirror.block_on(client.index("plain_ex")).unwrap();
    let build = index.builds.iter().find(|b| b.key == key).expect("indexed");
    assert_eq!(build.signers, vec![fixture.builder.public_key().key_id()]);

    let again = TestWorker::new(&mirror, JobKind::Build, &token, &fixture.builder, 2);
    assert_eq!(again.run().unwrap(), RunEnd::NoJobs);
    let reports = again.recorder.reports.lock().unwrap();
    assert!(matches!(reports[0].line, JobLine::NoJobs(_)), "{reports:?}");
    assert!(
        reports[0]
            .summary
            .starts_with("no open misses for this worker"),
        "{}",
        reports[0].summary
    );
}

/// While slow_ex builds (a minute-long compile), someone else records the miss's failure,
/// which closes the job: the next heartbeat is refused, the build is cancelled within
/// seconds, nothing is stored or reported, and the job ends `lease_lost`.
#[test]
fn a_lease_the_mirror_ends_cancels_the_build() {
    let fixture = Fixture::get();
    let mirror = TestMirror::start();
    let token = mirror.token("builder", &fixture.builder.public_key());
    let worker = TestWorker::new(&mirror, JobKind::Build, &token, &fixture.builder, 3);
    let (otp, elixir) = worker.tuple();
    let lock = fixture.lock(&["slow_ex@1.0.0"]);
    let base_key = mirror.report_miss(&lock, "slow_ex", &otp, &elixir);

    let (end, ended_after) = std::thread::scope(|scope| {
        let running = scope.spawn(|| worker.run());
        // Once its build runs, close the job from elsewhere.
        let started = Instant::now();
        while !worker.recorder.noted("building slow_ex") {
            assert!(!running.is_finished(), "the worker stopped before building");
            assert!(started.elapsed() < Duration::from_secs(120), "no build");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
        let other = mirror.token("closer", &fixture.builder.public_key());
        mirror
            .block_on(mirror.client(Some(&other)).record_failure(&FailureReport {
                package: "slow_ex".into(),
                version: "1.0.0".into(),
                base_key: base_key.clone(),
                toolchain_id: "elsewhere".into(),
                log: "built and failed elsewhere\n".into(),
            }))
            .unwrap();
        let closed = Instant::now();
        (running.join().unwrap(), closed.elapsed())
    });
    eprintln!("the build stopped {ended_after:?} after the job was closed");
    // Heartbeats every second: refused within a few.
    assert!(
        ended_after < Duration::from_secs(15),
        "took {ended_after:?}"
    );
    assert_eq!(end.unwrap(), RunEnd::Job(JobStatus::Failed));
    let line = worker.recorder.last_line();
    assert_eq!(line["outcome"], "lease_lost", "{line}");
    assert_eq!(line["lease_lost"], true, "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("ended the lease"),
        "{line}"
    );
    // Nothing stored, nothing reported: the one failure is the one recorded elsewhere.
    let stored = std::fs::read_dir(worker.data.path().join("builds/manifests"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "a cancelled build was stored");
    let failures = mirror
        .block_on(mirror.client(None).failures("slow_ex"))
        .unwrap();
    assert_eq!(failures.failures.len(), 1, "{failures:?}");
    assert_eq!(failures.failures[0].toolchain_id, "elsewhere");
}

/// Cancelling the worker's shutdown handle (what SIGTERM does) while slow_ex builds: the
/// build stops at once, nothing is stored, the job is released (another token leases it
/// right away) and the worker returns `Stopped`.
#[test]
fn shutdown_stops_the_build_and_releases_the_job() {
    let fixture = Fixture::get();
    let mirror = TestMirror::start();
    let token = mirror.token("builder", &fixture.builder.public_key());
    let worker =
        TestWorker::new(&mirror, JobKind::Build, &token, &fixture.builder, 60).until_shutdown();
    let (otp, elixir) = worker.tuple();
    let lock = fixture.lock(&["slow_ex@1.0.0"]);
    let base_key = mirror.report_miss(&lock, "slow_ex", &otp, &elixir);

    let (end, stopped_after) = std::thread::scope(|scope| {
        let running = scope.spawn(|| worker.run());
        let started = Instant::now();
        while !worker.recorder.noted("building slow_ex") {
            assert!(!running.is_finished(), "the worker stopped before building");
            assert!(started.elapsed() < Duration::from_secs(120), "no build");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
        let cancelled = Instant::now();
        worker.shutdown.cancel("the test stops the worker");
        (running.join().unwrap(), cancelled.elapsed())
    });
    eprintln!("the worker stopped {stopped_after:?} after shutdown");
    assert!(
        stopped_after < Duration::from_secs(10),
        "took {stopped_after:?}"
    );
    assert_eq!(end.unwrap(), RunEnd::Stopped);
    let line = worker.recorder.last_line();
    assert_eq!(line["outcome"], "cancelled", "{line}");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("the test stops the worker"),
        "{line}"
    );
    assert!(worker.recorder.noted("released for another worker"));
    let stored = std::fs::read_dir(worker.data.path().join("builds/manifests"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "a cancelled build was stored");
    // Released: another worker's lease gets it now, though the first lease had 60 s left.
    let other = mirror.token("other", &fixture.builder.public_key());
    let request: LeaseRequest = serde_json::from_value(serde_json::json!({
        "worker": "other", "otp_major": otp, "elixir": elixir, "mix_env": "prod",
        "targets": ["any"], "lease_seconds": 60,
    }))
    .unwrap();
    let lease = mirror
        .block_on(mirror.client(Some(&other)).lease(&request))
        .unwrap()
        .expect("the released job is leased again");
    assert_eq!(lease.miss.unwrap().miss_key(), base_key);
}

/// An audit worker leases the published build of plain_ex, rebuilds it in the sandbox, gets
/// the same bytes, and posts its countersignature and a `match` verdict: the index lists the
/// auditor, the mirror's verdicts name it, and the job is closed.
#[test]
fn an_audit_job_posts_its_verdict() {
    let fixture = Fixture::get();
    let mirror = TestMirror::start();
    let builder_token = mirror.token("builder", &fixture.builder.public_key());
    let builder = TestWorker::new(
        &mirror,
        JobKind::Build,
        &builder_token,
        &fixture.builder,
        60,
    );
    let (otp, elixir) = builder.tuple();
    let lock = fixture.lock(&["plain_ex@1.0.0"]);
    mirror.report_miss(&lock, "plain_ex", &otp, &elixir);
    assert_eq!(builder.run().unwrap(), RunEnd::Job(JobStatus::Done));
    let key = builder.recorder.last_line()["key"]
        .as_str()
        .unwrap()
        .to_string();

    let auditor_token = mirror.token("auditor", &fixture.auditor.public_key());
    let auditor = TestWorker::new(
        &mirror,
        JobKind::Audit,
        &auditor_token,
        &fixture.auditor,
        60,
    );
    assert_eq!(auditor.run().unwrap(), RunEnd::Job(JobStatus::Done));
    let line = auditor.recorder.last_line();
    assert_eq!(line["kind"], "audit", "{line}");
    assert_eq!(line["outcome"], "match", "{line}");
    assert_eq!(line["key"], key.as_str());
    assert_eq!(line["audit"]["result"], "match", "{line}");
    assert!(line["audit"]["countersigned"].is_string(), "{line}");
    let summary = &auditor.recorder.reports.lock().unwrap()[0].summary;
    assert!(summary.contains("match verdict posted"), "{summary}");

    let auditor_id = fixture.auditor.public_key().key_id();
    let client = mirror.client(None);
    let verdicts = mirror.block_on(client.verdicts(&key)).unwrap();
    assert!(!verdicts.flagged);
    assert!(
        verdicts
            .verdicts
            .iter()
            .any(|v| v.auditor == auditor_id && v.result == "match"),
        "{verdicts:?}"
    );
    let index = mirror.block_on(client.index("plain_ex")).unwrap();
    let build = index.builds.iter().find(|b| b.key == key).unwrap();
    assert!(build.auditors.contains(&auditor_id), "{build:?}");
    // Audited by its one auditor: no audit job is left for it.
    let again = TestWorker::new(
        &mirror,
        JobKind::Audit,
        &auditor_token,
        &fixture.auditor,
        60,
    );
    assert_eq!(again.run().unwrap(), RunEnd::NoJobs);
    assert_eq!(again.recorder.last_line()["outcome"], "no_jobs");
}

/// `--once` against a mirror that refuses the token, then against no mirror at all: each is
/// a `WorkerError::Lease` holding the mirror's HTTP error (`Unauthorized`, `Connect`), and
/// the message says what was asked of which server, and what to check.
#[test]
fn a_refused_token_and_an_unreachable_mirror_are_typed_errors_that_say_what_to_do() {
    let fixture = Fixture::get();
    let mirror = TestMirror::start();
    let worker = TestWorker::new(&mirror, JobKind::Build, "not-a-token", &fixture.builder, 60);
    let error = worker.run().unwrap_err();
    let WorkerError::Lease {
        source: precomp_http::Error::Unauthorized { url, .. },
    } = &error
    else {
        panic!("not a refused token: {error:?}");
    };
    assert_eq!(url, &format!("{}/precomp/v1/jobs/lease", mirror.url));
    let message = chain(&error);
    assert!(
        message.starts_with(&format!(
            "leasing a job from the mirror: {url}: the token was refused: "
        )),
        "{message}"
    );
    assert_eq!(error.mirror_error().and_then(|e| e.status()), Some(401));

    // Nothing listens there once the mirror is stopped.
    let url = mirror.url.clone();
    drop(mirror);
    let mirror = TestMirror::start();
    let worker =
        TestWorker::new(&mirror, JobKind::Build, "any", &fixture.builder, 60).with_mirror(&url);
    let error = worker.run().unwrap_err();
    assert!(
        matches!(
            &error,
            WorkerError::Lease {
                source: precomp_http::Error::Connect { .. }
            }
        ),
        "not an unreachable mirror: {error:?}"
    );
    let message = chain(&error);
    assert!(
        message.starts_with(&format!(
            "leasing a job from the mirror: {url}/precomp/v1/jobs/lease: "
        )) && message.ends_with("is the mirror running there? (check the URL)"),
        "{message}"
    );
    assert!(error.mirror_error().is_some_and(|e| e.is_transient()));
}

/// The worker's own publish closes the job; a heartbeat sent after that (here: the mirror's
/// answer to the manifest upload is held back for 2 s, longer than the 2 s lease's heartbeat
/// interval) is refused with "job N is closed (published KEY)". That is the result the worker
/// reported, not a lost lease: the job is `published`, `lease_lost` false, no warning.
#[test]
fn a_heartbeat_refused_because_the_workers_own_publish_closed_the_job_is_not_a_lost_lease() {
    let fixture = Fixture::get();
    let mirror = TestMirror::start();
    let proxy = HoldingProxy::start(
        &mirror.url,
        b"PUT /precomp/v1/manifests/",
        usize::MAX,
        Hold::Answer(Duration::from_secs(2)),
    );
    let token = mirror.token("builder", &fixture.builder.public_key());
    let worker = TestWorker::new(&mirror, JobKind::Build, &token, &fixture.builder, 2)
        .with_mirror(&proxy.url);
    let (otp, elixir) = worker.tuple();
    let lock = fixture.lock(&["plain_ex@1.0.0"]);
    let base_key = mirror.report_miss(&lock, "plain_ex", &otp, &elixir);

    let end = worker.run().unwrap();
    let notes = worker.recorder.notes.lock().unwrap().clone();
    assert_eq!(end, RunEnd::Job(JobStatus::Done), "{notes:?}");
    let line = worker.recorder.last_line();
    assert_eq!(line["outcome"], "published", "{line}");
    assert_eq!(line["base_key"], base_key.as_str());
    assert_eq!(line["lease_lost"], false, "{line} {notes:?}");
    assert!(
        notes.iter().all(|n| !n.contains("lost the lease")),
        "{notes:?}"
    );
    // The mirror did refuse a heartbeat meanwhile: the job was closed by the publish.
    let client = mirror.client(Some(&token));
    let misses = mirror.block_on(client.misses()).unwrap();
    assert!(misses.misses.iter().all(|m| m.miss_key() != base_key));
}

/// A renewal lost on the way (a proxy never passes the first heartbeat on; the client gives
/// up after the 2 s interval of a 6 s lease) is followed by the next one on the cadence, at
/// 4 s, not an interval after giving up (6 s, when the lease has ended): another token asking
/// for jobs all along never gets the job, and the lease is never refused.
#[test]
fn a_lost_renewal_is_followed_by_another_before_the_lease_ends() {
    let fixture = Fixture::get();
    let mirror = TestMirror::start();
    let proxy = HoldingProxy::start(&mirror.url, b"/heartbeat", 1, Hold::Request);
    let holder = mirror.token("holder", &fixture.builder.public_key());
    let other = mirror.token("other", &ArtifactSigningKey::generate().public_key());
    let lock = fixture.lock(&["plain_ex@1.0.0"]);
    mirror.report_miss(&lock, "plain_ex", "25", "1.14.0");
    let request = |worker: &str| -> LeaseRequest {
        serde_json::from_value(serde_json::json!({
            "kind": "build", "worker": worker, "otp_major": "25", "elixir": "1.14.0",
            "mix_env": "prod", "targets": ["any"], "lease_seconds": 6,
        }))
        .unwrap()
    };
    let lease = mirror
        .block_on(mirror.client(Some(&holder)).lease(&request("holder")))
        .unwrap()
        .expect("the miss's job");
    let recorder = Arc::new(Recorder::default());
    let heartbeat = Heartbeat::start(
        &proxy.url,
        &holder,
        lease.job,
        6,
        Cancel::new(),
        recorder.clone(),
    )
    .unwrap();

    let other_client = mirror.client(Some(&other));
    let until = Instant::now() + Duration::from_millis(7500);
    while Instant::now() < until {
        let taken = mirror
            .block_on(other_client.lease(&request("other")))
            .unwrap();
        assert!(
            taken.is_none(),
            "the lease ended: {taken:?}; renewals seen {}",
            proxy.seen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Renewals at 2 s (lost), 4 s and 6 s.
    assert!(proxy.seen() >= 3, "renewals seen: {}", proxy.seen());
    assert!(
        recorder.noted(&format!("warning: heartbeat of job {}", lease.job)),
        "the lost renewal is a warning"
    );
    assert_eq!(heartbeat.stop(), None);
}
