//! Sessions outlive the server: a graceful restart brings each back under its id with its
//! namespace; with `autosave`, so does a `kill -9`; deleted sessions stay gone.

mod common;

use common::server::*;
use reqwest::Client;
use serde_json::{json, Value};

async fn run(http: &Client, base: &str, id: &str, code: &str) -> Value {
    json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({ "code": code })),
    )
    .await
}

#[tokio::test]
async fn a_graceful_restart_brings_sessions_back_with_their_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite3");
    let store = store.to_str().unwrap();
    let http = Client::new();
    let (kept, deleted) = {
        let (mut server, base) = spawn_server(&["--min-idle", "0", "--store", store]);
        let kept = create_session_at(&http, &base).await;
        run(&http, &base, &kept, "x = 41 + 1\ndef f():\n    return x").await;
        let deleted = create_session_at(&http, &base).await;
        let gone = http
            .delete(format!("{base}/v1/sessions/{deleted}"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), 204);
        // SIGTERM: the graceful shutdown saves every session.
        unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
        assert!(server.wait().success());
        (kept, deleted)
    };
    let (server, base) = spawn_server(&["--min-idle", "0", "--store", store]);
    let listed = json_of(http.get(format!("{base}/v1/sessions"))).await;
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [kept.as_str()], "not {deleted}: {listed}");
    let answer = run(&http, &base, &kept, "(x, f())").await;
    assert_eq!(answer["result"]["repr"], "(42, 42)", "{answer}");
    let info = json_of(http.get(format!("{base}/v1/sessions/{kept}"))).await;
    assert_eq!(info["id"], kept.as_str(), "{info}");
    assert!(info["restored_from"].as_f64().is_some(), "{info}");
    assert_eq!(info["restore_failed"], json!([]), "{info}");
    drop(server);
}

#[tokio::test]
async fn with_autosave_a_killed_server_brings_sessions_back_as_last_saved() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite3");
    let store = store.to_str().unwrap();
    let toml = format!("[[tenants]]\nname = \"default\"\ntoken = \"{ALICE}\"\nautosave = true\n");
    let http = Client::new();
    let id = {
        let (mut server, base, _config) =
            spawn_server_with_config(&toml, &["--min-idle", "0", "--store", store]);
        let id = create_session_at(&http, &base).await;
        run(&http, &base, &id, "y = 7").await;
        // The save follows the execution: wait until the session says it is saved.
        common::guard(async {
            loop {
                let info = json_of(http.get(format!("{base}/v1/sessions/{id}"))).await;
                if info["saved_at"].as_f64().is_some() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        server.kill_and_wait();
        id
    };
    let (server, base, _config) =
        spawn_server_with_config(&toml, &["--min-idle", "0", "--store", store]);
    let answer = run(&http, &base, &id, "y * 6").await;
    assert_eq!(answer["result"]["repr"], "42", "{answer}");
    drop(server);
}

/// Sessions brought back at a start stay within their tenant's session limit (it may have
/// been lowered since); those over it stay recorded and come back when there is room.
#[tokio::test]
async fn sessions_come_back_within_their_tenants_session_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite3");
    let store = store.to_str().unwrap();
    let tenant = |max: usize| {
        format!("[[tenants]]\nname = \"default\"\ntoken = \"{ALICE}\"\nmax_sessions = {max}\n")
    };
    let http = Client::new();
    let listed = |base: String| {
        let http = http.clone();
        async move {
            let listed = json_of(http.get(format!("{base}/v1/sessions"))).await;
            listed["sessions"].as_array().unwrap().len()
        }
    };
    {
        let (mut server, base, _config) =
            spawn_server_with_config(&tenant(3), &["--min-idle", "0", "--store", store]);
        for _ in 0..3 {
            create_session_at(&http, &base).await;
        }
        unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
        assert!(server.wait().success());
    }
    {
        let (mut server, base, _config) =
            spawn_server_with_config(&tenant(1), &["--min-idle", "0", "--store", store]);
        assert_eq!(listed(base).await, 1, "the limit holds");
        unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
        assert!(server.wait().success());
    }
    let (server, base, _config) =
        spawn_server_with_config(&tenant(3), &["--min-idle", "0", "--store", store]);
    assert_eq!(listed(base).await, 3, "the others were kept for later");
    drop(server);
}

/// A session running code at shutdown is not saved; without an autosave it had no saved
/// state at all, so it comes back empty, and its info says so (no `restored_from`, the reason
/// in `restore_failed`) rather than claim a restore.
#[tokio::test]
async fn a_session_busy_at_shutdown_without_a_saved_state_comes_back_saying_so() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite3");
    let store = store.to_str().unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "shutdown_grace_secs = 0.5\n").unwrap();
    let args = [
        "--min-idle",
        "0",
        "--store",
        store,
        "--config",
        cfg.to_str().unwrap(),
    ];
    let http = Client::new();
    let busy = {
        let (mut server, base) = spawn_server(&args);
        let busy = create_session_at(&http, &base).await;
        let resp = http
            .post(format!("{base}/v1/sessions/{busy}/execute"))
            .bearer_auth(ALICE)
            .header("accept", "text/event-stream")
            .json(&json!({"code": "x = 1\nprint('spinning', flush=True)\nwhile True: pass"}))
            .send()
            .await
            .unwrap();
        let mut body = resp.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("spinning") {
            let chunk = common::guard(body.next()).await.unwrap().unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
        assert!(server.wait().success());
        busy
    };
    let (server, base) = spawn_server(&args);
    let info = json_of(http.get(format!("{base}/v1/sessions/{busy}"))).await;
    assert_eq!(info["id"], busy.as_str(), "{info}");
    assert!(info["restored_from"].is_null(), "{info}");
    assert_eq!(info["restore_failed"][0]["name"], "*", "{info}");
    let reason = info["restore_failed"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("no saved state"), "{info}");
    let answer = run(&http, &base, &busy, "'x' in globals()").await;
    assert_eq!(answer["result"]["repr"], "False", "{answer}");
    drop(server);
}
