//! The mirror's precompiled-artifact API (`/precomp/v1/`), against a real `precomp serve` over
//! loopback: upload tokens (`precomp token`), verification before anything is stored or
//! indexed, what is served, failed builds, clients' misses, and the `ArtifactClient` that
//! `precomp build` and `precomp fetch` use. Manifests are made and signed with proto's API.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use precomp_artifacts::{FailureReport, MissMember, MissReport, MAX_FAILURE_LOG};
use precomp_http::artifacts::{ArtifactClient, Uploaded};
use precomp_http::Error as ClientError;
use precomp_proto::buildkey::{
    BuildInputs, ClosureMember, CompileEnvEntry, Manager, PackageRef, Target,
};
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, Output, SignedManifest};
use precomp_proto::term::Term;
use prost::Message;
use reqwest::blocking::Client;
use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The base key of shape_user 1.0.0 (checksum 11…11) with shapes 2.0.0 (22…22) built for
/// `any` with no compile env, OTP 25, Elixir 1.14.0, prod, any (proto's build key, whose
/// vectors proto/tests/buildkey.rs checks).
fn shape_user_base_key() -> String {
    shape_user_base_key_for("1.14.0")
}

fn shape_user_base_key_for(elixir: &str) -> String {
    inputs(elixir, Vec::new()).base_key().unwrap().to_string()
}

/// A mix.lock holding shape_user and its closure (shapes), as in the test vector.
const LOCK: &str = r#"%{
  "shape_user": {:hex, :shape_user, "1.0.0", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", [:mix], [{:shapes, ">= 1.0.0", [hex: :shapes, repo: "hexpm", optional: false]}], "hexpm", "1111111111111111111111111111111111111111111111111111111111111111"},
  "shapes": {:hex, :shapes, "2.0.0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", [:mix], [], "hexpm", "2222222222222222222222222222222222222222222222222222222222222222"},
}
"#;

fn inputs(elixir: &str, compile_env: Vec<CompileEnvEntry>) -> BuildInputs {
    BuildInputs {
        package: PackageRef {
            name: "shape_user".into(),
            version: "1.0.0".into(),
            outer_checksum: [0x11; 32],
        },
        manager: Manager::Mix,
        closure: vec![ClosureMember {
            package: shapes(),
            key: Some(shapes_inputs(elixir).key().unwrap()),
        }],
        otp_major: "25".into(),
        elixir: elixir.into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env,
    }
}

fn shapes() -> PackageRef {
    PackageRef {
        name: "shapes".into(),
        version: "2.0.0".into(),
        outer_checksum: [0x22; 32],
    }
}

/// shapes 2.0.0 built for `any` with no compile env: the closure member of [`inputs`].
fn shapes_inputs(elixir: &str) -> BuildInputs {
    BuildInputs {
        package: shapes(),
        manager: Manager::Mix,
        closure: vec![],
        otp_major: "25".into(),
        elixir: elixir.into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env: vec![],
    }
}

fn greeting_env() -> Vec<CompileEnvEntry> {
    vec![
        CompileEnvEntry {
            app: "shape_user".into(),
            path: vec![Term::Atom("greeting".into())],
            value: Some(Term::Binary(b"hello".to_vec())),
        },
        CompileEnvEntry {
            app: "shape_user".into(),
            path: vec![
                Term::Atom("format".into()),
                Term::Atom("punctuation".into()),
            ],
            value: None,
        },
    ]
}

/// A real artifact tarball (`proto::artifact::pack`) whose one beam's bytes depend on `tag`.
fn artifact_bytes(tag: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("ebin")).unwrap();
    let mut beam = format!("artifact {tag}\n").into_bytes();
    beam.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(app.join("ebin/app.beam"), beam).unwrap();
    precomp_proto::artifact::pack(&app, dir.path())
        .unwrap()
        .bytes
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// A manifest of `inputs` whose output is `artifact`.
fn manifest(inputs: &BuildInputs, artifact: &[u8]) -> Manifest {
    let output = Output {
        artifact_sha256: sha256(artifact).to_vec(),
        artifact_size: artifact.len() as u64,
        // What the artifact holds, when it is one (a test may name bytes never uploaded).
        files: precomp_proto::artifact::list(artifact).unwrap_or_default(),
        native_code: false,
    };
    test_manifest(inputs, output, "test", None)
}

fn signed(manifest: &Manifest, key: &ArtifactSigningKey) -> Vec<u8> {
    SignedManifest::sign(manifest, key).encode_to_vec()
}

/// A new signing key, its public key written to DIR/NAME.pub.
fn signing_key(dir: &Path, name: &str) -> (ArtifactSigningKey, PathBuf) {
    let key = ArtifactSigningKey::generate();
    let path = dir.join(format!("{name}.pub"));
    std::fs::write(&path, key.public_key().to_pem().unwrap()).unwrap();
    (key, path)
}

/// `precomp --data DATA token create --name NAME [--key KEY]`: the token it prints.
fn create_token(data: &Path, name: &str, key: Option<&Path>) -> String {
    create_scoped_token(data, name, key, &[])
}

fn create_scoped_token(data: &Path, name: &str, key: Option<&Path>, scopes: &[&str]) -> String {
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(data)
        .args(["token", "create", "--name", name]);
    for scope in scopes {
        command.args(["--scope", scope]);
    }
    if let Some(key) = key {
        command.arg("--key").arg(key);
    }
    let output = output_within(command, Duration::from_secs(30));
    let stdout = ok(output);
    let token = stdout.trim().to_string();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    token
}

fn token_cli(data: &Path, args: &[&str]) -> std::process::Output {
    let mut command = precomp_command();
    command.arg("--data").arg(data).arg("token").args(args);
    output_within(command, Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------------------
// The server and HTTP
// ---------------------------------------------------------------------------------------------

/// A `precomp serve` on its own data directory, killed when dropped. Its upstream is a signed
/// static repository holding the registry records of [`LOCK`]'s releases (what misses are
/// checked against); these tests never ask it for a tarball.
struct Server(ServeProcess);

impl Server {
    fn start(data: &Path, args: &[&str]) -> Server {
        Server::with_upstream(data, &[LOCK], args)
    }

    /// With an upstream holding the records of `locks`' releases.
    fn with_upstream(data: &Path, locks: &[&str], args: &[&str]) -> Server {
        let (upstream, upstream_key) =
            signed_upstream(&data.parent().unwrap().join("signed-upstream"), locks);
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(upstream)
            .arg("--upstream-key")
            .arg(upstream_key)
            .args(args);
        Server::spawn(command)
    }

    fn spawn(command: Command) -> Server {
        Server(ServeProcess::spawn(command))
    }

    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }
}

fn empty_upstream(data: &Path) -> String {
    let dir = data.parent().unwrap().join("empty-upstream");
    std::fs::create_dir_all(&dir).unwrap();
    format!("file://{}", dir.display())
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Answer {
    let client = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().unwrap().to_vec(),
    }
}

fn get(url: &str) -> Answer {
    request("GET", url, None, None, &[])
}

fn put(url: &str, token: Option<&str>, body: &[u8]) -> Answer {
    request("PUT", url, token, Some(body.to_vec()), &[])
}

fn post_json(url: &str, token: Option<&str>, value: &impl serde::Serialize) -> Answer {
    request(
        "POST",
        url,
        token,
        Some(serde_json::to_vec(value).unwrap()),
        &[("content-type", "application/json")],
    )
}

fn artifact_path(sha: &str) -> String {
    format!("/precomp/v1/artifacts/{sha}")
}

fn manifest_path(key: &str) -> String {
    format!("/precomp/v1/manifests/{key}")
}

/// Every file under DATA/artifacts/blobs and DATA/artifacts/tmp.
fn stored_files(data: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&data.join("artifacts/blobs"), &mut files);
    walk(&data.join("artifacts/tmp"), &mut files);
    files
}

