//! The WebSocket: queued executions in order with input and cancel, and a slow reader that
//! gets every byte while the server's memory stays bounded (the worker is held back).

mod common;

use std::time::Duration;

use common::server::*;
use common::{guard, rss_bytes};
use reqwest::Client;
use serde_json::json;

#[tokio::test]
async fn websocket_runs_queued_executions_in_order_with_input_and_cancel() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "first", "code": "x = input('x? ')\nprint('got', x)"}),
    )
    .await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "second", "code": "x * 2"}),
    )
    .await;
    let msg = ws_next(&mut ws).await;
    assert_eq!(
        (
            msg["type"].as_str(),
            msg["execution_id"].as_str(),
            msg["prompt"].as_str()
        ),
        (Some("input"), Some("first"), Some("x? "))
    );
    ws_send(
        &mut ws,
        json!({"type": "input_response", "id": "r1", "input_id": msg["id"], "data": "ab"}),
    )
    .await;
    let msg = ws_next(&mut ws).await;
    assert_eq!(
        (msg["type"].as_str(), msg["data"].as_str()),
        (Some("output"), Some("got ab\n"))
    );
    let msg = ws_next(&mut ws).await;
    assert_eq!(
        (msg["type"].as_str(), msg["execution_id"].as_str()),
        (Some("result"), Some("first"))
    );
    let msg = ws_next(&mut ws).await;
    assert_eq!(
        (
            msg["type"].as_str(),
            msg["execution_id"].as_str(),
            msg["repr"].as_str()
        ),
        (Some("result"), Some("second"), Some("'abab'"))
    );

    ws_send(&mut ws, json!({"type": "execute", "id": "spin", "code": "print('go', flush=True)\nwhile True: pass"})).await;
    assert_eq!(ws_next(&mut ws).await["data"], "go\n");
    ws_send(
        &mut ws,
        json!({"type": "cancel", "id": "c1", "execution_id": "spin"}),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(ws_next(&mut ws).await);
    }
    let error = seen
        .iter()
        .find(|m| m["type"] == "error")
        .expect("an error event");
    assert_eq!(error["exception_type"], "KeyboardInterrupt");
    let reply = seen
        .iter()
        .find(|m| m["type"] == "cancel_reply")
        .expect("a cancel reply");
    assert_eq!(reply["outcome"], "cancelled");
    assert_eq!(reply["in_reply_to"], "c1", "{reply}");
    ws_send(&mut ws, json!({"type": "no_such_type"})).await;
    assert_eq!(ws_next(&mut ws).await["exception_type"], "BadRequest");
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_websocket_reader_gets_every_byte_with_bounded_server_memory() {
    let (mut server, base) = spawn_server(&["--min-idle", "1"]);
    let server_rss = || rss_bytes(server.id());
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let url = format!("{}/v1/sessions/{id}/ws", base.replace("http://", "ws://"));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {ALICE}").parse().unwrap());
    let mut ws = guard(tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .0;
    // 120 MB in lines of 1000 bytes: held unbounded, the server would grow by more than that;
    // held back, by its fixed windows (4 MiB undelivered, 16 MiB of history), socket buffers
    // and what the allocator keeps (measured ~40 MB).
    ws_send(&mut ws, json!({"type": "execute", "id": "flood", "code": "import sys\nline = 'x' * 999 + '\\n'\nfor _ in range(120_000):\n    sys.stdout.write(line)"})).await;
    let baseline = server_rss();
    let mut bytes = 0usize;
    let mut peak = baseline;
    let mut stalled = false;
    let end = guard(async {
        loop {
            let msg = ws_next(&mut ws).await;
            if let Some(data) = msg["data"].as_str() {
                assert!(data.bytes().all(|b| b == b'x' || b == b'\n'));
                bytes += data.len();
            }
            if is_terminal(&msg) {
                return msg;
            }
            if !stalled && bytes > 5_000_000 {
                // The reader stops for a while: the worker must be held back, not buffered.
                stalled = true;
                tokio::time::sleep(Duration::from_secs(2)).await;
                peak = peak.max(server_rss());
            }
        }
    })
    .await;
    peak = peak.max(server_rss());
    assert_eq!(end["type"], "result", "{end}");
    assert_eq!(bytes, 120_000_000, "every byte arrives");
    let growth = peak.saturating_sub(baseline);
    eprintln!("server RSS for 120 MB through a stalled reader: baseline {baseline}, peak {peak}");
    assert!(
        growth < 64_000_000,
        "server memory grew {growth} bytes for 120 MB of output"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert_eq!(
        guard(tokio::task::spawn_blocking(move || server.wait()))
            .await
            .unwrap()
            .code(),
        Some(0)
    );
}

/// One WebSocket message is bounded by `max_body_bytes`, like a request body: a larger one
/// closes the connection, with `1009` and a reason naming the bound if the close frame gets
/// through (the server does not read the rest of the message, so closing the socket may
/// reset the connection before the client reads the frame); nothing of it runs. A message
/// under the bound runs as usual.
#[tokio::test]
async fn a_websocket_message_over_max_body_bytes_closes_the_connection() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let mut config = config(vec![tenant("alice", ALICE)]);
    config.max_body_bytes = 64 * 1024;
    config.max_code_bytes = 1024 * 1024;
    let api = Api::start(config).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    let code = |n: usize| format!("len('{}')", "a".repeat(n));
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "small", "code": code(60_000)}),
    )
    .await;
    let msg = ws_next(&mut ws).await;
    assert_eq!(
        (msg["execution_id"].as_str(), msg["repr"].as_str()),
        (Some("small"), Some("60000")),
        "{msg}"
    );
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "large", "code": code(100_000)}),
    )
    .await;
    let close = guard(async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Text(text))) => panic!("answered instead of closed: {text}"),
                Some(Ok(_)) => continue,
                // Closed, its close frame lost to the reset.
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    if let Some(close) = close {
        assert_eq!(close.code, CloseCode::Size, "{close:?}");
        assert!(
            close.reason.contains("max_body_bytes (65536 bytes)"),
            "{close:?}"
        );
    }
    // Nothing of it ran.
    let (_, log) = api
        .get(&format!("/v1/sessions/{id}/executions/large"), ALICE)
        .await;
    assert_eq!(log["error"]["code"], "not_found", "{log}");
    api.handle.shutdown().await.unwrap();
}

/// At shutdown a WebSocket is closed with 1001 ("going away"), so that its client can tell
/// the server's shutdown from a connection lost on the way.
#[tokio::test]
async fn a_websocket_is_closed_with_going_away_at_shutdown() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "one", "code": "1 + 1"}),
    )
    .await;
    assert_eq!(ws_next(&mut ws).await["repr"], "2");
    let stop = api.handle.stop_token();
    stop.cancel();
    let close = guard(async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Away, "{close:?}");
    guard(api.handle.wait()).await.unwrap();
}
