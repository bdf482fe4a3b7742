//! `/mcp` of a real `pyrepl3 serve` process with a real MCP client: the official `mcp`
//! package's streamable HTTP transport (in the test virtualenv that `scripts/test-venv`
//! makes) runs `tests/support/mcp_http_client.py`, which drives the server as an agent would,
//! as two tenants, and checks each answer and the REST API's view of the sessions it made.

mod common;

use std::process::{Command, Stdio};

use common::server::{spawn_server_with_config, ALICE, BOB};

#[test]
fn an_mcp_client_works_over_streamable_http_as_its_tenant_only() {
    let python = common::rich_python();
    let config = format!(
        "[[tenants]]\nname = \"default\"\ntoken = \"{ALICE}\"\nrate_per_second = 1e6\nburst = 1000000\n\n\
         [[tenants]]\nname = \"bob\"\ntoken = \"{BOB}\"\nrate_per_second = 1e6\nburst = 1000000\nmax_sessions = 20\n"
    );
    let (mut server, base, _dir) = spawn_server_with_config(
        &config,
        &[
            "--min-idle",
            "0",
            "--max-sessions",
            "32",
            "--python",
            python.to_str().unwrap(),
        ],
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mcp_http_client.py");
    let mut client = common::Watched::spawn(
        Command::new(&python)
            .arg(&script)
            .arg(&base)
            .arg(ALICE)
            .arg(BOB)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        common::GUARD * 3,
    );
    let status = client.finish();
    let transcript = client.stdout();
    // The transcript, for the record (`cargo test -- --nocapture` shows it).
    eprintln!("{transcript}");
    assert!(
        status.success() && transcript.contains("MCP HTTP OK"),
        "{transcript}\n{}",
        client.stderr()
    );
    // The client closes each connection with DELETE, and takes only 200 or 204 as a clean
    // close (else it logs this).
    let logged = client.stderr();
    assert!(!logged.contains("Session termination failed"), "{logged}");
    server.kill_and_wait();
}

/// An MCP `initialize` request's body.
fn initialize() -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bounds", "version": "0"}}})
}

#[tokio::test]
async fn open_mcp_sessions_are_bounded_per_tenant_and_in_all() {
    use common::server::{config, tenant, Api};
    // Five tenants: four fill the server's 256 MCP sessions with their 64 each.
    let tokens: Vec<String> = (0..5).map(|n| format!("tenant-token-{n:04}")).collect();
    let tenants = tokens
        .iter()
        .enumerate()
        .map(|(n, token)| {
            let mut t = tenant(&format!("t{n}"), token);
            (t.rate_per_second, t.burst) = (1e6, 1_000_000);
            t
        })
        .collect();
    let mut settings = config(tenants);
    // No worker runs in this test: no pool to fill, no sandbox to check.
    settings.pool.min_idle = 0;
    settings.sandbox.enabled = false;
    let api = Api::start(settings).await;
    let open = |token: &str| {
        api.http
            .post(api.url("/mcp"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize())
            .send()
    };
    let mut first = None;
    for token in &tokens[..4] {
        for _ in 0..64 {
            let answer = common::guard(open(token)).await.unwrap();
            assert_eq!(answer.status(), 200);
            let id = answer.headers()["mcp-session-id"].to_str().unwrap();
            first.get_or_insert(id.to_string());
        }
    }
    let refused = common::guard(open(&tokens[0])).await.unwrap();
    assert_eq!(refused.status(), 429, "a tenant's 65th");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "mcp_session_limit", "{body}");
    let refused = common::guard(open(&tokens[4])).await.unwrap();
    assert_eq!(refused.status(), 503, "the server's 257th");
    // A request on an open MCP session still passes at the bounds: here, closing it.
    let closed = api
        .http
        .delete(api.url("/mcp"))
        .bearer_auth(&tokens[0])
        .header("mcp-session-id", first.unwrap())
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    let again = common::guard(open(&tokens[4])).await.unwrap();
    assert_eq!(again.status(), 200, "a closed MCP session frees its place");
    // Wrong tokens never reach the bounds, nor MCP.
    let unauthorized = common::guard(open("wrong-token-123")).await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_mcp_session_is_its_tenants_and_refuses_another_tenants_token() {
    use common::server::{config, tenant, Api};
    let mut settings = config(vec![tenant("default", ALICE), tenant("bob", BOB)]);
    // No worker runs in this test: no pool to fill, no sandbox to check.
    settings.pool.min_idle = 0;
    settings.sandbox.enabled = false;
    let api = Api::start(settings).await;
    let post = |token: &'static str, session: Option<&str>, body: serde_json::Value| {
        let mut request = api
            .http
            .post(api.url("/mcp"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(id) = session {
            request = request.header("mcp-session-id", id);
        }
        request.send()
    };
    let opened = common::guard(post(ALICE, None, initialize()))
        .await
        .unwrap();
    assert_eq!(opened.status(), 200);
    let id = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let sent = common::guard(post(ALICE, Some(&id), initialized))
        .await
        .unwrap();
    assert!(sent.status().is_success(), "{}", sent.status());
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "list_sessions", "arguments": {}}});
    let answer = common::guard(post(BOB, Some(&id), call)).await.unwrap();
    let text = common::guard(answer.text()).await.unwrap();
    eprintln!("> tools/call list_sessions on alice's MCP session with bob's token\n< {text}");
    assert!(text.contains("another tenant's token"), "{text}");
    api.handle.shutdown().await.unwrap();
}

