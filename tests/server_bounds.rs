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

// About the RSS bounds: the server runs tokio's multi-thread runtime, and glibc gives each
// thread that allocates an arena of its own, which keeps memory once freed; so what RSS shows
// varies with scheduling (more on a loaded machine). Each test therefore makes the unbounded
// (pre-fix) server grow several times its bound, and leaves the fixed one several times its
// measured growth as headroom. The figures in the comments were measured on a 2-core machine,
// pre-fix with the server as it was before the bounds (commit 1f96336).

/// The tests of this file run one at a time: each measures one server's RSS and timing
/// (a client that is not reading is closed once its frames stop being read), which the CPU
/// load of another test's server running at the same time (150 MB of output) would blur.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = SERIAL.lock().await;
    // A client that leaves its send queue full for 2 s counts as not reading (default 10 s);
    // its executions are cancelled 0.1 s after it is gone.
    let config = format!("ws_pong_timeout_secs = 2.0\nreconnect_grace_secs = 0.1\n{UNLIMITED}");
    // Unsandboxed: the worker reports on a named pipe in the test's directory, which a
    // sandbox would not show it. (This bounds the server's memory, not the worker.)
    let (server, base, dir) =
        spawn_server_with_config(&config, &["--min-idle", "1", "--sandbox", "off"]);
    let fifo = fifo(dir.path());
    let rss = || rss_bytes(server.id());
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    // A small receive buffer, so that what the server sends fills the socket soon and the
    // client has little to read once it reads again.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let tcp = guard(socket.connect(addr)).await.unwrap();
    let url = format!("ws://{addr}/v1/sessions/{id}/ws");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {ALICE}").parse().unwrap());
    let (ws, _) = guard(tokio_tungstenite::client_async(request, tcp))
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    let baseline = rss();
    let mut peak = baseline;
    // First an execution whose output fills every socket buffer between the server and this
    // client (which reads nothing); it says on the named pipe when it is cancelled, which
    // happens once the server has dropped the connection's readers. Then 3.5 MB of frames,
    // each an execution that prints 4 kB. (Not more: what the server has not read when it
    // drops the connection must fit in the socket buffers, else the kernel resets the
    // connection and the close frame is lost. Unbounded, the server also fails the cancel
    // and close checks below.)
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
    // Unbounded (pre-fix): +44 to +75 MiB here, +337 MiB in the run. Bounded: +14 MiB
    // (and the same with five times the frames).
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
    // Bounded: +9 to +11 MiB (freed memory the allocator keeps); unbounded: 445 MiB in the
    // issue's run.
    assert!(
        after.saturating_sub(baseline) < 40 * MIB,
        "server RSS still {} MiB above its baseline after the connection closed",
        after.saturating_sub(baseline) / MIB
    );
    stop_server(server).await;
}

