//! The OpenAPI document and the docs page, against real servers: the served document is
//! `docs/openapi.json` (regenerate it with `UPDATE_OPENAPI=1 cargo test --test
//! server_openapi`), it lists exactly the routes docs/api.md lists, `/docs` works offline
//! (every file it loads comes from the server itself), and live answers agree with the
//! document (schemathesis, from PyPI, against a `pyrepl3 serve` process).

mod common;

use std::collections::BTreeSet;

use common::guard;
use common::server::*;
use serde_json::Value;

const DOCS_OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const API_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");

/// The document a server serves, fetched without a token (it is public).
async fn served_document(api: &Api) -> Value {
    let resp = api.http.get(api.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn the_served_document_is_docs_openapi_json() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let served = served_document(&api).await;
    api.handle.shutdown().await.unwrap();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(DOCS_OPENAPI, text).unwrap();
    }
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(DOCS_OPENAPI).unwrap())
        .expect("docs/openapi.json is JSON");
    assert!(
        kept == served,
        "docs/openapi.json is not the document the server serves: regenerate it with \
         `UPDATE_OPENAPI=1 cargo test --test server_openapi` and commit it"
    );
    assert_eq!(served["openapi"], "3.1.0");
}

/// The operations of a document: `METHOD /path`.
fn operations(document: &Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                found.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    found
}

/// Routes of the server that are not the API, so not in the document: pages (`/docs`, the
/// playground at `/`) and the MCP endpoint (its own protocol, docs/mcp.md).
fn is_beside_the_api(path: &str) -> bool {
    path == "/" || path == "/docs" || path.starts_with("/docs/") || path.starts_with("/mcp")
}

/// The API routes docs/api.md's table of endpoints lists (its rows `` | `METHOD /path` | ``),
/// without their query strings.
fn documented_routes() -> BTreeSet<String> {
    let text = std::fs::read_to_string(API_MD).unwrap();
    let table = text
        .split("## Endpoints")
        .nth(1)
        .expect("docs/api.md has an Endpoints section");
    table
        .lines()
        .skip_while(|line| !line.starts_with("| method and path"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cell = line.split('`').nth(1).unwrap();
            cell.split('?').next().unwrap().to_string()
        })
        .filter(|route| !is_beside_the_api(route.split(' ').nth(1).unwrap_or_default()))
        .collect()
}

/// Every route the router serves is in the document by construction (each is added with its
/// description); this checks the other side: the document has exactly the API docs' routes,
/// each method included. Not in the document: the routes beside the API
/// ([`is_beside_the_api`]).
#[tokio::test]
async fn the_document_lists_exactly_the_documented_routes() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let served = served_document(&api).await;
    let documented = documented_routes();
    assert!(documented.len() > 25, "{documented:?}");
    assert_eq!(operations(&served), documented);
    // Each documented route is served: a request without a token is refused as
    // unauthorized (the route exists and takes this method), except the public ones, and the
    // WebSocket's, which is first of all not an upgrade (`400`, docs/api.md, "Errors").
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "no-such-session")
            .replace("{execution_id}", "x")
            .replace("{cid}", "ckpt-x")
            .replace("{path}", "a.txt");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = api
            .http
            .request(method, api.url(&path))
            .send()
            .await
            .unwrap();
        let expected = if ["/healthz", "/openapi.json"].contains(&path.as_str()) {
            200
        } else if path.ends_with("/ws") {
            400
        } else {
            401
        };
        assert_eq!(resp.status(), expected, "{route}");
    }
    // Public operations say so; the others need the bearer token.
    let paths = &served["paths"];
    assert_eq!(paths["/healthz"]["get"]["security"], serde_json::json!([]));
    assert_eq!(served["security"], serde_json::json!([{"bearer": []}]));
    assert!(
        paths["/v1/sessions/{id}/execute"]["post"]["responses"]["200"]["content"]
            ["text/event-stream"]
            .is_object()
    );
    assert_eq!(
        paths["/v1/sessions/{id}/files/{path}"]["put"]["requestBody"]["content"]
            ["application/octet-stream"]["schema"]["contentMediaType"],
        "application/octet-stream"
    );
    api.handle.shutdown().await.unwrap();
}

/// The `src`/`href` of the page's `<script>` and `<link>` tags.
fn referenced_files(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for tag in html.split('<').skip(1) {
        let is_asset = tag.starts_with("script") || tag.starts_with("link");
        if !is_asset {
            continue;
        }
        for attribute in ["src=\"", "href=\""] {
            if let Some(rest) = tag.split(attribute).nth(1) {
                found.push(rest.split('"').next().unwrap().to_string());
            }
        }
    }
    found
}

