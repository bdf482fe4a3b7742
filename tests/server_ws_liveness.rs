//! Dead WebSocket peers are noticed: a client process frozen with SIGSTOP mid-stream (its
//! kernel still ACKs, so the connection looks healthy to TCP) stops answering pings; the
//! server drops it once its pong is overdue, and its execution goes through the reconnect
//! grace like any disconnect. A live client that answers its pings is never dropped, nor
//! is a slow one that reads all along far behind a backlog (its pong comes late).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::*;
use common::{guard, Watched, GUARD};
use reqwest::Client;
use serde_json::{json, Value};

/// Ping after 0.3 s of silence, pong due 3 s after the ping is written (room for a live
/// Python client on a loaded machine to answer: a 1 s pong could drop it), cancel 0.2 s
/// after the disconnect.
const CONFIG: &str =
    "ws_ping_interval_secs = 0.3\nws_pong_timeout_secs = 3.0\nreconnect_grace_secs = 0.2\n";

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
    // Ping 0.3 + pong 3.0 + grace 0.2 + cancel; generous for a loaded machine, far below
    // "never".
    assert!(
        detected < Duration::from_secs(12),
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

/// A slow client that reads all along, but far behind (a slow link), and sends nothing of
/// its own: the ping waits behind megabytes of output in the socket's buffers and reaches it
/// long after the pong timeout, yet it is alive and must not be dropped. Its reads are what
/// shows it alive (each write that had to wait for it and went through). It reads at
/// ~600 KB/s for 5 s with several MB ahead of each ping (ping after 0.3 s, pong due 3 s
/// later: its pong is late), then at full speed: every byte arrives, and the result.
#[tokio::test]
async fn a_slow_websocket_reader_behind_a_backlog_is_not_dropped_as_dead() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    const RATE: f64 = 600_000.0; // bytes per second while slow
    let mut config = config(vec![tenant("alice", ALICE)]);
    config.ws_ping_interval_secs = 0.3;
    config.ws_pong_timeout_secs = 3.0;
    let api = Api::start(config).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    // 16 MB in lines of 1000 bytes: more than the slow phase reads.
    ws_send(&mut ws, json!({"type": "execute", "id": "flood", "code": "import sys\nline = 'x' * 999 + '\\n'\nfor _ in range(16000):\n    sys.stdout.write(line)"})).await;
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut pings = 0;
    let end = guard(async {
        loop {
            let text = match ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Ping(_))) => {
                    pings += 1;
                    continue;
                }
                Some(Ok(_)) => continue,
                other => panic!(
                    "a slow but live client was dropped after {:?} and {bytes} bytes: {other:?}",
                    started.elapsed()
                ),
            };
            let msg: Value = serde_json::from_str(text.as_str()).unwrap();
            if let Some(data) = msg["data"].as_str() {
                bytes += data.len();
                if started.elapsed() < Duration::from_secs(5) {
                    // A slow link, not a synchronisation: the client takes its time.
                    tokio::time::sleep(Duration::from_secs_f64(data.len() as f64 / RATE)).await;
                }
            }
            if is_terminal(&msg) {
                return msg;
            }
        }
    })
    .await;
    eprintln!(
        "slow reader: {bytes} bytes, {pings} pings, {:?}",
        started.elapsed()
    );
    assert_eq!(end["type"], "result", "{end}");
    assert_eq!(bytes, 16_000_000, "every byte arrives");
    api.handle.shutdown().await.unwrap();
}