/// Reads replies until every one of `ids` has its outcome: an error frame in reply to it
/// (its `exception_type`) or its execution's terminal event (`"ran"`).
async fn outcomes(
    stream: &mut (impl futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
              + Unpin),
    ids: &[String],
) -> std::collections::HashMap<String, (String, Value)> {
    let mut seen = std::collections::HashMap::new();
    guard(async {
        while seen.len() < ids.len() {
            let msg = match stream.next().await {
                Some(Ok(WsMessage::Text(t))) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("websocket ended: {other:?}"),
            };
            if let Some(to) = msg["in_reply_to"].as_str() {
                let kind = msg["exception_type"].as_str().unwrap().to_string();
                seen.insert(to.to_string(), (kind, msg));
            } else if is_terminal(&msg) {
                let id = msg["execution_id"].as_str().unwrap().to_string();
                seen.insert(id, ("ran".to_string(), msg));
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn websocket_messages_count_against_the_tenants_rate_limit() {
    let _serial = SERIAL.lock().await;
    // A 5 req/s tenant sends 400 executions of 256 KiB over one socket.
    let config = "[[tenants]]\nname = \"default\"\ntoken = \"alice-token-0001\"\nrate_per_second = 5.0\nburst = 5\n";
    let (server, base, _dir) = spawn_server_with_config(config, &["--min-idle", "1"]);
    let rss = || rss_bytes(server.id());
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let ws = ws_at(&base, &id, "").await;
    let (mut sink, mut stream) = ws.split();
    let baseline = rss();
    let mut peak = baseline;
    let code = format!("#{}", "x".repeat(256 * 1024));
    let ids: Vec<String> = (0..400).map(|i| format!("e{i}")).collect();
    let t0 = std::time::Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let frame = json!({"type": "execute", "id": id, "code": code}).to_string();
        guard(sink.send(WsMessage::Text(frame.into())))
            .await
            .unwrap();
        if i % 50 == 0 {
            peak = peak.max(rss());
        }
    }
    let seen = outcomes(&mut stream, &ids).await;
    let elapsed = t0.elapsed().as_secs_f64();
    peak = peak.max(rss());
    let ran = seen.values().filter(|(kind, _)| kind == "ran").count();
    let limited: Vec<&Value> = seen
        .values()
        .filter(|(kind, _)| kind == "RateLimited")
        .map(|(_, msg)| msg)
        .collect();
    eprintln!(
        "400 executions of 256 KiB in {elapsed:.2} s: {ran} ran, {} rate limited; server RSS {} -> {} MiB",
        limited.len(),
        baseline / MIB,
        peak / MIB
    );
    // The burst (5, less the upgrade's token) plus 5 per second, nothing more, was acted on.
    assert!(
        (ran as f64) <= 5.0 + 5.0 * elapsed + 1.0,
        "{ran} executions ran in {elapsed:.2} s at 5/s"
    );
    assert_eq!(ran + limited.len(), 400, "every other message was refused");
    assert!(limited
        .iter()
        .all(|m| m["retry_after"].as_f64().is_some_and(|s| s > 0.0)));
    // A sanity bound: what fails without the rate limit is the count above (all 400 ran). The
    // RSS then grew +7 MiB here (the executions run as fast as they come), +89 MiB in the
    // issue's run; with it +2 MiB.
    assert!(
        peak.saturating_sub(baseline) < 40 * MIB,
        "server RSS grew {} MiB",
        peak.saturating_sub(baseline) / MIB
    );
    stop_server(server).await;
}

#[tokio::test]
async fn a_sessions_queue_of_executions_is_capped_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let (server, base, _dir) = spawn_server_with_config(UNLIMITED, &["--min-idle", "1"]);
    let rss = || rss_bytes(server.id());
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let ws = ws_at(&base, &id, "").await;
    let (mut sink, mut stream) = ws.split();
    // One execution that waits for input holds the queue behind it.
    let block = json!({"type": "execute", "id": "block", "code": "input()"});
    guard(sink.send(WsMessage::Text(block.to_string().into())))
        .await
        .unwrap();
    let input = guard(stream.next()).await.unwrap().unwrap();
    let input: Value = serde_json::from_str(input.to_text().unwrap()).unwrap();
    assert_eq!(input["type"], "input", "{input}");
    let baseline = rss();
    let mut peak = baseline;
    // 800 executions of 256 KiB: unbounded (pre-fix), all wait in the session: +204 MiB
    // (+102 MiB for 400). With the cap, 64 wait (16 MiB of code): +18 MiB.
    let code = format!("#{}", "x".repeat(256 * 1024));
    let ids: Vec<String> = (0..800).map(|i| format!("q{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let frame = json!({"type": "execute", "id": id, "code": code}).to_string();
        guard(sink.send(WsMessage::Text(frame.into())))
            .await
            .unwrap();
        if i % 50 == 0 {
            peak = peak.max(rss());
        }
    }
    peak = peak.max(rss());
    eprintln!(
        "800 executions of 256 KiB queued on one session: server RSS {} -> {} MiB",
        baseline / MIB,
        peak / MIB
    );
    assert!(
        peak.saturating_sub(baseline) < 56 * MIB,
        "server RSS grew {} MiB",
        peak.saturating_sub(baseline) / MIB
    );
    // 64 wait behind `block`; every later one is refused, over HTTP too.
    let refused = &ids[64..];
    let seen = outcomes(&mut stream, refused).await;
    let after = rss();
    assert!(
        after.saturating_sub(baseline) < 56 * MIB,
        "server RSS grew {} MiB once every frame was read",
        after.saturating_sub(baseline) / MIB
    );
    for id in refused {
        let (kind, msg) = &seen[id];
        assert_eq!(kind, "QueueFull", "{msg}");
        assert!(
            msg["exception_message"]
                .as_str()
                .unwrap()
                .contains("64 executions queued"),
            "{msg}"
        );
    }
    let resp = http
        .post(format!("{base}/v1/sessions/{id}/execute"))
        .bearer_auth(ALICE)
        .json(&json!({"code": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    // The queue then runs: all 64 and `block`.
    let answer = json!({"type": "input_response", "input_id": input["id"], "data": ""});
    guard(sink.send(WsMessage::Text(answer.to_string().into())))
        .await
        .unwrap();
    let mut queued: Vec<String> = ids[..64].to_vec();
    queued.push("block".into());
    let seen = outcomes(&mut stream, &queued).await;
    // Each ends with its result: with 65 executions listed, none of them may lose its events
    // to retention before this connection has sent them (an `ExecutionExpired` error).
    for id in &queued {
        let (kind, msg) = &seen[id];
        assert_eq!(kind, "ran", "{id}: {msg}");
        assert_eq!(msg["type"], "result", "{id}: {msg}");
    }
    stop_server(server).await;
}

#[tokio::test]
async fn a_collected_answer_keeps_at_most_max_output_bytes_and_says_so() {
    let _serial = SERIAL.lock().await;
    let (server, base, _dir) = spawn_server_with_config(UNLIMITED, &["--min-idle", "1"]);
    let rss = || rss_bytes(server.id());
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let baseline = rss();
    // 150 MB in lines of 1000 bytes, collected into one JSON answer. Unbounded (pre-fix):
    // +308 MiB (+118 MiB for 50 MB; +135 MiB in the run). Bounded: the 4 MiB kept,
    // the log's two windows (4 + 16 MiB) and the answer's body: +35 to +40 MiB.
    let code = "import sys\nline = 'x' * 999 + '\\n'\nfor _ in range(150_000):\n    sys.stdout.write(line)\n'end'";
    let answer = guard(json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({"code": code})),
    ))
    .await;
    let after = rss();
    let kept: usize = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["data"].as_str().unwrap().len())
        .sum();
    eprintln!(
        "150 MB collected: {kept} bytes kept; server RSS {} -> {} MiB",
        baseline / MIB,
        after / MIB
    );
    assert_eq!(
        answer["result"]["repr"], "'end'",
        "the execution ran to its end"
    );
    assert_eq!(answer["truncated"], true);
    // max_output_bytes (default 4 MiB) counts the output's JSON in the answer: the data, one
    // escaped newline (2 bytes) per 1000-byte line, and one entry's overhead.
    let limit = 4 * 1024 * 1024;
    assert!(
        kept <= limit && kept > limit - limit / 999 - 64,
        "{kept} bytes kept"
    );
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 1, "one stream");
    assert_eq!(
        answer["output_truncated_bytes"].as_u64(),
        Some(150_000_000 - kept as u64)
    );
    assert!(
        after.saturating_sub(baseline) < 96 * MIB,
        "server RSS grew {} MiB",
        after.saturating_sub(baseline) / MIB
    );
    // A small answer is whole, and says so.
    let small = json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({"code": "print('hi')"})),
    )
    .await;
    assert_eq!(small["truncated"], false);
    assert_eq!(small["output_truncated_bytes"], 0);
    // Streaming is not truncated: SSE gets every byte of 10 MB.
    let resp = http
        .post(format!("{base}/v1/sessions/{id}/execute"))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .json(&json!({"code": code.replace("150_000", "10_000")}))
        .send()
        .await
        .unwrap();
    let events = sse_events(resp).await;
    let streamed: usize = events
        .iter()
        .filter_map(|e| e["data"].as_str())
        .map(str::len)
        .sum();
    assert_eq!(streamed, 10_000_000);
    stop_server(server).await;
}

#[tokio::test]
async fn finished_logs_are_kept_within_the_retention_budget() {
    let _serial = SERIAL.lock().await;
    let (server, base, _dir) = spawn_server_with_config(UNLIMITED, &["--min-idle", "1"]);
    let rss = || rss_bytes(server.id());
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let baseline = rss();
    // 32 executions of 16 MB each: every log keeps up to 16 MiB of history for resuming, so
    // without a budget the session keeps 32 of them: +579 MiB (pre-fix; +444 MiB for 24).
    // With it: the 32 MiB budget, the log being written and the collected answer, plus what
    // the allocator keeps of freed memory: +99 to +127 MiB.
    let code =
        "import sys\nline = 'x' * 999 + '\\n'\nfor _ in range(16_000):\n    sys.stdout.write(line)";
    let mut peak = baseline;
    for i in 0..32 {
        let answer = guard(json_of(
            http.post(format!("{base}/v1/sessions/{id}/execute"))
                .json(&json!({"code": code, "execution_id": format!("r{i}")})),
        ))
        .await;
        assert!(answer["error"].is_null(), "{answer}");
        peak = peak.max(rss());
    }
    eprintln!(
        "32 logs of 16 MB: server RSS {} -> peak {} MiB",
        baseline / MIB,
        peak / MIB
    );
    assert!(
        peak.saturating_sub(baseline) < 200 * MIB,
        "server RSS grew {} MiB",
        peak.saturating_sub(baseline) / MIB
    );
    // The oldest was dropped and says so; the newest is still there.
    let resp = http
        .get(format!("{base}/v1/sessions/{id}/executions/r0"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "execution_expired", "{body}");
    let last = json_of(http.get(format!(
        "{base}/v1/sessions/{id}/executions/r31?since=999999"
    )))
    .await;
    assert_eq!(last["done"], true, "{last}");
    stop_server(server).await;
}

#[tokio::test]
async fn a_collected_answer_of_many_tiny_prints_stays_within_max_output_bytes() {
    let _serial = SERIAL.lock().await;
    // 200 000 flushed prints of 2 bytes: as many output events of a few bytes. Each entry of
    // `outputs` costs some 30 bytes of JSON beyond its data, so counting data alone, a
    // 10 000-byte limit let through an answer of about 170 kB (5 000 entries), and 4 MiB
    // (the default) one of hundreds of MB.
    let config = format!("max_output_bytes = 10000\n{UNLIMITED}");
    let (server, base, _dir) = spawn_server_with_config(&config, &["--min-idle", "1"]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let code = "for i in range(200000):\n    print('x', flush=True)\nprint('err', file=__import__('sys').stderr)\n'end'";
    let resp = guard(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .bearer_auth(ALICE)
            .json(&json!({"code": code}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = guard(resp.text()).await.unwrap();
    let answer: Value = serde_json::from_str(&body).unwrap();
    eprintln!(
        "200 000 tiny prints collected: a body of {} bytes",
        body.len()
    );
    assert_eq!(answer["result"]["repr"], "'end'", "{answer}");
    assert_eq!(answer["truncated"], true);
    // The limit, plus the rest of the answer (ids, result, field names): under 1 KiB.
    assert!(
        body.len() < 10_000 + 1024,
        "a body of {} bytes for max_output_bytes = 10000",
        body.len()
    );
    // Consecutive chunks of one stream are one entry: the first 10 kB of stdout, whole.
    let outputs = answer["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!(outputs[0]["stream"], "stdout");
    let data = outputs[0]["data"].as_str().unwrap();
    assert!(data.len() > 3000 && data.chars().all(|c| c == 'x' || c == '\n'));
    assert_eq!(
        answer["output_truncated_bytes"].as_u64(),
        Some(400_000 + 4 - data.len() as u64)
    );
    stop_server(server).await;
}
