//! The client against a real HTTP server on loopback (axum), which answers from a script:
//! statuses, `Retry-After`, delays, bodies cut short, stalled or over the limit. Each test
//! counts the requests the server saw, so retries are checked by what happened on the wire.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request as AxumRequest, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use precomp_http::artifacts::ArtifactClient;
use precomp_http::blocking::BlockingClient;
use precomp_http::{Client, Error, Idempotency, Request, Settings, USER_AGENT};
use sha2::{Digest, Sha256};

/// What the server answers to one request.
#[derive(Clone, Debug)]
enum Answer {
    /// A status and a body, with `Retry-After` when given.
    Status(u16, &'static str, Option<&'static str>),
    /// 200 with these bytes.
    Body(Vec<u8>),
    /// Waits, then 200 with these bytes.
    Late(Duration, Vec<u8>),
    /// 200 declaring `declared` bytes, sending `sent`, then dropping the connection.
    CutShort { declared: usize, sent: usize },
    /// 200, `first` bytes, then silence for `stall`, then the rest of `total`.
    Stall {
        first: usize,
        total: usize,
        stall: Duration,
    },
    /// 200 with `size` bytes in chunks, no Content-Length.
    Chunked(usize),
    /// 304 Not Modified.
    NotModified,
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
}

#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicUsize>,
}

struct Server {
    url: String,
    script: Script,
}

impl Server {
    /// Serves `answers` in order; the last one again for every later request.
    async fn start(answers: Vec<Answer>) -> Server {
        let script = Script {
            answers: Arc::new(Mutex::new(answers.into())),
            seen: Arc::default(),
            count: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { url, script }
    }

    fn requests(&self) -> usize {
        self.script.count.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

async fn answer(State(script): State<Script>, request: AxumRequest) -> Response {
    script.count.fetch_add(1, Ordering::SeqCst);
    script.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        headers: request.headers().clone(),
    });
    let next = {
        let mut answers = script.answers.lock().unwrap();
        if answers.len() > 1 {
            answers.pop_front().unwrap()
        } else {
            answers.front().cloned().expect("a script")
        }
    };
    let response = Response::builder();
    match next {
        Answer::Status(status, body, retry_after) => {
            let mut response = response.status(status);
            if let Some(value) = retry_after {
                response = response.header("retry-after", value);
            }
            response.body(Body::from(body)).unwrap()
        }
        Answer::Body(bytes) => response.body(Body::from(bytes)).unwrap(),
        Answer::Late(wait, bytes) => {
            tokio::time::sleep(wait).await;
            response.body(Body::from(bytes)).unwrap()
        }
        Answer::CutShort { declared, sent } => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from(vec![b'x'; sent])),
                Err(std::io::Error::other("cut")),
            ];
            response
                .header("content-length", declared)
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap()
        }
        Answer::Stall {
            first,
            total,
            stall,
        } => {
            let stream = futures::stream::unfold(0, move |step| async move {
                match step {
                    0 => Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; first])), 1)),
                    1 => {
                        tokio::time::sleep(stall).await;
                        Some((Ok(Bytes::from(vec![b'b'; total - first])), 2))
                    }
                    _ => None,
                }
            });
            response
                .header("content-length", total)
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Answer::Chunked(size) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = (0..size.div_ceil(1000))
                .map(|i| Ok(Bytes::from(vec![b'c'; 1000.min(size - i * 1000)])))
                .collect();
            response
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap()
        }
        Answer::NotModified => response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap(),
    }
}

/// Quick retries, so tests take milliseconds.
fn settings() -> Settings {
    Settings {
        retries: 3,
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(20),
        ..Settings::default()
    }
}

