//! The files routes end to end (docs/api.md, "Files"), against real servers (sandboxed, as
//! `serve` is by default) and real files: a 50 MB round trip, what code in the session sees,
//! listing and deleting, traversal attempts (raw requests, so no client tidies the path up
//! first; symlinks planted by the session's code), the size limits leaving nothing behind,
//! a cut-off upload leaving nothing behind, and tenant isolation.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `n` bytes that do not compress, made in chunks of 1 MiB (never held whole).
fn noise(n: usize) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    const CHUNK: usize = 1 << 20;
    futures::stream::unfold(
        (0usize, 0x9E37_79B9_7F4A_7C15u64),
        move |(sent, mut x)| async move {
            if sent >= n {
                return None;
            }
            let len = CHUNK.min(n - sent);
            let mut chunk = Vec::with_capacity(len);
            while chunk.len() < len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.extend_from_slice(&x.to_le_bytes()[..8.min(len - chunk.len())]);
            }
            Some((Ok(chunk), (sent + len, x)))
        },
    )
}

async fn sha256_of_noise(n: usize) -> String {
    use futures::StreamExt;
    let mut hasher = Sha256::new();
    let mut chunks = std::pin::pin!(noise(n));
    while let Some(chunk) = chunks.next().await {
        hasher.update(chunk.unwrap());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn put(
    api: &Api,
    token: &str,
    id: &str,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let resp = common::guard(
        api.http
            .put(api.url(&format!("/v1/sessions/{id}/files/{path}")))
            .bearer_auth(token)
            .body(body)
            .send(),
    )
    .await
    .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn get_bytes(api: &Api, id: &str, path: &str) -> (StatusCode, Vec<u8>) {
    let resp = common::guard(
        api.http
            .get(api.url(&format!("/v1/sessions/{id}/files/{path}")))
            .bearer_auth(ALICE)
            .send(),
    )
    .await
    .unwrap();
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}

async fn run(api: &Api, id: &str, code: &str) -> Value {
    let answer = api.execute(ALICE, id, json!({ "code": code })).await;
    assert_eq!(answer["error"], Value::Null, "{answer}");
    answer["result"]["value"].clone()
}

/// A raw HTTP/1.1 request (the path sent exactly as given) and its status and JSON body.
async fn raw(api: &Api, method: &str, path: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(api.handle.local_addr())
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    common::guard(stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

/// The session's working directory on the host (the tests run beside the server).
async fn cwd_of(api: &Api, id: &str) -> PathBuf {
    let (_, info) = api.get(&format!("/v1/sessions/{id}"), ALICE).await;
    PathBuf::from(info["cwd"].as_str().unwrap())
}

/// Every name in `dir` on the host, hidden ones included, but for the session's package
/// directory (`.pyrepl3`, the service's, made at the worker's start).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".pyrepl3")
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_50_mb_file_round_trips_streamed_with_the_same_sha256() {
    const SIZE: usize = 50 * 1000 * 1000;
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let expected = sha256_of_noise(SIZE).await;

    let started = Instant::now();
    let body = reqwest::Body::wrap_stream(noise(SIZE));
    let (status, written) = put(&api, ALICE, &id, "data/big.bin", body).await;
    let upload = started.elapsed();
    assert_eq!(status, StatusCode::CREATED, "{written}");
    assert_eq!(written, json!({"path": "data/big.bin", "size": SIZE}));

    let started = Instant::now();
    let resp = common::guard(
        api.http
            .get(api.url(&format!("/v1/sessions/{id}/files/data/big.bin")))
            .bearer_auth(ALICE)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["content-length"], SIZE.to_string().as_str());
    let mut hasher = Sha256::new();
    let mut received = 0;
    let mut chunks = resp.bytes_stream();
    use futures::StreamExt;
    while let Some(chunk) = common::guard(chunks.next()).await {
        let chunk = chunk.unwrap();
        received += chunk.len();
        hasher.update(&chunk);
    }
    let download = started.elapsed();
    assert_eq!(received, SIZE);
    assert_eq!(
        hex(&hasher.finalize()),
        expected,
        "the bytes came back as sent"
    );
    eprintln!(
        "50 MB round trip: {SIZE} bytes up in {:.3} s ({:.0} MB/s), down in {:.3} s ({:.0} MB/s)",
        upload.as_secs_f64(),
        SIZE as f64 / 1e6 / upload.as_secs_f64(),
        download.as_secs_f64(),
        SIZE as f64 / 1e6 / download.as_secs_f64(),
    );
    // The session's code sees the same bytes.
    let seen = run(
        &api,
        &id,
        "import hashlib\nhashlib.sha256(open('data/big.bin', 'rb').read()).hexdigest()",
    )
    .await;
    assert_eq!(seen, expected.as_str());
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn code_sees_uploads_and_its_own_files_can_be_downloaded_listed_and_deleted() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let (status, written) = put(&api, ALICE, &id, "data.csv", "a,b\n1,2\n").await;
    assert_eq!(
        (status, written),
        (StatusCode::CREATED, json!({"path": "data.csv", "size": 8}))
    );
    assert_eq!(
        run(&api, &id, "open('data.csv').read()").await,
        "a,b\n1,2\n"
    );
    // The sandboxed code can change what the server wrote (it is given the session's uid),
    // and what the code writes comes back.
    run(
        &api,
        &id,
        "open('data.csv', 'a').write('3,4\\n')\nimport os\nos.makedirs('out/deep')\nopen('out/result.txt', 'w').write('done')",
    )
    .await;
    assert_eq!(
        get_bytes(&api, &id, "data.csv").await,
        (StatusCode::OK, b"a,b\n1,2\n3,4\n".to_vec())
    );
    assert_eq!(
        get_bytes(&api, &id, "out/result.txt").await,
        (StatusCode::OK, b"done".to_vec())
    );
    // A restart of the session's worker keeps its directory.
    let (status, _) = api
        .post(&format!("/v1/sessions/{id}/restart"), ALICE, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        run(&api, &id, "open('out/result.txt').read()").await,
        "done"
    );
    // Replacing answers 200.
    let (status, _) = put(&api, ALICE, &id, "out/result.txt", "again").await;
    assert_eq!(status, StatusCode::OK);

    let (status, top) = api.get(&format!("/v1/sessions/{id}/files"), ALICE).await;
    assert_eq!(status, StatusCode::OK, "{top}");
    let shown: Vec<(&str, &str, u64)> = top["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["type"].as_str().unwrap(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown[0], ("data.csv", "file", 12), "{top}");
    assert_eq!((shown[1].0, shown[1].1), ("out", "directory"), "{top}");
    assert_eq!(top["truncated"], false);
    assert!(
        top["entries"][0]["mtime"].as_f64().unwrap() > 1.0e9,
        "{top}"
    );
    let (_, out) = api
        .get(&format!("/v1/sessions/{id}/files?path=out"), ALICE)
        .await;
    assert_eq!(out["path"], "out");
    let names: Vec<&str> = out["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["deep", "result.txt"], "{out}");

    let (status, body) = api
        .get(&format!("/v1/sessions/{id}/files/out"), ALICE)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("is_a_directory"))
    );
    let (status, body) = api
        .get(&format!("/v1/sessions/{id}/files/missing.txt"), ALICE)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("file_not_found"))
    );
    let (status, body) = api
        .get(&format!("/v1/sessions/{id}/files?path=data.csv"), ALICE)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("not_a_directory"))
    );

    let delete = |path: &str| {
        let path = format!("/v1/sessions/{id}/files/{path}");
        let api = &api;
        async move { api.call(reqwest::Method::DELETE, &path, ALICE, None).await }
    };
    let (status, _) = delete("data.csv").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get_bytes(&api, &id, "data.csv").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = delete("out").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("directory_not_empty"))
    );
    let (status, _) = delete("out?recursive=true").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        run(
            &api,
            &id,
            "import os\nsorted(n for n in os.listdir('.') if n != '.pyrepl3')"
        )
        .await,
        json!([])
    );
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn traversal_attempts_and_symlinks_planted_by_code_that_lead_out_are_refused() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let files = format!("/v1/sessions/{id}/files");
    run(
        &api,
        &id,
        "import os\nos.symlink('/etc', 'etc')\nos.symlink('..', 'up')\nos.makedirs('real')\nos.symlink('/etc', 'real/parent')\nos.symlink('real', 'alias')\nopen('real/inside.txt', 'w').write('in')",
    )
    .await;
    for (method, path) in [
        ("GET", format!("{files}/../x")),
        ("GET", format!("{files}/%2e%2e/x")),
        ("GET", format!("{files}/a/%2E%2E/%2e%2e/x")),
        ("GET", format!("{files}/..%2fx")),
        ("GET", format!("{files}//etc/passwd")),
        ("GET", format!("{files}/%2fetc/passwd")),
        ("GET", format!("{files}/a%00b")),
        ("GET", format!("{files}/etc/passwd")),
        ("GET", format!("{files}/up/x")),
        ("GET", format!("{files}/real/parent/passwd")),
        ("GET", format!("{files}/alias/parent/passwd")),
        ("GET", format!("{files}?path=etc")),
        ("GET", format!("{files}?path=..")),
        ("GET", format!("{files}?path=up")),
        ("PUT", format!("{files}/etc/pyrepl3-planted")),
        ("PUT", format!("{files}/../pyrepl3-planted")),
        ("PUT", format!("{files}/real/parent/pyrepl3-planted")),
        ("DELETE", format!("{files}/etc/hostname")),
        ("DELETE", format!("{files}/up/x")),
        // A name longer than the file system takes: refused, not an internal error.
        ("PUT", format!("{files}/{}", "a".repeat(300))),
        ("GET", format!("{files}/{}", "a".repeat(300))),
        ("GET", format!("{files}?path={}", "a".repeat(300))),
        ("DELETE", format!("{files}/{}", "a".repeat(300))),
    ] {
        let (status, body) = raw(&api, method, &path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_path")),
            "{method} {path}: {body}"
        );
    }
    assert!(!Path::new("/etc/pyrepl3-planted").exists());
    assert!(Path::new("/etc/hostname").exists() || Path::new("/etc/passwd").exists());
    // A symlink that stays inside is followed.
    assert_eq!(
        get_bytes(&api, &id, "alias/inside.txt").await,
        (StatusCode::OK, b"in".to_vec())
    );
    // Removing a link that points out removes the link only.
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("{files}/etc"),
            ALICE,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(Path::new("/etc/passwd").exists());
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn uploads_over_a_limit_are_refused_with_413_and_leave_no_partial_file() {
    let mut config = config(vec![tenant("alice", ALICE)]);
    config.files.max_file_bytes = 100_000;
    config.files.max_session_bytes = 150_000;
    let api = Api::start(config).await;
    let id = api.new_session(ALICE).await;
    let cwd = cwd_of(&api, &id).await;

    // Announced too large: refused before it is read.
    let (status, body) = put(&api, ALICE, &id, "big.bin", vec![1u8; 100_001]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("file_too_large")),
        "{body}"
    );
    // Not announced (chunked): refused as it passes the limit.
    let (status, body) = put(
        &api,
        ALICE,
        &id,
        "big.bin",
        reqwest::Body::wrap_stream(noise(120_000)),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("file_too_large")),
        "{body}"
    );
    assert_eq!(
        names_in(&cwd),
        Vec::<String>::new(),
        "no partial file, no temporary file"
    );

    let (status, _) = put(&api, ALICE, &id, "first.bin", vec![1u8; 90_000]).await;
    assert_eq!(status, StatusCode::CREATED);
    // Code's own files count too.
    run(&api, &id, "open('mine.txt', 'w').write('x' * 10_000)").await;
    let (status, body) = put(
        &api,
        ALICE,
        &id,
        "second.bin",
        reqwest::Body::wrap_stream(noise(60_000)),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("session_files_limit")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("150000"),
        "{body}"
    );
    assert_eq!(names_in(&cwd), ["first.bin", "mine.txt"]);
    // Replacing a file counts its new size only.
    let (status, _) = put(&api, ALICE, &id, "first.bin", vec![2u8; 95_000]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = put(&api, ALICE, &id, "second.bin", vec![3u8; 45_000]).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(names_in(&cwd), ["first.bin", "mine.txt", "second.bin"]);
    api.handle.shutdown().await.unwrap();
}