/// During the shutdown grace an open MCP session's requests still pass (a client may list
/// the tools before it takes a tool's result), while opening one is refused `503`.
#[tokio::test]
async fn an_open_mcp_session_is_served_through_the_shutdown_grace() {
    use common::server::{config, tenant, Api};
    use futures::StreamExt;
    let mut settings = config(vec![tenant("default", ALICE)]);
    settings.shutdown_grace_secs = 60.0;
    // The code reads a fifo in this test's temporary directory, which a sandbox hides.
    settings.sandbox.enabled = false;
    let api = Api::start(settings).await;
    let mcp = |session: Option<&str>, body: serde_json::Value| {
        let mut request = api
            .http
            .post(api.url("/mcp"))
            .bearer_auth(ALICE)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(id) = session {
            request = request.header("mcp-session-id", id);
        }
        request.send()
    };
    let opened = common::guard(mcp(None, initialize())).await.unwrap();
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    drop(opened);
    let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let answer = common::guard(mcp(Some(&session), initialized))
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());

    // Code that keeps the grace open until the test lets it end (a fifo it reads), after
    // telling when shutdown began (its input() gets end of file then).
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let path = std::ffi::CString::new(gate.to_str().unwrap()).unwrap();
    // SAFETY: a plain mkfifo(3) of a path in a fresh temporary directory.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let id = api.new_session(ALICE).await;
    let code = format!(
        "try:\n    input()\nexcept EOFError:\n    print('shutdown began', flush=True)\nopen({gate:?}).read()"
    );
    let stream = api
        .http
        .post(api.url(&format!("/v1/sessions/{id}/execute")))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let mut body = stream.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: input") {
        let chunk = common::guard(body.next()).await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let stop = api.handle.stop_token();
    stop.cancel();
    while !seen.contains("shutdown began") {
        let chunk = common::guard(body.next()).await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }

    let listed = common::guard(mcp(
        Some(&session),
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    ))
    .await
    .unwrap();
    assert_eq!(listed.status(), 200, "the open MCP session is served");
    let text = common::guard(listed.text()).await.unwrap();
    assert!(text.contains("run_python"), "{text}");
    // ... but no new work: a tool that would make a session answers why.
    let made = common::guard(mcp(
        Some(&session),
        serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "create_session", "arguments": {"session": "late"}}}),
    ))
    .await
    .unwrap();
    assert_eq!(made.status(), 200);
    let text = common::guard(made.text()).await.unwrap();
    assert!(
        text.contains(r#""isError":true"#) && text.contains("shutting down"),
        "{text}"
    );
    let refused = common::guard(mcp(None, initialize())).await.unwrap();
    assert_eq!(
        refused.status(),
        503,
        "no MCP session is opened during shutdown"
    );
    // Nor does a made-up MCP session id pass for an open one.
    let made_up = common::guard(mcp(
        Some("made-up-session-id"),
        serde_json::json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
    ))
    .await
    .unwrap();
    assert_eq!(made_up.status(), 503, "a made-up MCP session is new work");

    // The code ends; so does the shutdown.
    let (written_tx, written) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = written_tx.send(std::fs::write(&gate, "go"));
    });
    common::guard(written).await.unwrap().unwrap();
    while let Some(chunk) = common::guard(body.next()).await {
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(seen.contains("event: result"), "{seen}");
    common::guard(api.handle.wait()).await.unwrap();
}
