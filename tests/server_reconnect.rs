//! Reconnecting to a running execution: resume after the last seen event with no gap and no
//! repeat (also after the reader fell behind a full socket), and cancel after the grace when
//! nobody comes back.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use serde_json::json;

#[tokio::test]
async fn a_client_that_reconnects_misses_nothing_and_gets_nothing_twice() {
    let mut cfg = config(vec![tenant("alice", ALICE)]);
    cfg.reconnect_grace_secs = 30.0;
    let api = Api::start(cfg).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(&mut ws, json!({"type": "execute", "id": "count", "code": "import time\nfor i in range(300):\n    print(i, flush=True)\n    time.sleep(0.002)\n'done'"})).await;
    let mut text = String::new();
    let mut last_seq = 0;
    while text.lines().count() < 20 {
        let msg = ws_next(&mut ws).await;
        last_seq = msg["seq"].as_u64().unwrap();
        text.push_str(msg["data"].as_str().unwrap());
    }
    drop(ws); // disconnect mid-execution
              // Meanwhile the execution goes on; a new connection resumes after the last seen event.
    let mut ws = api
        .ws(ALICE, &id, &format!("?execution_id=count&since={last_seq}"))
        .await;
    let end = read_resumed(&mut ws, last_seq, |data| text.push_str(data)).await;
    assert_eq!(end["repr"], "'done'");
    let expected: String = (0..300).map(|i| format!("{i}\n")).collect();
    assert_eq!(text, expected);
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reader_that_drops_behind_a_full_socket_resumes_without_a_gap() {
    // Regression: events written to the socket counted as delivered, so what sat in socket
    // buffers when the connection dropped was gone from the log (a resume jumped 3 → 78).
    let mut cfg = config(vec![tenant("alice", ALICE)]);
    cfg.reconnect_grace_secs = 30.0;
    let api = Api::start(cfg).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(&mut ws, json!({"type": "execute", "id": "flood", "code": "import sys\nline = 'x' * 999 + '\\n'\nfor _ in range(20_000):\n    sys.stdout.write(line)"})).await;
    let mut bytes = 0;
    let mut last_seq = 0;
    for _ in 0..3 {
        let msg = ws_next(&mut ws).await;
        last_seq = msg["seq"].as_u64().unwrap();
        bytes += msg["data"].as_str().unwrap().len();
    }
    // The reader falls behind while the server fills the socket buffers, then drops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(ws);
    let mut ws = api
        .ws(ALICE, &id, &format!("?execution_id=flood&since={last_seq}"))
        .await;
    let end = read_resumed(&mut ws, last_seq, |data| bytes += data.len()).await;
    assert_eq!(end["type"], "result", "{end}");
    assert_eq!(bytes, 20_000_000);
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_abandoned_execution_is_cancelled_after_the_grace() {
    let mut cfg = config(vec![tenant("alice", ALICE)]);
    cfg.reconnect_grace_secs = 0.5;
    let api = Api::start(cfg).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(&mut ws, json!({"type": "execute", "id": "spin", "code": "print('go', flush=True)\nwhile True: pass"})).await;
    assert_eq!(ws_next(&mut ws).await["data"], "go\n");
    drop(ws);
    // Nobody resumes `spin`. A new connection (not attached to it) queues more code, which
    // can only run once `spin` was cancelled, after the grace.
    let t0 = Instant::now();
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "after", "code": "'after'"}),
    )
    .await;
    let msg = ws_next(&mut ws).await;
    assert_eq!(
        (msg["execution_id"].as_str(), msg["repr"].as_str()),
        (Some("after"), Some("'after'"))
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "cancelled only after the grace"
    );
    let (_, log) = api
        .get(&format!("/v1/sessions/{id}/executions/spin"), ALICE)
        .await;
    assert_eq!(log["done"], true);
    assert_eq!(
        log["events"].as_array().unwrap().last().unwrap()["exception_type"],
        "KeyboardInterrupt",
        "{log}"
    );
    api.handle.shutdown().await.unwrap();
}