/// `/docs` needs no token and loads nothing from another host: the page's scripts and
/// styles are the server's own, and its configuration names only `/openapi.json`.
#[tokio::test]
async fn the_docs_page_works_offline() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let resp = api.http.get(api.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "redirected to /docs/ and served");
    assert!(resp.url().path().ends_with("/docs/"), "{}", resp.url());
    // It takes a token: never framed by another site, never sniffed as another type.
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let files = referenced_files(&html);
    assert!(files.len() >= 4, "{files:?}");
    let mut initializer = None;
    for file in &files {
        assert!(
            !file.contains("://") && !file.starts_with("//"),
            "the page loads {file} from elsewhere"
        );
        let url = api.url(&format!("/docs/{}", file.trim_start_matches("./")));
        let resp = api.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = resp.bytes().await.unwrap();
        assert!(!body.is_empty(), "{url}");
        if file.contains("swagger-initializer.js") {
            initializer = Some(String::from_utf8(body.to_vec()).unwrap());
        }
    }
    let initializer = initializer.expect("the page loads its initializer");
    assert!(initializer.contains("\"/openapi.json\""), "{initializer}");
    assert!(
        !initializer.contains("http://") && !initializer.contains("https://"),
        "the configuration names another host (the default validator?): {initializer}"
    );
    assert!(
        initializer.contains("\"validatorUrl\": \"none\""),
        "{initializer}"
    );
    api.handle.shutdown().await.unwrap();
}

/// In a real browser (headless Chromium) that can resolve no host but the server's, `/docs`
/// renders every route of the document: the page needs nothing from elsewhere.
#[tokio::test]
async fn the_docs_page_renders_every_route_in_a_browser_without_other_hosts() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let served = served_document(&api).await;
    let profile = tempfile::tempdir().unwrap();
    let out = guard(
        tokio::process::Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            // Every other host name fails to resolve.
            .arg("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
            // Let the page's scripts run (virtual time: no waiting on the clock).
            .arg("--virtual-time-budget=20000")
            .arg("--dump-dom")
            .arg(api.url("/docs/"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium runs (scripts/install-test-deps installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    for path in served["paths"].as_object().unwrap().keys() {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "/docs does not show {path}:\n{dom}"
        );
    }
    api.handle.shutdown().await.unwrap();
}

/// The server `schemathesis` tests: sessions without a sandbox would run its random code as
/// this user, so the sandbox stays on (as `serve` runs by default); a tenant with a rate
/// limit it does not reach, and a session limit it does (then `429 session_limit`).
const FUZZED_SERVER: &str = r#"
[pool]
min_idle = 1
max_sessions = 6

[[tenants]]
name = "default"
token = "alice-token-0001"
max_sessions = 3
rate_per_second = 100000.0
burst = 100000
# Generated code runs a short while at most, whatever `timeout` it asks for.
execution_time_limit_secs = 2.0
"#;

/// schemathesis's settings: the paths' `{id}` is a live session of the tenant's (so that
/// the session routes are reached, not only their `404`), which is not to be deleted.
const SCHEMATHESIS_CONFIG: &str = r#"
[parameters]
"path.id" = "${PYREPL3_SESSION}"

[[operations]]
include-operation-id = "delete_session"
enabled = false
"#;

/// schemathesis generates requests from the document (valid ones and invalid ones) and
/// checks every answer against it: its status is one the operation lists, its body fits the
/// schema of that status, valid requests are not refused and invalid ones not taken, no
/// answer is a 5xx.
#[tokio::test]
async fn live_answers_agree_with_the_document() {
    let schemathesis = common::rich_python().with_file_name("schemathesis");
    let (server, base, dir) = spawn_server_with_config(FUZZED_SERVER, &[]);
    let session = create_session_at(&reqwest::Client::new(), &base).await;
    let settings = dir.path().join("schemathesis.toml");
    std::fs::write(&settings, SCHEMATHESIS_CONFIG).unwrap();
    let out = std::process::Command::new(schemathesis)
        // Where it keeps its own files (not in the repository).
        .current_dir(dir.path())
        .env("PYREPL3_SESSION", &session)
        .arg("--config-file")
        .arg(&settings)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {ALICE}")])
        .args(["--checks", "all"])
        // Bounded: a few examples per operation (about 30 s in all), with a fixed seed so
        // that a run is repeatable.
        .args(["--max-examples", "12", "--seed", "20261201"])
        // One worker: schemathesis's threads can trip over each other (a parser error).
        .args(["--generation-database", "none", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // A WebSocket upgrade is no request-and-answer exchange: its handshake is tested
        // by the WebSocket tests.
        .args(["--exclude-path", "/v1/sessions/{id}/ws"])
        .args(["--no-color", "--request-timeout", "20"])
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found answers that disagree with the document:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("Tested: 26"), "{report}");
    // The session routes were reached: the session ran code.
    let http = reqwest::Client::new();
    let info = json_of(http.get(format!("{base}/v1/sessions/{session}"))).await;
    assert!(info["execution_count"].as_u64().unwrap() > 0, "{info}");
    stop_server(server).await;
}

/// What schemathesis found, each fixed where it was a fault of the server: a whole number of
/// milliseconds written as a float (`1181.0`, a JSON Schema `integer`) was refused; a grace
/// beyond the longest duration the service takes was accepted.
#[tokio::test]
async fn answers_schemathesis_found_wrong_stay_fixed() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let cancel = format!("/v1/sessions/{id}/cancel");
    let body = serde_json::json!({"execution_id": "x", "grace_timeout_ms": 1181.0});
    let (status, answer) = api.post(&cancel, ALICE, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "not_running");
    for refused in [
        serde_json::json!(1181.5),
        serde_json::json!(-1),
        serde_json::json!(9223372036854775808u64),
    ] {
        let body = serde_json::json!({"execution_id": "x", "grace_timeout_ms": refused});
        let (status, answer) = api.post(&cancel, ALICE, body).await;
        assert_eq!(status, 400, "{refused}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
    }
    api.handle.shutdown().await.unwrap();
}