/// inotify on a directory: creations and deletions of its entries, as events.
struct DirWatch(OwnedFd);

impl DirWatch {
    fn new(dir: &Path) -> DirWatch {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: no memory-safety preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path and our inotify fd.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                c.as_ptr(),
                libc::IN_CREATE | libc::IN_DELETE,
            )
        };
        assert!(wd >= 0, "{}", std::io::Error::last_os_error());
        DirWatch(fd)
    }

    /// Blocks until an event of `mask` for a name starting with `prefix`; returns the name.
    fn wait_for(&self, mask: u32, prefix: &str) -> String {
        loop {
            let mut buf = [0u8; 4096];
            // SAFETY: reading into our buffer, of its length (blocking: a thread of its own).
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n > 0, "{}", std::io::Error::last_os_error());
            let mut at = 0;
            while at + 16 <= n as usize {
                let got = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = String::from_utf8_lossy(&buf[at + 16..at + 16 + len])
                    .trim_end_matches('\0')
                    .to_string();
                if got & mask != 0 && name.starts_with(prefix) {
                    return name;
                }
                at += 16 + len;
            }
        }
    }
}

#[tokio::test]
async fn an_upload_cut_off_by_its_client_leaves_no_partial_file() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let cwd = cwd_of(&api, &id).await;
    let watch = std::sync::Arc::new(DirWatch::new(&cwd));
    let mut stream = tokio::net::TcpStream::connect(api.handle.local_addr())
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/sessions/{id}/files/cut.bin HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: 10000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[7u8; 100_000]).await.unwrap();
    let created = {
        let watch = watch.clone();
        common::guard(tokio::task::spawn_blocking(move || {
            watch.wait_for(libc::IN_CREATE, ".pyrepl3-upload-")
        }))
        .await
        .unwrap()
    };
    drop(stream);
    let removed = common::guard(tokio::task::spawn_blocking(move || {
        watch.wait_for(libc::IN_DELETE, ".pyrepl3-upload-")
    }))
    .await
    .unwrap();
    assert_eq!(removed, created);
    assert_eq!(names_in(&cwd), Vec::<String>::new());
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn another_tenants_session_files_are_not_found() {
    let api = Api::start(config(vec![tenant("alice", ALICE), tenant("bob", BOB)])).await;
    let id = api.new_session(ALICE).await;
    let (status, _) = put(&api, ALICE, &id, "mine.txt", "alice's").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = put(&api, BOB, &id, "bobs.txt", "bob's").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{body}"
    );
    for (method, path) in [
        (
            reqwest::Method::GET,
            format!("/v1/sessions/{id}/files/mine.txt"),
        ),
        (reqwest::Method::GET, format!("/v1/sessions/{id}/files")),
        (
            reqwest::Method::DELETE,
            format!("/v1/sessions/{id}/files/mine.txt"),
        ),
    ] {
        let (status, body) = api.call(method.clone(), &path, BOB, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{method} {path}: {body}"
        );
    }
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/sessions/{id}/files"),
            "no-such-token-1",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get_bytes(&api, &id, "mine.txt").await,
        (StatusCode::OK, b"alice's".to_vec())
    );
    assert_eq!(
        run(
            &api,
            &id,
            "import os\n[n for n in os.listdir('.') if n != '.pyrepl3']"
        )
        .await,
        json!(["mine.txt"])
    );
    // The OpenAPI document describes the routes.
    let (_, openapi) = api.get("/openapi.json", ALICE).await;
    let routes = &openapi["paths"]["/v1/sessions/{id}/files/{path}"];
    for method in ["put", "get", "delete"] {
        assert!(routes[method].is_object(), "{method}: {routes}");
    }
    assert!(openapi["paths"]["/v1/sessions/{id}/files"]["get"].is_object());
    assert!(openapi["components"]["schemas"]["FileListing"].is_object());
    api.handle.shutdown().await.unwrap();
}