fn client(settings: Settings) -> Client {
    Client::new(settings).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_statuses_are_retried_until_an_answer() {
    for status in [408, 429, 500, 502, 503, 504] {
        let server = Server::start(vec![
            Answer::Status(status, "busy", None),
            Answer::Status(status, "busy", None),
            Answer::Body(b"finally".to_vec()),
        ])
        .await;
        let body = client(settings())
            .get(&server.url("/object"), 100)
            .await
            .unwrap();
        assert_eq!(body.as_deref(), Some(&b"finally"[..]), "{status}");
        assert_eq!(server.requests(), 3, "{status}: two retries");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_run_out_and_the_last_error_says_what_the_server_said() {
    let server = Server::start(vec![Answer::Status(502, "the backend is down", None)]).await;
    let error = client(settings())
        .get(&server.url("/object"), 100)
        .await
        .unwrap_err();
    assert_eq!(server.requests(), 4, "one attempt and three retries");
    assert_eq!(error.status(), Some(502));
    assert!(error.is_transient());
    let text = error.to_string();
    assert!(
        text.contains("/object") && text.contains("502") && text.contains("the backend is down"),
        "{text}"
    );

    let no_retries = Settings {
        retries: 0,
        ..settings()
    };
    let server = Server::start(vec![Answer::Status(503, "busy", None)]).await;
    assert!(client(no_retries).get(&server.url("/x"), 10).await.is_err());
    assert_eq!(server.requests(), 1, "--retries 0 makes one attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_are_never_retried() {
    for status in [400, 401, 403, 404, 409, 413, 422, 501] {
        let server = Server::start(vec![Answer::Status(status, "no", None)]).await;
        let result = client(settings())
            .fetch(&Request::get(server.url("/object"), 100))
            .await;
        let error = result.unwrap_err();
        assert_eq!(error.status(), Some(status), "{error}");
        assert!(!error.is_transient(), "{status}");
        assert_eq!(server.requests(), 1, "{status} is an answer, not a failure");
        match status {
            401 => {
                // No token was sent: the error says so rather than that a token was refused.
                assert!(matches!(error, Error::TokenRequired { .. }), "{error}");
                assert!(
                    error.to_string().contains("refused without a token"),
                    "{error}"
                );
            }
            403 => assert!(matches!(error, Error::Forbidden { .. })),
            400 | 409 | 413 | 422 => assert!(matches!(error, Error::Refused { .. })),
            _ => assert!(matches!(error, Error::Status { .. })),
        }
    }
    // The same 401 to a request that carried a token: the token was refused.
    let server = Server::start(vec![Answer::Status(401, "unknown token", None)]).await;
    let with_token = Settings {
        token: Some("pct_token".into()),
        ..settings()
    };
    let error = client(with_token)
        .fetch(&Request::get(server.url("/object"), 100).with_token())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unauthorized { .. }), "{error}");
    assert!(error.to_string().contains("token was refused"), "{error}");
    let server = Server::start(vec![Answer::Status(404, "none", None)]).await;
    assert_eq!(
        client(settings())
            .get(&server.url("/missing"), 10)
            .await
            .unwrap(),
        None,
        "get: 404 is no object"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_are_not_idempotent_are_repeated_only_when_the_server_did_not_act() {
    let post = |server: &Server| {
        Request::post(server.url("/jobs/lease"), "{}", Idempotency::NotIdempotent).limit(100)
    };
    for status in [500, 502, 504] {
        let server = Server::start(vec![
            Answer::Status(status, "maybe done", None),
            Answer::Body(b"{}".to_vec()),
        ])
        .await;
        let error = client(settings()).fetch(&post(&server)).await.unwrap_err();
        assert_eq!(error.status(), Some(status));
        assert_eq!(server.requests(), 1, "{status}: the server may have acted");
    }
    for status in [408, 429, 503] {
        let server = Server::start(vec![
            Answer::Status(status, "not now", None),
            Answer::Body(b"{}".to_vec()),
        ])
        .await;
        let (head, body) = client(settings()).fetch(&post(&server)).await.unwrap();
        assert_eq!((head.status, &body[..]), (200, &b"{}"[..]));
        assert_eq!(
            server.requests(),
            2,
            "{status}: refused before acting, so repeated"
        );
        assert!(server.seen().iter().all(|s| s.method == "POST"));
    }
    // A body cut short: the server acted; an idempotent request is repeated, this one not.
    let server = Server::start(vec![
        Answer::CutShort {
            declared: 100,
            sent: 10,
        },
        Answer::Body(b"{}".to_vec()),
    ])
    .await;
    let error = client(settings()).fetch(&post(&server)).await.unwrap_err();
    assert!(matches!(error, Error::Transport { .. }), "{error}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_within_the_bound() {
    let server = Server::start(vec![
        Answer::Status(429, "slow down", Some("1")),
        Answer::Body(b"ok".to_vec()),
    ])
    .await;
    let started = Instant::now();
    let patient = Settings {
        max_backoff: Duration::from_secs(5),
        ..settings()
    };
    let body = client(patient).get(&server.url("/x"), 10).await.unwrap();
    assert_eq!(body.as_deref(), Some(&b"ok"[..]));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?} despite Retry-After: 1",
        started.elapsed()
    );

    // An hour is capped at max_backoff (50 ms here).
    let server = Server::start(vec![
        Answer::Status(503, "maintenance", Some("3600")),
        Answer::Body(b"ok".to_vec()),
    ])
    .await;
    let started = Instant::now();
    let body = client(settings()).get(&server.url("/x"), 10).await.unwrap();
    assert_eq!(body.as_deref(), Some(&b"ok"[..]));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A wait that would end past the deadline is not started: the error comes at once.
    let server = Server::start(vec![Answer::Status(503, "maintenance", Some("3600"))]).await;
    let short = Settings {
        max_backoff: Duration::from_secs(60),
        timeout: Duration::from_secs(2),
        ..settings()
    };
    let started = Instant::now();
    let error = client(short).get(&server.url("/x"), 10).await.unwrap_err();
    assert_eq!(error.status(), Some(503));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_deadline_bounds_every_attempt_and_every_wait() {
    let server = Server::start(vec![Answer::Late(Duration::from_secs(5), b"late".to_vec())]).await;
    let bounded = Settings {
        timeout: Duration::from_millis(400),
        retries: 10,
        ..settings()
    };
    let started = Instant::now();
    let error = client(bounded)
        .get(&server.url("/slow"), 10)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert!(error.to_string().contains("/slow"), "{error}");
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );

    // A call's own deadline overrides the client's timeout.
    let server = Server::start(vec![Answer::Late(Duration::from_secs(5), b"late".to_vec())]).await;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let error = client(settings())
        .fetch(&Request::get(server.url("/slow"), 10).deadline(deadline))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_times_out_and_is_fetched_again() {
    let server = Server::start(vec![
        Answer::Stall {
            first: 100,
            total: 1000,
            stall: Duration::from_secs(10),
        },
        Answer::Body(vec![b'z'; 1000]),
    ])
    .await;
    let impatient = Settings {
        read_timeout: Duration::from_millis(300),
        ..settings()
    };
    let started = Instant::now();
    let body = client(impatient)
        .get(&server.url("/stall"), 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body.len(), 1000);
    assert!(
        body.iter().all(|b| *b == b'z'),
        "the stalled attempt's bytes are dropped"
    );
    assert_eq!(server.requests(), 2);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_short_is_fetched_again() {
    let server = Server::start(vec![
        Answer::CutShort {
            declared: 1000,
            sent: 300,
        },
        Answer::Body(vec![b'y'; 1000]),
    ])
    .await;
    let body = client(settings())
        .get(&server.url("/cut"), 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&body[..], &vec![b'y'; 1000][..]);
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_are_refused_as_they_arrive_and_not_retried() {
    // Declared too large: refused before reading.
    let server = Server::start(vec![Answer::Body(vec![0; 5000])]).await;
    let error = client(settings())
        .get(&server.url("/big"), 4096)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::TooLarge { limit: 4096, url } if url.ends_with("/big")),
        "{error}"
    );
    assert!(error.to_string().contains("4096"), "{error}");
    assert_eq!(server.requests(), 1);

    // Not declared: refused once past the limit.
    let server = Server::start(vec![Answer::Chunked(50_000)]).await;
    let error = client(settings())
        .get(&server.url("/stream"), 10_000)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TooLarge { limit: 10_000, .. }),
        "{error}"
    );
    assert_eq!(server.requests(), 1);

    // Exactly the limit is fine.
    let server = Server::start(vec![Answer::Chunked(10_000)]).await;
    let body = client(settings())
        .get(&server.url("/stream"), 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body.len(), 10_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_agent_and_the_token_only_where_asked() {
    let server = Server::start(vec![Answer::Body(b"{}".to_vec())]).await;
    let with_token = client(Settings {
        token: Some("pct_secret".into()),
        ..settings()
    });
    with_token
        .fetch(&Request::get(server.url("/public"), 10))
        .await
        .unwrap();
    with_token
        .fetch(&Request::get(server.url("/private"), 10).with_token())
        .await
        .unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.headers["user-agent"], USER_AGENT);
        assert!(USER_AGENT.starts_with("precomp/"));
    }
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(seen[1].headers["authorization"], "Bearer pct_secret");

    // Without a token, a call that needs one fails before anything is sent.
    let error = client(settings())
        .fetch(&Request::get(server.url("/private"), 10).with_token())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NoToken { .. }), "{error}");
    assert!(error.to_string().contains("--token"), "{error}");
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_requests_see_304_and_the_etag() {
    let server = Server::start(vec![Answer::NotModified]).await;
    let (head, body) = client(settings())
        .fetch(&Request::get(server.url("/packages/x"), 10).if_none_match(Some("\"abc\"")))
        .await
        .unwrap();
    assert_eq!(head.status, 304);
    assert!(body.is_empty());
    assert_eq!(server.seen()[0].headers["if-none-match"], "\"abc\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_connection_is_retried_and_named() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", listener.local_addr().unwrap());
    drop(listener);
    let started = Instant::now();
    let error = client(settings()).get(&url, 10).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(error.is_transient());
    let text = error.to_string();
    assert!(
        text.contains(&url) && text.contains("running there"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_are_checked_against_their_digest_as_they_arrive() {
    let artifact = vec![7u8; 3000];
    let sha256: [u8; 32] = Sha256::digest(&artifact).into();
    let server = Server::start(vec![
        Answer::Body(artifact.clone()),
        Answer::Body(vec![8u8; 3000]),
        Answer::Status(404, "no such artifact", None),
    ])
    .await;
    let mirror = ArtifactClient::with_settings(&server.url, settings()).unwrap();
    let body = mirror.artifact_sized(&sha256, 3000).await.unwrap().unwrap();
    assert_eq!(&body[..], &artifact[..]);
    assert_eq!(
        server.seen()[0].path,
        format!("/precomp/v1/artifacts/{}", hex::encode(sha256))
    );
    let error = mirror.artifact_sized(&sha256, 3000).await.unwrap_err();
    assert!(matches!(error, Error::Digest { .. }), "{error}");
    assert_eq!(mirror.artifact_sized(&sha256, 3000).await.unwrap(), None);
    // Longer than the manifest says: refused, whatever its digest.
    let server = Server::start(vec![Answer::Body(artifact.clone())]).await;
    let mirror = ArtifactClient::with_settings(&server.url, settings()).unwrap();
    let error = mirror.artifact_sized(&sha256, 2999).await.unwrap_err();
    assert!(
        matches!(error, Error::TooLarge { limit: 2999, .. }),
        "{error}"
    );
}

#[test]
fn the_blocking_client_works_from_plain_threads() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(Server::start(vec![
        Answer::Status(503, "busy", None),
        Answer::Body(b"tarball".to_vec()),
    ]));
    let blocking = BlockingClient::new(settings()).unwrap();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let blocking = blocking.clone();
            let url = server.url("/tarballs/x-1.0.0.tar");
            std::thread::spawn(move || blocking.get(&url, 100).unwrap())
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap().as_deref(), Some(&b"tarball"[..]));
    }
    assert_eq!(server.requests(), 4, "one 503, retried, then three answers");
    drop(blocking);
}