fn db(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join("artifacts/artifacts.db")).unwrap()
}

fn count_rows(data: &Path, table: &str) -> i64 {
    db(data)
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
}

fn index_builds(server: &Server) -> Vec<serde_json::Value> {
    let answer = get(&server.url("/precomp/v1/index/shape_user"));
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    assert_eq!(json["package"], "shape_user");
    json["builds"].as_array().unwrap().clone()
}

/// A miss of shape_user with its base key, carrying what the key needs: shapes built for
/// `any` with no compile env.
fn miss_report(base_key: &str, elixir: &str) -> MissReport {
    MissReport {
        package: "shape_user".into(),
        version: "1.0.0".into(),
        base_key: Some(base_key.into()),
        request_key: None,
        variant_key: None,
        reason: "not built".into(),
        otp_major: "25".into(),
        elixir: elixir.into(),
        mix_env: "prod".into(),
        target: "any".into(),
        lock: LOCK.into(),
        manager: "mix".into(),
        compile_env: vec![],
        closure: vec![MissMember {
            name: "shapes".into(),
            version: "2.0.0".into(),
            manager: "mix".into(),
            target: Some("any".into()),
            compile_env: vec![],
        }],
    }
}

fn failure_report(base_key: &str, log: &str) -> FailureReport {
    FailureReport {
        package: "shape_user".into(),
        version: "1.0.0".into(),
        base_key: base_key.into(),
        toolchain_id: "0123456789ab".into(),
        log: log.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn token_create_prints_the_token_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = create_token(&data, "ci-builder", None);
    let body = token.strip_prefix("pct_").expect(&token);
    assert_eq!(body.len(), 43, "{token}");
    assert!(
        body.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{token}"
    );
    let other = create_token(&data, "other", None);
    assert_ne!(token, other);

    // The database holds the token's SHA-256, and the token nowhere, in any table.
    let db = db(&data);
    let stored: Vec<u8> = db
        .query_row(
            "SELECT sha256 FROM tokens WHERE name = 'ci-builder'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(stored, sha256(token.as_bytes()).to_vec());
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(tables.contains(&"tokens".to_string()), "{tables:?}");
    let mut cells = 0;
    for table in &tables {
        let mut stmt = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..columns {
                cells += 1;
                let bytes = match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                        b.to_vec()
                    }
                    _ => continue,
                };
                for secret in [&token, &other] {
                    assert!(
                        !bytes
                            .windows(body.len())
                            .any(|w| w == &secret.as_bytes()[4..]),
                        "{table} column {i} holds a token"
                    );
                }
            }
        }
    }
    assert!(cells >= 2 * 6, "only {cells} cells read");

    // Listed without the token.
    let list = ok(token_cli(&data, &["list"]));
    assert!(
        list.contains("ci-builder") && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains(&token[4..]), "{list}");

    // One active token per name; a revoked name can be reused.
    let again = token_cli(&data, &["create", "--name", "ci-builder"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("revoke it first"), "{}", text(&again));
    ok(token_cli(&data, &["revoke", "ci-builder"]));
    let list = ok(token_cli(&data, &["list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("ci-builder\t") && l.contains("revoked")),
        "{list}"
    );
    let twice = token_cli(&data, &["revoke", "ci-builder"]);
    assert!(!twice.status.success());
    assert!(text(&twice).contains("already revoked"), "{}", text(&twice));
    let unknown = token_cli(&data, &["revoke", "nobody"]);
    assert!(!unknown.status.success());
    let renewed = create_token(&data, "ci-builder", None);
    assert_ne!(renewed, token);

    // Bound to a key: listed with its key id; a file that is no key is refused.
    let (key, key_path) = signing_key(dir.path(), "builder");
    create_token(&data, "bound", Some(&key_path));
    let list = ok(token_cli(&data, &["list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("bound\t") && l.contains(&key.public_key().key_id())),
        "{list}"
    );
    let not_a_key = dir.path().join("not-a-key.pub");
    std::fs::write(&not_a_key, "hello").unwrap();
    let refused = token_cli(
        &data,
        &[
            "create",
            "--name",
            "x",
            "--key",
            not_a_key.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("not an ed25519 public key"),
        "{}",
        text(&refused)
    );
}

#[test]
fn uploads_need_a_valid_unrevoked_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_builder, builder_pub) = signing_key(dir.path(), "builder");
    let token = create_token(&data, "b1", None);
    let server = Server::start(&data, &["--builder-key", builder_pub.to_str().unwrap()]);
    let bytes = artifact_bytes("a");
    let url = server.url(&artifact_path(&sha256_hex(&bytes)));

    let none = put(&url, None, &bytes);
    assert_eq!(none.status, 401, "{}", none.text());
    assert_eq!(none.header("www-authenticate"), "Bearer realm=\"precomp\"");
    assert!(
        none.text().contains("precomp token create"),
        "{}",
        none.text()
    );

    let unknown = format!("pct_{}", "A".repeat(43));
    let wrong = put(&url, Some(&unknown), &bytes);
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert!(wrong.text().contains("unknown token"), "{}", wrong.text());
    let malformed = put(&url, Some(&token[..20]), &bytes);
    assert_eq!(malformed.status, 401, "{}", malformed.text());
    let basic = request(
        "PUT",
        &url,
        None,
        Some(bytes.clone()),
        &[("authorization", "Basic YjE6eA==")],
    );
    assert_eq!(basic.status, 401, "{}", basic.text());
    assert!(stored_files(&data).is_empty(), "{:?}", stored_files(&data));

    let good = put(&url, Some(&token), &bytes);
    assert_eq!(good.status, 201, "{}", good.text());
    assert_eq!(good.json()["created"], true);
    let again = put(&url, Some(&token), &bytes);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["created"], false);

    // Revoked while the server runs: refused from the next request on.
    ok(token_cli(&data, &["revoke", "b1"]));
    let other = artifact_bytes("b");
    let revoked = put(
        &server.url(&artifact_path(&sha256_hex(&other))),
        Some(&token),
        &other,
    );
    assert_eq!(revoked.status, 401, "{}", revoked.text());
    assert!(revoked.text().contains("revoked"), "{}", revoked.text());
    assert_eq!(stored_files(&data).len(), 1, "{:?}", stored_files(&data));
    let failure = post_json(
        &server.url("/precomp/v1/failures"),
        Some(&token),
        &failure_report(&shape_user_base_key(), "boom"),
    );
    assert_eq!(failure.status, 401, "{}", failure.text());
    let misses = request(
        "GET",
        &server.url("/precomp/v1/misses"),
        Some(&token),
        None,
        &[],
    );
    assert_eq!(misses.status, 401, "{}", misses.text());
    drop(server);

    // A mirror that trusts no builder key: an unbound token can publish nothing (403, saying
    // how to configure); a token bound to a key can.
    let data2 = dir.path().join("data2");
    let unbound = create_token(&data2, "unbound", None);
    let bound = create_token(&data2, "bound", Some(&builder_pub));
    let server = Server::start(&data2, &[]);
    let forbidden = put(&url_on(&server, &bytes), Some(&unbound), &bytes);
    assert_eq!(forbidden.status, 403, "{}", forbidden.text());
    assert!(
        forbidden.text().contains("--builder-key")
            && forbidden
                .text()
                .contains("precomp token create --name NAME --key"),
        "{}",
        forbidden.text()
    );
    assert!(stored_files(&data2).is_empty());
    let allowed = put(&url_on(&server, &bytes), Some(&bound), &bytes);
    assert_eq!(allowed.status, 201, "{}", allowed.text());
}

fn url_on(server: &Server, bytes: &[u8]) -> String {
    server.url(&artifact_path(&sha256_hex(bytes)))
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

#[test]
fn an_artifact_that_does_not_match_its_digest_is_refused_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_builder, builder_pub) = signing_key(dir.path(), "builder");
    let token = create_token(&data, "b1", None);
    let server = Server::start(&data, &["--builder-key", builder_pub.to_str().unwrap()]);

    let claimed = artifact_bytes("claimed");
    let sent = artifact_bytes("sent");
    let answer = put(&url_on(&server, &claimed), Some(&token), &sent);
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(
        answer.text().contains(&sha256_hex(&sent)) && answer.text().contains(&sha256_hex(&claimed)),
        "{}",
        answer.text()
    );
    assert!(
        answer.text().contains("nothing was stored"),
        "{}",
        answer.text()
    );
    assert_eq!(get(&url_on(&server, &claimed)).status, 404);
    assert_eq!(get(&url_on(&server, &sent)).status, 404);
    assert!(stored_files(&data).is_empty(), "{:?}", stored_files(&data));
    assert_eq!(count_rows(&data, "artifacts"), 0);
    // The refused upload's temporary file (written off the runtime) is gone too.
    let tmp: Vec<_> = std::fs::read_dir(data.join("artifacts/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");

    // An empty body is an artifact too: it must match its digest like any other.
    let empty = put(&url_on(&server, &claimed), Some(&token), b"");
    assert_eq!(empty.status, 422, "{}", empty.text());
    assert!(stored_files(&data).is_empty(), "{:?}", stored_files(&data));

    // Control: the right bytes under the same path are stored.
    let answer = put(&url_on(&server, &claimed), Some(&token), &claimed);
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(stored_files(&data).len(), 1);
}

#[test]
fn manifests_are_verified_before_they_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (builder, builder_pub) = signing_key(dir.path(), "builder");
    let (own, own_pub) = signing_key(dir.path(), "own");
    let (stranger, _) = signing_key(dir.path(), "stranger");
    let token = create_token(&data, "b1", None);
    let own_token = create_token(&data, "own", Some(&own_pub));
    let server = Server::start(&data, &["--builder-key", builder_pub.to_str().unwrap()]);

    let artifact = artifact_bytes("x");
    assert_eq!(
        put(&url_on(&server, &artifact), Some(&token), &artifact).status,
        201
    );
    let inputs = inputs("1.14.0", Vec::new());
    let good = manifest(&inputs, &artifact);
    let key = good.key.clone();
    let url = server.url(&manifest_path(&key));

    let refused = |answer: Answer, status: u16, reason: &str| {
        assert_eq!(answer.status, status, "{reason}: {}", answer.text());
        assert!(
            answer.text().contains(reason),
            "expected {reason:?} in {}",
            answer.text()
        );
    };

    refused(
        put(&url, Some(&token), b"not a manifest at all"),
        422,
        "manifest refused",
    );

    // A file list that is not what the artifact holds.
    let mut lying = good.clone();
    lying.output.as_mut().unwrap().files[0].sha256[0] ^= 1;
    refused(
        put(&url, Some(&token), &signed(&lying, &builder)),
        422,
        "artifact check failed",
    );

    // A signature that does not verify: changed signature bytes, or changed manifest bytes.
    let mut envelope = SignedManifest::sign(&good, &builder);
    envelope.signatures[0].signature[7] ^= 1;
    refused(
        put(&url, Some(&token), &envelope.encode_to_vec()),
        422,
        "does not verify",
    );
    let mut envelope = SignedManifest::sign(&good, &builder);
    let last = envelope.manifest.len() - 1;
    envelope.manifest[last] ^= 1;
    refused(
        put(&url, Some(&token), &envelope.encode_to_vec()),
        422,
        "does not verify",
    );

    // Signed by a key the mirror does not trust; by a trusted builder key but uploaded with a
    // token bound to another key.
    refused(
        put(&url, Some(&token), &signed(&good, &stranger)),
        403,
        "no signature by",
    );
    refused(
        put(&url, Some(&own_token), &signed(&good, &builder)),
        403,
        &own.public_key().key_id(),
    );

    // Uploaded under another key; claiming a key its inputs do not give.
    let other_key = "ab".repeat(32);
    refused(
        put(
            &server.url(&manifest_path(&other_key)),
            Some(&token),
            &signed(&good, &builder),
        ),
        422,
        "uploaded to",
    );
    let mut lying = good.clone();
    lying.key = other_key.clone();
    refused(
        put(
            &server.url(&manifest_path(&other_key)),
            Some(&token),
            &signed(&lying, &builder),
        ),
        422,
        "key check failed",
    );
    // A manifest of key format v1 (format 1, no manager, closure members without keys, as
    // precomp wrote them before key format v2): refused, saying so.
    let mut old = good.clone();
    old.format = 1;
    old.manager.clear();
    for member in &mut old.closure {
        member.key.clear();
    }
    refused(
        put(&url, Some(&token), &signed(&old, &builder)),
        422,
        "key format v1",
    );

    // Its artifact is not here, or not with that size.
    let missing = manifest(&inputs, &artifact_bytes("never uploaded"));
    refused(
        put(&url, Some(&token), &signed(&missing, &builder)),
        422,
        "upload it first",
    );
    let mut wrong_size = good.clone();
    wrong_size.output.as_mut().unwrap().artifact_size += 1;
    refused(
        put(&url, Some(&token), &signed(&wrong_size, &builder)),
        422,
        "bytes",
    );

    // Over the bound.
    refused(
        put(&url, Some(&token), &vec![0u8; 16 * 1024 * 1024 + 1]),
        413,
        "over the limit",
    );

    // Nothing was stored or indexed.
    assert_eq!(count_rows(&data, "manifests"), 0);
    assert!(index_builds(&server).is_empty());
    assert_eq!(get(&url).status, 404);
    assert_eq!(get(&server.url(&manifest_path(&other_key))).status, 404);

    // Controls: the token's own key publishes; a builder key countersigns the same manifest.
    let by_own = put(&url, Some(&own_token), &signed(&good, &own));
    assert_eq!(by_own.status, 201, "{}", by_own.text());
    let by_builder = put(&url, Some(&token), &signed(&good, &builder));
    assert_eq!(by_builder.status, 200, "{}", by_builder.text());
    let json = by_builder.json();
    assert_eq!(json["result"], "countersigned");
    assert_eq!(
        json["signers"],
        serde_json::json!([own.public_key().key_id(), builder.public_key().key_id()])
    );
    let served = SignedManifest::decode(&get(&url).body).unwrap();
    assert_eq!(served.signatures.len(), 2);
    served
        .verify(&[builder.public_key()])
        .expect("countersigned manifest verifies with the builder key");
    served
        .verify(&[own.public_key()])
        .expect("countersigned manifest verifies with the own key");

    // Another manifest of the published key with the same artifact (other provenance) by a
    // signer that already signed these bytes changes nothing; the published manifest is
    // never replaced while its signers count.
    let mut different = good.clone();
    different.provenance.as_mut().unwrap().builder_id = "someone else".into();
    let same_bytes = put(&url, Some(&token), &signed(&different, &builder));
    assert_eq!(same_bytes.status, 200, "{}", same_bytes.text());
    assert_eq!(same_bytes.json()["result"], "unchanged");
    assert_eq!(SignedManifest::decode(&get(&url).body).unwrap(), served);
    // Other artifact bytes for the key: a reproducibility finding (409), recorded.
    let other_artifact = artifact_bytes("y");
    assert_eq!(
        put(
            &url_on(&server, &other_artifact),
            Some(&token),
            &other_artifact
        )
        .status,
        201
    );
    let other = manifest(&inputs, &other_artifact);
    assert_eq!(other.key, key);
    refused(
        put(&url, Some(&token), &signed(&other, &builder)),
        409,
        "reproducibility finding",
    );
    assert_eq!(index_builds(&server).len(), 1);
    assert_eq!(index_builds(&server)[0]["flagged"], true);
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

#[test]
fn a_published_build_is_served_and_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (builder, builder_pub) = signing_key(dir.path(), "builder");
    let token = create_token(&data, "b1", None);
    // The builder key from the config file this time.
    let config = dir.path().join("precomp.toml");
    std::fs::write(
        &config,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:0\"\nupstream = {:?}\nbuilder_keys = [{:?}]\n",
            data.to_str().unwrap(),
            empty_upstream(&data),
            builder_pub.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut command = precomp_command();
    command.arg("serve").arg("--config").arg(&config);
    let server = Server::spawn(command);

    let artifact = artifact_bytes("served");
    let sha = sha256_hex(&artifact);
    let inputs = inputs("1.14.0", greeting_env());
    let built = manifest(&inputs, &artifact);
    let bytes = signed(&built, &builder);

    let answer = put(&url_on(&server, &artifact), Some(&token), &artifact);
    assert_eq!(answer.status, 201, "{}", answer.text());
    let answer = put(
        &server.url(&manifest_path(&built.key)),
        Some(&token),
        &bytes,
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    let json = answer.json();
    assert_eq!(json["result"], "created");
    assert_eq!(json["base_key"], built.base_key.as_str());
    assert_eq!(
        json["signers"],
        serde_json::json!([builder.public_key().key_id()])
    );

    // The manifest: the uploaded bytes, with a strong ETag and a short cache.
    let served = get(&server.url(&manifest_path(&built.key)));
    assert_eq!(served.status, 200);
    assert_eq!(served.body, bytes);
    let etag = format!("\"{}\"", sha256_hex(&bytes));
    assert_eq!(served.header("etag"), etag);
    assert_eq!(served.header("cache-control"), "public, max-age=60");
    let revalidated = request(
        "GET",
        &server.url(&manifest_path(&built.key)),
        None,
        None,
        &[("if-none-match", &etag)],
    );
    assert_eq!(revalidated.status, 304);
    assert!(revalidated.body.is_empty());

    // The artifact: its bytes, cached forever.
    let served = get(&url_on(&server, &artifact));
    assert_eq!(served.status, 200);
    assert_eq!(served.body, artifact);
    assert_eq!(
        served.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(served.header("etag"), format!("\"{sha}\""));
    let head = request("HEAD", &url_on(&server, &artifact), None, None, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), artifact.len().to_string());
    assert!(head.body.is_empty());

    // The index lists the build with its inputs, its compile env and its signer.
    let builds = index_builds(&server);
    assert_eq!(builds.len(), 1, "{builds:?}");
    let compile_env: Vec<serde_json::Value> = built
        .compile_env
        .iter()
        .map(|r| serde_json::json!({"app": r.app, "path": r.path, "value": r.value}))
        .collect();
    assert_eq!(
        builds[0],
        serde_json::json!({
            "version": "1.0.0",
            "key": built.key,
            "base_key": shape_user_base_key(),
            "otp_major": "25",
            "elixir": "1.14.0",
            "mix_env": "prod",
            "target": "any",
            "artifact_sha256": sha,
            "artifact_size": artifact.len(),
            "compile_env": compile_env,
            "key_format": 2,
            "signers": [builder.public_key().key_id()],
        })
    );
    assert_eq!(
        builds[0]["compile_env"][1]["value"],
        serde_json::Value::Null
    );
    assert_eq!(builds[0]["compile_env"][0]["value"], "<<\"hello\">>");

    // Uploading the same again changes nothing.
    let again = put(
        &server.url(&manifest_path(&built.key)),
        Some(&token),
        &bytes,
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["result"], "unchanged");
    assert_eq!(
        put(&url_on(&server, &artifact), Some(&token), &artifact).status,
        200
    );

    // Another compile env: another key under the same base key, listed beside it.
    let plain = manifest(&self::inputs("1.14.0", Vec::new()), &artifact);
    assert_eq!(plain.base_key, built.base_key);
    assert_ne!(plain.key, built.key);
    let answer = put(
        &server.url(&manifest_path(&plain.key)),
        Some(&token),
        &signed(&plain, &builder),
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    let builds = index_builds(&server);
    let mut keys = vec![plain.key.clone(), built.key.clone()];
    keys.sort();
    assert_eq!(
        builds
            .iter()
            .map(|b| b["key"].as_str().unwrap())
            .collect::<Vec<_>>(),
        keys
    );
    let unknown = get(&server.url("/precomp/v1/index/nothing_here"));
    assert_eq!(unknown.status, 200);
    assert_eq!(
        unknown.json(),
        serde_json::json!({"package": "nothing_here", "builds": []})
    );

    // Unknown API paths and methods; the Hex routes are answered as before.
    assert_eq!(get(&server.url("/precomp/v1/nothing")).status, 404);
    let delete = request(
        "DELETE",
        &url_on(&server, &artifact),
        Some(&token),
        None,
        &[],
    );
    assert_eq!(delete.status, 405);
    assert_eq!(delete.header("allow"), "GET, HEAD, PUT");
    // Each resource named by a digest: its other methods 405 with its `Allow`, a parameter
    // that is no digest 404 (the API's), whatever the method.
    let digest = "ab".repeat(32);
    for (path, method, allow) in [
        (
            format!("/precomp/v1/manifests/{digest}"),
            "DELETE",
            "GET, HEAD, PUT",
        ),
        (
            format!("/precomp/v1/manifests/{digest}/history"),
            "PUT",
            "GET, HEAD",
        ),
        (
            format!("/precomp/v1/verdicts/{digest}"),
            "PUT",
            "GET, HEAD, POST",
        ),
    ] {
        let answer = request(method, &server.url(&path), Some(&token), None, &[]);
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(answer.header("allow"), allow, "{method} {path}");
        let not_a_digest = path.replace(&digest, "not-a-digest");
        let answer = request(method, &server.url(&not_a_digest), Some(&token), None, &[]);
        assert_eq!(answer.status, 404, "{method} {not_a_digest}");
        assert!(
            answer.text().contains("the artifact API has"),
            "{not_a_digest}"
        );
    }
    assert_eq!(get(&server.url("/healthz")).text(), "ok\n");
    assert_eq!(put(&server.url("/names"), None, b"x").status, 405);

    // Counted in /metrics.
    let metrics = get(&server.url("/metrics")).text();
    for line in [
        "precomp_mirror_http_requests_total{route=\"precomp_artifact_uploads\",status=\"201\"} 1",
        "precomp_mirror_http_requests_total{route=\"precomp_artifact_uploads\",status=\"200\"} 1",
        "precomp_mirror_http_requests_total{route=\"precomp_manifest_uploads\",status=\"201\"} 2",
        "precomp_mirror_http_requests_total{route=\"precomp_artifacts\",status=\"200\"} 2",
        &format!(
            "precomp_mirror_served_bytes_total{{route=\"precomp_artifacts\"}} {}",
            artifact.len()
        ),
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

// ---------------------------------------------------------------------------------------------
// Failures and misses
// ---------------------------------------------------------------------------------------------

#[test]
fn failed_builds_are_recorded_with_their_log_and_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_builder, builder_pub) = signing_key(dir.path(), "builder");
    let token = create_token(&data, "b1", None);
    let server = Server::start(&data, &["--builder-key", builder_pub.to_str().unwrap()]);
    let url = server.url("/precomp/v1/failures");
    let log = "==> shape_user\nCompiling 1 file (.ex)\n** (CompileError) lib/shape_user.ex:3: undefined function boom/0\n";
    let report = failure_report(&shape_user_base_key(), log);

    let anonymous = post_json(&url, None, &report);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());

    let first = post_json(&url, Some(&token), &report);
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.json()["log_sha256"], sha256_hex(log.as_bytes()));
    assert_eq!(first.json()["attempts"], 1);
    let second = post_json(&url, Some(&token), &report);
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.json()["attempts"], 2);

    let listed = get(&server.url("/precomp/v1/failures/shape_user"));
    assert_eq!(listed.status, 200, "{}", listed.text());
    let json = listed.json();
    let failures = json["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{json}");
    assert_eq!(failures[0]["log"], log);
    assert_eq!(failures[0]["log_sha256"], sha256_hex(log.as_bytes()));
    assert_eq!(failures[0]["base_key"], shape_user_base_key());
    assert_eq!(failures[0]["toolchain_id"], "0123456789ab");
    assert_eq!(failures[0]["reported_by"], "b1");
    assert_eq!(failures[0]["attempts"], 2);

    // Never an artifact: nothing stored, nothing indexed.
    assert!(stored_files(&data).is_empty(), "{:?}", stored_files(&data));
    assert!(index_builds(&server).is_empty());
    assert_eq!(count_rows(&data, "manifests"), 0);
    assert_eq!(count_rows(&data, "artifacts"), 0);

    // Bounded and validated.
    let big = failure_report(&shape_user_base_key(), &"x".repeat(MAX_FAILURE_LOG + 1));
    let answer = post_json(&url, Some(&token), &big);
    assert_eq!(answer.status, 413, "{}", answer.text());
    let bad = failure_report("not-a-key", log);
    let answer = post_json(&url, Some(&token), &bad);
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(answer.text().contains("base_key"), "{}", answer.text());
    let answer = request(
        "POST",
        &url,
        Some(&token),
        Some(b"{\"package\":".to_vec()),
        &[],
    );
    assert_eq!(answer.status, 400, "{}", answer.text());
    let json = get(&server.url("/precomp/v1/failures/shape_user")).json();
    assert_eq!(json["failures"][0]["attempts"], 2, "{json}");
}

#[test]
fn misses_are_deduplicated_and_closed_by_a_publish_or_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (builder, builder_pub) = signing_key(dir.path(), "builder");
    let token = create_token(&data, "b1", None);
    let server = Server::start(&data, &["--builder-key", builder_pub.to_str().unwrap()]);
    let url = server.url("/precomp/v1/misses");

    // Anyone may report; the same base key is counted, not repeated.
    let first = post_json(&url, None, &miss_report(&shape_user_base_key(), "1.14.0"));
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(
        first.json(),
        serde_json::json!({"base_key": shape_user_base_key(), "count": 1, "open": true})
    );
    let second = post_json(&url, None, &miss_report(&shape_user_base_key(), "1.14.0"));
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.json()["count"], 2);

    // Another toolchain is another base key (computed here with proto's build key).
    let newer = inputs("1.18.3", Vec::new()).base_key().unwrap().to_string();
    assert_ne!(newer, shape_user_base_key());
    let answer = post_json(&url, None, &miss_report(&newer, "1.18.3"));
    assert_eq!(answer.status, 201, "{}", answer.text());

    // Validated against the lock: a base key the lock does not give, a release it lacks.
    // The refusal never hands out the key the mirror computed.
    let lying = post_json(&url, None, &miss_report(&newer, "1.14.0"));
    assert_eq!(lying.status, 422, "{}", lying.text());
    assert!(
        lying.text().contains("not what its lock"),
        "{}",
        lying.text()
    );
    assert!(
        !lying.text().contains(&shape_user_base_key()) && !lying.text().contains(&newer),
        "{}",
        lying.text()
    );
    let mut absent = miss_report(&shape_user_base_key(), "1.14.0");
    absent.version = "9.9.9".into();
    let answer = post_json(&url, None, &absent);
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(answer.text().contains("no Hex entry"), "{}", answer.text());

    // Listing needs a token.
    assert_eq!(get(&url).status, 401);
    let open = |server: &Server| -> Vec<serde_json::Value> {
        let answer = request(
            "GET",
            &server.url("/precomp/v1/misses"),
            Some(&token),
            None,
            &[],
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["misses"].as_array().unwrap().clone()
    };
    let misses = open(&server);
    assert_eq!(misses.len(), 2, "{misses:?}");
    assert_eq!(misses[0]["base_key"], shape_user_base_key());
    assert_eq!(misses[0]["count"], 2);
    assert_eq!(misses[0]["lock"], LOCK);
    assert_eq!(misses[0]["reason"], "not built");
    assert_eq!(misses[1]["base_key"], newer.as_str());
    assert_eq!(misses[1]["count"], 1);

    // A client that found no build of shapes: its key is unknown, the miss is named by its
    // request key, and the same publish satisfies it.
    let mut unknown = miss_report(&shape_user_base_key(), "1.14.0");
    unknown.closure[0].target = None;
    let refusal = post_json(&url, None, &unknown);
    assert_eq!(refusal.status, 422, "{}", refusal.text());
    assert!(refusal.text().contains("request_key"), "{}", refusal.text());
    let mut unknown_inputs = inputs("1.14.0", Vec::new());
    unknown_inputs.closure[0].key = None;
    let request_key = unknown_inputs.request_key().unwrap().to_string();
    unknown.base_key = None;
    unknown.request_key = Some(request_key.clone());
    let answer = post_json(&url, None, &unknown);
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(
        answer.json(),
        serde_json::json!({"request_key": request_key, "count": 1, "open": true})
    );
    assert_eq!(open(&server).len(), 3);

    // Publishing a build with that base key closes the first, and the request.
    let artifact = artifact_bytes("miss");
    assert_eq!(
        put(&url_on(&server, &artifact), Some(&token), &artifact).status,
        201
    );
    let built = manifest(&inputs("1.14.0", greeting_env()), &artifact);
    let answer = put(
        &server.url(&manifest_path(&built.key)),
        Some(&token),
        &signed(&built, &builder),
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(answer.json()["closed_misses"], 2);
    let misses = open(&server);
    assert_eq!(misses.len(), 1, "{misses:?}");
    assert_eq!(misses[0]["base_key"], newer.as_str());
    // Reported again after the publish: recorded closed at once.
    let answer = post_json(&url, None, &unknown);
    assert_eq!(answer.json()["open"], false, "{}", answer.text());

    // A recorded failure closes the second.
    let answer = post_json(
        &server.url("/precomp/v1/failures"),
        Some(&token),
        &failure_report(&newer, "failed"),
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(answer.json()["closed_misses"], 1);
    assert!(open(&server).is_empty());

    // Reported again: counted, but stays closed.
    let again = post_json(&url, None, &miss_report(&shape_user_base_key(), "1.14.0"));
    assert_eq!(again.status, 200, "{}", again.text());
    let again = again.json();
    assert_eq!(
        (&again["base_key"], &again["count"], &again["open"]),
        (
            &serde_json::json!(shape_user_base_key()),
            &serde_json::json!(3),
            &serde_json::json!(false)
        ),
        "{again}"
    );
    // What closed it: the publish.
    assert!(
        again["closed_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("published ")),
        "{again}"
    );
    assert!(open(&server).is_empty());

    // Bounded.
    let mut huge = miss_report(&shape_user_base_key(), "1.14.0");
    huge.lock = " ".repeat(3 * 1024 * 1024);
    let answer = post_json(&url, None, &huge);
    assert_eq!(answer.status, 413, "{}", answer.text());
}

/// `compile_env` records of shape_user's own values: greeting `GREETING`, format.punctuation
/// unset (as `precomp fetch` reports a consumer's values for a build's paths).
fn greeting_records(greeting: &str) -> Vec<precomp_artifacts::CompileEnvJson> {
    vec![
        precomp_artifacts::CompileEnvJson {
            app: "shape_user".into(),
            path: "[greeting]".into(),
            value: Some(format!("<<\"{greeting}\">>")),
        },
        precomp_artifacts::CompileEnvJson {
            app: "shape_user".into(),
            path: "[format,punctuation]".into(),
            value: None,
        },
    ]
}

/// A miss carrying the package's own compile-env values is a config variant: a miss of its
/// own, named by its variant key (the build key the consumer computes), closed only by a
/// build made with those values. Distinct value sets per release and tuple are bounded
/// (`--max-config-variants`), values that are not plain data or too long are refused, and
/// the values are shown to builders' tokens only: never on the index, failures or metrics,
/// not to anonymous clients nor to an auditor's token.
#[test]
fn config_variants_are_misses_of_their_own_bounded_and_shown_only_to_builders() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (builder, builder_pub) = signing_key(dir.path(), "builder");
    let (_auditor, auditor_pub) = signing_key(dir.path(), "auditor");
    let token = create_token(&data, "b1", None);
    let auditor_token = create_token(&data, "a1", Some(&auditor_pub));
    let server = Server::start(
        &data,
        &[
            "--builder-key",
            builder_pub.to_str().unwrap(),
            "--auditor-key",
            auditor_pub.to_str().unwrap(),
            "--max-config-variants",
            "2",
        ],
    );
    let url = server.url("/precomp/v1/misses");
    let variant = |greeting: &str| {
        let mut report = miss_report(&shape_user_base_key(), "1.14.0");
        report.compile_env = greeting_records(greeting);
        report
    };

    // The default (no values of its own) and a variant: two misses.
    let plain = post_json(&url, None, &miss_report(&shape_user_base_key(), "1.14.0"));
    assert_eq!(plain.status, 201, "{}", plain.text());
    assert!(
        plain.json().get("variant_key").is_none(),
        "{}",
        plain.text()
    );
    let hello_key = inputs("1.14.0", greeting_env()).key().unwrap().to_string();
    let hello = post_json(&url, None, &variant("hello"));
    assert_eq!(hello.status, 201, "{}", hello.text());
    assert_eq!(
        hello.json(),
        serde_json::json!({"base_key": shape_user_base_key(), "variant_key": hello_key,
                           "count": 1, "open": true})
    );
    // A claimed variant key must be what the miss carries; the refusal never gives it.
    let mut lying = variant("hello");
    lying.variant_key = Some(shape_user_base_key());
    let answer = post_json(&url, None, &lying);
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(!answer.text().contains(&hello_key), "{}", answer.text());
    let mut honest = variant("hello");
    honest.variant_key = Some(hello_key.clone());
    let answer = post_json(&url, None, &honest);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["count"], 2);

    // A second variant is within the bound of 2; a third is refused, clearly.
    let secret = post_json(&url, None, &variant("a-secret-value"));
    assert_eq!(secret.status, 201, "{}", secret.text());
    let third = post_json(&url, None, &variant("third"));
    assert_eq!(third.status, 422, "{}", third.text());
    assert!(
        third.text().contains("too many config variants")
            && third.text().contains("shape_user 1.0.0")
            && third.text().contains("--max-config-variants"),
        "{}",
        third.text()
    );
    // Known variants are still counted.
    assert_eq!(post_json(&url, None, &variant("hello")).status, 200);

    // Values no build can be given are refused, with the reason.
    let mut opaque = variant("x");
    opaque.compile_env[0].value = Some("'$precomp_opaque'".into());
    let answer = post_json(&url, None, &opaque);
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(
        answer.text().contains("not plain data"),
        "{}",
        answer.text()
    );
    let mut long = variant("x");
    long.compile_env[0].value = Some(format!(
        "<<\"{}\">>",
        "y".repeat(precomp_artifacts::MAX_COMPILE_ENV_VALUE)
    ));
    let answer = post_json(&url, None, &long);
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(
        answer.text().contains("over the limit"),
        "{}",
        answer.text()
    );

    // The values are shown to builders only.
    assert_eq!(get(&url).status, 401);
    let as_auditor = request("GET", &url, Some(&auditor_token), None, &[]);
    assert_eq!(as_auditor.status, 403, "{}", as_auditor.text());
    assert!(
        as_auditor.text().contains("needs builder"),
        "{}",
        as_auditor.text()
    );
    let listed = request("GET", &url, Some(&token), None, &[]);
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(
        listed.text().contains("a-secret-value"),
        "{}",
        listed.text()
    );
    let misses = listed.json()["misses"].as_array().unwrap().clone();
    assert_eq!(misses.len(), 3, "{misses:?}");
    assert_eq!(misses[0]["variant_key"], hello_key.as_str());
    for path in [
        "/precomp/v1/index",
        "/precomp/v1/index/shape_user",
        "/precomp/v1/failures/shape_user",
        "/metrics",
    ] {
        let answer = get(&server.url(path));
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert!(
            !answer.text().contains("a-secret-value"),
            "{path}: {}",
            answer.text()
        );
    }
    let jobs = request(
        "GET",
        &server.url("/precomp/v1/jobs"),
        Some(&token),
        None,
        &[],
    );
    assert_eq!(jobs.status, 200, "{}", jobs.text());
    assert!(!jobs.text().contains("a-secret-value"), "{}", jobs.text());
    assert_eq!(jobs.json()["tuples"][0]["variants"], 2, "{}", jobs.text());

    // A build made with "hello" closes that variant and the plain miss (which knew no
    // values), not the other variant.
    let artifact = artifact_bytes("variant");
    assert_eq!(
        put(&url_on(&server, &artifact), Some(&token), &artifact).status,
        201
    );
    let built = manifest(&inputs("1.14.0", greeting_env()), &artifact);
    assert_eq!(built.key, hello_key);
    let answer = put(
        &server.url(&manifest_path(&built.key)),
        Some(&token),
        &signed(&built, &builder),
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(answer.json()["closed_misses"], 2, "{}", answer.text());
    let listed = request("GET", &url, Some(&token), None, &[]);
    let misses = listed.json()["misses"].as_array().unwrap().clone();
    assert_eq!(misses.len(), 1, "{misses:?}");
    assert_ne!(misses[0]["variant_key"], hello_key.as_str());
    assert!(misses[0]["variant_key"].is_string(), "{misses:?}");
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

#[test]
fn the_artifact_client_speaks_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (builder, builder_pub) = signing_key(dir.path(), "builder");
    let token = create_token(&data, "b1", None);
    let server = Server::start(&data, &["--builder-key", builder_pub.to_str().unwrap()]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = ArtifactClient::new(server.0.base(), Some(token.clone())).unwrap();
    let anonymous = ArtifactClient::new(server.0.base(), None).unwrap();
    let artifact = artifact_bytes("client");
    let sha = sha256(&artifact);
    let built = manifest(&inputs("1.14.0", greeting_env()), &artifact);
    let bytes = signed(&built, &builder);

    runtime.block_on(async {
        // Without a token, or with a wrong one: errors that say what to do.
        let error = anonymous
            .upload_artifact(&sha, artifact.clone())
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::NoToken { .. }), "{error}");
        assert!(
            error.to_string().contains("precomp token create"),
            "{error}"
        );
        let wrong =
            ArtifactClient::new(server.0.base(), Some(format!("pct_{}", "B".repeat(43)))).unwrap();
        let error = wrong
            .upload_artifact(&sha, artifact.clone())
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::Unauthorized { .. }), "{error}");

        assert!(!client.has_artifact(&sha).await.unwrap());
        assert_eq!(
            client
                .upload_artifact(&sha, artifact.clone())
                .await
                .unwrap(),
            Uploaded::Created
        );
        assert_eq!(
            client
                .upload_artifact(&sha, artifact.clone())
                .await
                .unwrap(),
            Uploaded::AlreadyPresent
        );
        assert!(client.has_artifact(&sha).await.unwrap());
        let error = client
            .upload_artifact(&[0u8; 32], artifact.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientError::Refused { status: 422, .. }),
            "{error}"
        );

        let (uploaded, stored) = client
            .upload_manifest(&built.key, bytes.clone())
            .await
            .unwrap();
        assert_eq!(uploaded, Uploaded::Created);
        assert_eq!(stored.base_key, shape_user_base_key());
        let mut tampered = SignedManifest::decode(&bytes).unwrap();
        tampered.signatures[0].signature[0] ^= 1;
        let error = client
            .upload_manifest(&built.key, tampered.encode_to_vec())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("does not verify"), "{error}");

        let index = anonymous.index("shape_user").await.unwrap();
        assert_eq!(index.builds.len(), 1);
        assert_eq!(index.builds[0].key, built.key);
        assert_eq!(index.builds[0].artifact_sha256, hex::encode(sha));
        assert_eq!(
            anonymous.manifest(&built.key).await.unwrap().unwrap(),
            bytes
        );
        assert_eq!(anonymous.manifest(&"0".repeat(64)).await.unwrap(), None);
        assert_eq!(anonymous.artifact(&sha).await.unwrap().unwrap(), artifact);
        assert_eq!(anonymous.artifact(&[7u8; 32]).await.unwrap(), None);

        // Misses: reported by anyone, listed with the token.
        let newer = inputs("1.18.3", Vec::new()).base_key().unwrap().to_string();
        let recorded = anonymous
            .report_miss(&miss_report(&newer, "1.18.3"))
            .await
            .unwrap();
        assert!(recorded.open);
        let error = anonymous.misses().await.unwrap_err();
        assert!(matches!(error, ClientError::NoToken { .. }), "{error}");
        let misses = client.misses().await.unwrap();
        assert_eq!(misses.misses.len(), 1);
        assert_eq!(misses.misses[0].base_key.as_deref(), Some(newer.as_str()));

        // A log over the bound is cut to its end by the client, and accepted.
        let log = format!(
            "{}\nthe real error\n",
            "noise\n".repeat(MAX_FAILURE_LOG / 3)
        );
        assert!(log.len() > MAX_FAILURE_LOG);
        let recorded = client
            .record_failure(&failure_report(&newer, &log))
            .await
            .unwrap();
        assert_eq!(recorded.closed_misses, 1);
        let failures = anonymous.failures("shape_user").await.unwrap();
        assert_eq!(failures.failures.len(), 1);
        let kept = &failures.failures[0].log;
        assert!(kept.len() <= MAX_FAILURE_LOG && kept.ends_with("the real error\n"));
        assert!(client.misses().await.unwrap().misses.is_empty());
    });

    // A mirror that is not there.
    drop(server);
    let dead =
        ArtifactClient::with_timeout("http://127.0.0.1:9", Some(token), Duration::from_secs(10))
            .unwrap();
    let error = runtime.block_on(dead.index("shape_user")).unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    assert!(
        error.to_string().contains("is the mirror running"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Misses against the registry, and scopes
// ---------------------------------------------------------------------------------------------

/// A miss's lock must pin releases with the checksums of the mirror's verified registry
/// records (fetched from a signed upstream through the pull-through path): another checksum,
/// or a release upstream does not have, is a 422 naming the package and never the checksum.
#[test]
fn misses_are_checked_against_the_verified_registry_records() {
    let dir = tempfile::tempdir().unwrap();
    // Upstream says shapes 2.0.0 has another inner checksum than LOCK claims.
    let forged = LOCK.replace(&"b".repeat(64), &"c".repeat(64));
    let data = dir.path().join("data");
    let server = Server::with_upstream(&data, &[&forged], &[]);
    let url = server.url("/precomp/v1/misses");
    let answer = post_json(&url, None, &miss_report(&shape_user_base_key(), "1.14.0"));
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(answer.text().contains("shapes 2.0.0"), "{}", answer.text());
    assert!(
        answer.text().contains("inner checksum"),
        "{}",
        answer.text()
    );
    assert!(
        !answer.text().contains(&"c".repeat(64)),
        "{}",
        answer.text()
    );
    assert!(
        !answer.text().contains(&shape_user_base_key()),
        "{}",
        answer.text()
    );
    // Nothing was stored.
    let open: i64 = db(&data)
        .query_row("SELECT count(*) FROM misses", [], |row| row.get(0))
        .unwrap();
    assert_eq!(open, 0);
    drop(server);

    // Upstream does not have shape_user at all.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let only_shapes = LOCK
        .lines()
        .filter(|line| !line.contains("shape_user"))
        .collect::<Vec<_>>()
        .join("\n");
    let server = Server::with_upstream(&data, &[&only_shapes], &[]);
    let url = server.url("/precomp/v1/misses");
    let answer = post_json(&url, None, &miss_report(&shape_user_base_key(), "1.14.0"));
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(
        answer
            .text()
            .contains("shape_user 1.0.0 is not in the registry"),
        "{}",
        answer.text()
    );
    drop(server);

    // The records match: recorded, and the mirror now holds the records it fetched.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let url = server.url("/precomp/v1/misses");
    let answer = post_json(&url, None, &miss_report(&shape_user_base_key(), "1.14.0"));
    assert_eq!(answer.status, 201, "{}", answer.text());
    let packages = get(&server.url("/packages/shapes"));
    assert_eq!(packages.status, 200, "{}", packages.text());
    // A record from another organisation's repository is refused by name.
    let mut org = miss_report(&shape_user_base_key(), "1.14.0");
    org.lock = LOCK.replace(r#""hexpm", "2222"#, r#""hexpm:acme", "2222"#);
    let answer = post_json(&url, None, &org);
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(answer.text().contains("hexpm:acme"), "{}", answer.text());
}

/// Miss reports past the bounds get 429 with Retry-After; open misses are bounded too.
#[test]
fn miss_reports_are_bounded_per_client_and_open_misses_in_total() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &["--miss-reports-per-client", "3", "--max-open-misses", "1"],
    );
    let url = server.url("/precomp/v1/misses");
    let miss = miss_report(&shape_user_base_key(), "1.14.0");
    assert_eq!(post_json(&url, None, &miss).status, 201);
    // Deduplicated: the same miss counts, no new row, whatever the bound on open misses.
    let again = post_json(&url, None, &miss);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["count"], 2);
    // Another miss would be the second open one.
    let other = miss_report(&shape_user_base_key_for("1.15.0"), "1.15.0");
    let refused = post_json(&url, None, &other);
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.text().contains("open misses"), "{}", refused.text());
    assert!(refused.header("retry-after").parse::<u64>().unwrap() > 0);
    // The fourth report this minute from this address.
    let refused = post_json(&url, None, &miss);
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.text().contains("one address"), "{}", refused.text());
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let rows: i64 = db(&data)
        .query_row("SELECT count(*) FROM misses", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

/// Each scope on each class of endpoint: Hex reads and the API's reads (a token of any scope
/// when reads need one), miss reports (likewise), the misses list (builder), uploads
/// (builder), verdicts (auditor), jobs (builder or auditor); `publisher` only reads today.
#[test]
fn each_scope_is_allowed_and_refused_on_each_class_of_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_auditor, auditor_pub) = signing_key(dir.path(), "auditor");
    let (_builder, builder_pub) = signing_key(dir.path(), "builder");
    let reader = create_scoped_token(&data, "reader", None, &["reader"]);
    let builder = create_scoped_token(&data, "builder", None, &["builder"]);
    let auditor = create_scoped_token(&data, "auditor", None, &["auditor"]);
    let publisher = create_scoped_token(&data, "publisher", None, &["publisher"]);
    // Made before scopes (no --scope), bound to an auditor key: an auditor.
    let legacy_auditor = create_token(&data, "legacy", Some(&auditor_pub));
    let list = ok(token_cli(&data, &["list"]));
    assert!(
        list.lines()
            .any(|line| line.starts_with("builder\t") && line.contains("\tbuilder\t")),
        "{list}"
    );
    assert!(list.contains("scopes-from-key"), "{list}");
    let server = Server::start(
        &data,
        &[
            "--require-read-token",
            "--auditor-key",
            auditor_pub.to_str().unwrap(),
            "--builder-key",
            builder_pub.to_str().unwrap(),
        ],
    );
    let status = |method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>| {
        request(method, &server.url(path), token, body, &[]).status
    };
    let denied = |code: u16| code == 401 || code == 403;
    let every = [&reader, &builder, &auditor, &publisher, &legacy_auditor];

    // Reads: 401 without a token, any scope passes.
    for path in ["/packages/shapes", "/precomp/v1/index", "/precomp/v1/trust"] {
        assert_eq!(status("GET", path, None, None), 401, "{path}");
        for token in every {
            let code = status("GET", path, Some(token), None);
            assert!(!denied(code), "{path}: {code}");
        }
    }
    // Hex clients send the bare token as the repository's auth key.
    let bare = request(
        "GET",
        &server.url("/packages/shapes"),
        None,
        None,
        &[("authorization", reader.as_str())],
    );
    assert_eq!(bare.status, 200, "{}", bare.text());
    // Miss reports: like reads.
    let miss = serde_json::to_vec(&miss_report(&shape_user_base_key(), "1.14.0")).unwrap();
    assert_eq!(
        status("POST", "/precomp/v1/misses", None, Some(miss.clone())),
        401
    );
    let reported = request(
        "POST",
        &server.url("/precomp/v1/misses"),
        Some(&reader),
        Some(miss),
        &[("content-type", "application/json")],
    );
    assert_eq!(reported.status, 201, "{}", reported.text());
    // The misses list: builders only.
    for (token, allowed) in [
        (&reader, false),
        (&auditor, false),
        (&publisher, false),
        (&legacy_auditor, false),
        (&builder, true),
    ] {
        let code = status("GET", "/precomp/v1/misses", Some(token), None);
        assert_eq!(!denied(code), allowed, "misses list: {code}");
    }
    // Artifact uploads: builders and auditors (who countersign).
    let artifact = artifact_bytes("scoped");
    let path = artifact_path(&sha256_hex(&artifact));
    for (token, allowed) in [
        (&reader, false),
        (&publisher, false),
        (&builder, true),
        (&auditor, true),
    ] {
        let code = status("PUT", &path, Some(token), Some(artifact.clone()));
        assert_eq!(!denied(code), allowed, "artifact upload: {code}");
    }
    let code = status(
        "POST",
        "/precomp/v1/failures",
        Some(&reader),
        Some(b"{}".to_vec()),
    );
    assert_eq!(code, 403);
    // Verdicts: auditors.
    let verdict = format!("/precomp/v1/verdicts/{}", "a".repeat(64));
    for (token, allowed) in [
        (&reader, false),
        (&builder, false),
        (&publisher, false),
        (&auditor, true),
        (&legacy_auditor, true),
    ] {
        let code = status("POST", &verdict, Some(token), Some(b"x".to_vec()));
        assert_eq!(!denied(code), allowed, "verdict: {code}");
    }
    // Jobs: builders and auditors.
    for (token, allowed) in [
        (&reader, false),
        (&publisher, false),
        (&builder, true),
        (&auditor, true),
    ] {
        let code = status("GET", "/precomp/v1/jobs", Some(token), None);
        assert_eq!(!denied(code), allowed, "jobs: {code}");
    }
    // The artifact client (`precomp fetch --token`) sends its token with reads and reports.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let with = ArtifactClient::new(server.0.base(), Some(reader.clone())).unwrap();
        with.packages().await.unwrap();
        assert!(with.trust_document(None).await.unwrap().is_none());
        let recorded = with
            .report_miss(&miss_report(&shape_user_base_key(), "1.14.0"))
            .await
            .unwrap();
        assert_eq!(recorded.count, 2);
        let without = ArtifactClient::new(server.0.base(), None).unwrap();
        let error = without.packages().await.unwrap_err().to_string();
        assert!(error.contains("needs a token"), "{error}");
    });
    // The refusal names what is needed.
    let refused = request(
        "PUT",
        &server.url(&path),
        Some(&reader),
        Some(artifact),
        &[],
    );
    assert!(
        refused.text().contains("needs builder or auditor"),
        "{}",
        refused.text()
    );
    // Health is open whatever the setting.
    assert_eq!(status("GET", "/healthz", None, None), 200);
    drop(server);

    // Without --require-read-token, reads and miss reports need nothing.
    let server = Server::start(&data, &[]);
    assert_eq!(get(&server.url("/precomp/v1/index")).status, 200);
    assert_eq!(get(&server.url("/packages/shapes")).status, 200);
    let upload = request("PUT", &server.url(&path), None, Some(b"x".to_vec()), &[]);
    assert_eq!(upload.status, 401, "{}", upload.text());
}