/// A server process with its default sandbox (as `serve` runs in production): the uploaded
/// file belongs to the session's own uid inside, code that plants a symlink to the host's
/// `/etc` gets nothing through it, and deleting the session removes its files.
#[tokio::test]
async fn under_the_sandbox_uploads_belong_to_the_session_and_planted_symlinks_lead_nowhere() {
    let (server, base) = spawn_server(&["--min-idle", "1"]);
    let http = reqwest::Client::new();
    let health = json_of(http.get(format!("{base}/healthz"))).await;
    assert_eq!(health["sandbox"]["mechanism"], "bubblewrap", "{health}");
    let id = create_session_at(&http, &base).await;
    let resp = http
        .put(format!("{base}/v1/sessions/{id}/files/in/data.txt"))
        .bearer_auth(ALICE)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let run_code = |code: &str| {
        json_of(
            http.post(format!("{base}/v1/sessions/{id}/execute"))
                .json(&json!({ "code": code })),
        )
    };
    let answer = run_code(
        "import os\nst = os.stat('in/data.txt')\nopen('in/data.txt', 'a').write(' world')\nos.symlink('/etc', 'hostetc')\n(st.st_uid == os.getuid(), os.stat('in').st_uid == os.getuid(), open('in/data.txt').read())",
    )
    .await;
    assert_eq!(
        answer["result"]["value"],
        json!([true, true, "hello world"]),
        "{answer}"
    );
    let info = json_of(http.get(format!("{base}/v1/sessions/{id}"))).await;
    let cwd = PathBuf::from(info["cwd"].as_str().unwrap());
    for path in ["hostetc/passwd", "hostetc/hostname"] {
        let resp = http
            .get(format!("{base}/v1/sessions/{id}/files/{path}"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_path", "{body}");
    }
    let resp = http
        .get(format!("{base}/v1/sessions/{id}/files/in/data.txt"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "hello world");
    // Deleting the session removes its directory (in the background: watched, not polled).
    let removed = common::RemovalWatch::new(&cwd);
    let resp = http
        .delete(format!("{base}/v1/sessions/{id}"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let deadline = std::time::Instant::now() + common::GUARD;
    assert!(
        tokio::task::spawn_blocking(move || removed.wait(deadline))
            .await
            .unwrap(),
        "the session's directory outlived the session"
    );
    stop_server(server).await;
}

#[test]
fn the_files_section_of_the_config_file_sets_the_limits_and_is_checked() {
    use pyrepl3::server::{Overrides, ServerConfig};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.toml");
    let load = |toml: &str| {
        std::fs::write(&path, toml).unwrap();
        ServerConfig::load(Some(&path), &Overrides::default()).map(|(config, _)| config)
    };
    let config = load("[files]\nmax_file_bytes = 1000\nmax_list_entries = 5\n").unwrap();
    let files = config.service_config().bounds.files;
    assert_eq!(
        (
            files.max_file_bytes,
            files.max_session_bytes,
            files.max_list_entries
        ),
        (1000, 1 << 30, 5),
        "unset keys keep their defaults"
    );
    let defaults = load("").unwrap().files;
    assert_eq!(
        (defaults.max_file_bytes, defaults.max_session_bytes),
        (256 << 20, 1 << 30)
    );
    for bad in [
        "[files]\nmax_file_bytes = 0\n",
        "[files]\nmax_list_entries = 0\n",
        "[files]\nmax_files = 3\n",
    ] {
        assert!(load(bad).is_err(), "{bad}");
    }
}
