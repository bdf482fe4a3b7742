//! Dead WebSocket peers are noticed: a client process frozen with SIGSTOP mid-stream (its
//! kernel still ACKs, so the connection looks healthy to TCP) stops answering pings; the
//! server drops it once its pong is overdue, and its execution goes through the reconnect
//! grace like any disconnect. A live client that answers its pings is never dropped.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::*;
use common::{guard, Watched, GUARD};
use reqwest::Client;
use serde_json::{json, Value};

/// Ping after 0.3 s of silence, pong due 1 s later (room for a loaded machine to answer),
/// cancel 0.2 s after the disconnect.
const CONFIG: &str =
    "ws_ping_interval_secs = 0.3\nws_pong_timeout_secs = 1.0\nreconnect_grace_secs = 0.2\n";

/// The next line the client printed (reader threads drain it; the wait has the guard's
/// deadline).
async fn line(client: Watched) -> (Watched, String) {
    guard(tokio::task::spawn_blocking(move || {
        let mut client = client;
        let line = client.read_line();
        (client, line)
    }))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_frozen_websocket_client_is_dropped_once_its_pong_is_overdue() {
    let (server, base, _dir) = spawn_server_with_config(CONFIG, &["--min-idle", "1"]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let addr = base.trim_start_matches("http://").to_string();
    let (host, port) = addr.rsplit_once(':').unwrap();
    // The client streams an execution that prints forever, 20 lines a second.
    let code = "import time\ni = 0\nwhile True:\n    print(i, flush=True)\n    i += 1\n    time.sleep(0.05)";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ws_client.py");
    let mut command = Command::new("python3");
    command
        .args([
            script,
            host,
            port,
            &format!("/v1/sessions/{id}/ws"),
            ALICE,
            code,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = Watched::spawn(&mut command, GUARD);
    // Alive, it answers pings and stays connected: wait for two pings answered and output
    // past them (more than ping interval + pong timeout).
    let mut pings = 0;
    let mut last = Value::Null;
    while pings < 2 || last["data"].is_null() {
        let (c, text) = line(client).await;
        client = c;
        match text.trim() {
            "ping" => pings += 1,
            "closed" | "eof" => panic!("a live client was disconnected"),
            json => last = serde_json::from_str(json).unwrap(),
        }
    }
    assert_eq!(last["execution_id"], "stream", "{last}");
    // Frozen: its kernel still ACKs what the server sends, but it answers nothing.
    let frozen = Instant::now();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(client.id() as i32, libc::SIGSTOP) }, 0);
    // The execution never ends by itself; code queued behind it on another connection runs
    // only once it was cancelled, after the pong deadline and the reconnect grace.
    let mut ws = ws_at(&base, &id, "").await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "after", "code": "'after'"}),
    )
    .await;
    let msg = ws_next(&mut ws).await;
    let detected = frozen.elapsed();
    assert_eq!(
        (msg["execution_id"].as_str(), msg["repr"].as_str()),
        (Some("after"), Some("'after'")),
        "{msg}"
    );
    eprintln!("frozen client dropped and its execution cancelled {detected:?} after SIGSTOP");
    // Ping 0.3 + pong 1.0 + grace 0.2 + cancel; generous for a loaded machine, far below
    // "never".
    assert!(
        detected < Duration::from_secs(10),
        "took {detected:?} to notice a frozen client"
    );
    let log = json_of(http.get(format!("{base}/v1/sessions/{id}/executions/stream"))).await;
    assert_eq!(log["done"], true, "{log}");
    let events = log["events"].as_array().unwrap();
    assert_eq!(
        events.last().unwrap()["exception_type"],
        "KeyboardInterrupt",
        "{log}"
    );
    drop(client); // SIGKILL, which also ends a stopped process
    stop_server(server).await;
}
