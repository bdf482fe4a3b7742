//! `pyrepl3 serve` as its own process receiving SIGTERM with busy sessions: running
//! executions end with ServerShutdown, the server exits 0 in time, no worker is left.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use common::{group_alive, guard, pgid_of, wait_pid_exit};
use futures::StreamExt;
use reqwest::Client;
use serde_json::json;

#[tokio::test]
async fn sigterm_with_busy_sessions_exits_in_time_with_no_worker_left() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "shutdown_grace_secs = 1.0\n[pool]\nmin_idle = 1\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let (mut child, base) = spawn_server(&["--config", cfg]);
    let http = Client::new();
    let mut pids = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let id = create_session_at(&http, &base).await;
        let info = json_of(http.get(format!("{base}/v1/sessions/{id}"))).await;
        let pid = info["pid"].as_u64().unwrap() as u32;
        pids.push((pid, pgid_of(pid)));
        let resp = http.post(format!("{base}/v1/sessions/{id}/execute")).bearer_auth(ALICE)
            .header("accept", "text/event-stream")
            .json(&json!({"code": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('go', flush=True)\nwhile True: pass"}))
            .send().await.unwrap();
        let mut body = resp.bytes_stream();
        let first = guard(body.next()).await.unwrap().unwrap();
        assert!(std::str::from_utf8(&first).unwrap().contains("go"));
        streams.push(body);
    }
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // The running executions end with ServerShutdown.
    for mut body in streams {
        let mut rest = String::new();
        while let Some(chunk) = guard(body.next()).await {
            rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        assert!(rest.contains("ServerShutdown"), "{rest}");
    }
    let status = guard(tokio::task::spawn_blocking(move || child.wait()))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    for (pid, pgid) in pids {
        assert!(
            wait_pid_exit(pid, Duration::from_secs(1)).await,
            "worker {pid} left behind"
        );
        assert!(!group_alive(pgid));
    }
}

/// No request is taken once shutdown begins, so no `input()` can be answered: the one
/// waiting, and any later one, get end-of-file at once, and the code's `except EOFError`
/// runs and ends it within the grace (which here is long enough to tell the two apart).
#[tokio::test]
async fn shutdown_gives_input_end_of_file_so_the_code_ends_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "shutdown_grace_secs = 60.0\n[pool]\nmin_idle = 1\n").unwrap();
    let (mut child, base) = spawn_server(&["--config", cfg.to_str().unwrap()]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let code = "try:\n    input('name? ')\nexcept EOFError:\n    print('first EOF', flush=True)\n\
                try:\n    input('again? ')\nexcept EOFError:\n    print('second EOF', flush=True)\n'done'";
    let resp = http
        .post(format!("{base}/v1/sessions/{id}/execute"))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: input") {
        let chunk = guard(body.next()).await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    while let Some(chunk) = guard(body.next()).await {
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let first = seen.find("first EOF").unwrap_or_else(|| panic!("{seen}"));
    let second = seen.find("second EOF").unwrap_or_else(|| panic!("{seen}"));
    assert!(first < second, "{seen}");
    assert!(seen.contains("event: result"), "{seen}");
    assert!(!seen.contains("ServerShutdown"), "{seen}");
    assert!(
        !seen.contains("again? "),
        "the second input() was asked of no one: {seen}"
    );
    let status = guard(tokio::task::spawn_blocking(move || child.wait()))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "waited out the grace: {:?}",
        t0.elapsed()
    );
}

/// Clients that start a stream of endless output and then stop reading (their sockets open,
/// their receive buffers full), one over SSE and one over a WebSocket, cannot hold shutdown:
/// after the shutdown grace (1 s) and the drain deadline (1 s) their connections are
/// dropped and the server exits 0, no worker left.
#[tokio::test]
async fn a_client_that_stops_reading_its_stream_cannot_hold_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(
        &cfg,
        "shutdown_grace_secs = 1.0\nshutdown_drain_secs = 1.0\n[pool]\nmin_idle = 1\n",
    )
    .unwrap();
    let (mut child, base) = spawn_server(&["--config", cfg.to_str().unwrap()]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let info = json_of(http.get(format!("{base}/v1/sessions/{id}"))).await;
    let pid = info["pid"].as_u64().unwrap() as u32;
    let pgid = pgid_of(pid);
    let ws_id = create_session_at(&http, &base).await;
    let info = json_of(http.get(format!("{base}/v1/sessions/{ws_id}"))).await;
    let ws_pid = info["pid"].as_u64().unwrap() as u32;
    let ws_pgid = pgid_of(ws_pid);

    let body = json!({"code": "while True: print('x' * 65536, flush=True)"}).to_string();
    let request = format!(
        "POST /v1/sessions/{id}/execute HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ALICE}\r\naccept: text/event-stream\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let addr = base.trim_start_matches("http://");
    let mut stream = guard(tokio::net::TcpStream::connect(addr)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    // The stream has started; from here on nothing is read (the output is endless, so the
    // socket buffers are full long before the shutdown grace is over).
    let mut head = [0u8; 64];
    let n = guard(stream.read(&mut head)).await.unwrap();
    assert!(
        std::str::from_utf8(&head[..n])
            .unwrap()
            .starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    let url = format!(
        "{}/v1/sessions/{ws_id}/ws",
        base.replace("http://", "ws://")
    );
    let mut ws_request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    ws_request
        .headers_mut()
        .insert("authorization", format!("Bearer {ALICE}").parse().unwrap());
    let (mut ws, _) = guard(tokio_tungstenite::connect_async(ws_request))
        .await
        .unwrap();
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "endless", "code": "while True: print('y' * 65536, flush=True)"}),
    )
    .await;
    // The first frame: it runs. Then nothing more is read.
    let first = ws_next(&mut ws).await;
    assert_eq!(first["type"], "output", "{first}");

    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = guard(tokio::task::spawn_blocking(move || child.wait()))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0));
    eprintln!("exited {took:?} after SIGTERM");
    // Grace 1 s + drain 1 s, and the sessions' own shutdown.
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(
        wait_pid_exit(pid, Duration::from_secs(1)).await,
        "worker {pid} left behind"
    );
    assert!(!group_alive(pgid));
    assert!(
        wait_pid_exit(ws_pid, Duration::from_secs(1)).await,
        "worker {ws_pid} left behind"
    );
    assert!(!group_alive(ws_pgid));
    drop((stream, ws));
}

/// Every task the server spawned is done once `shutdown` returns: a client that left during
/// an execution starts a reconnect-grace wait (30 s), which must end with the service, not
/// outlive it.
#[tokio::test]
async fn no_task_of_the_server_outlives_its_shutdown() {
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut config = config(vec![tenant("alice", ALICE)]);
    config.reconnect_grace_secs = 30.0;
    config.shutdown_grace_secs = 0.2;
    let api = Api::start(config).await;
    let id = api.new_session(ALICE).await;
    // An SSE stream of a long execution, left after its first event: the execution waits
    // for its client through the reconnect grace.
    let resp = guard(
        api.http
            .post(api.url(&format!("/v1/sessions/{id}/execute")))
            .bearer_auth(ALICE)
            .header("accept", "text/event-stream")
            .json(&json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(30)"}))
            .send(),
    )
    .await
    .unwrap();
    let mut body = resp.bytes_stream();
    let first = guard(body.next()).await;
    assert!(first.is_some());
    drop(body);
    let Api { handle, http, .. } = api;
    drop(http); // its pooled connection's task is the client's, not the server's
    handle.shutdown().await.unwrap();
    // Tasks that were aborted or finished are counted until the runtime has dropped them.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let after = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(after, before, "tasks still alive after shutdown");
}

/// The same for a WebSocket: its connection task (axum spawns it), its writer and a cancel's
/// reply task are all done once `shutdown` returns. The client has an execution running
/// (it ignores SIGINT) and a cancel of it under way (its grace is long), then sends messages
/// whose error replies echo a large `id` and reads nothing: the socket's buffers fill and the
/// writer is stuck in a send. Without the server waiting for them, these tasks lived on for
/// up to 2 x the pong timeout (here 2 x 30 s).
#[tokio::test]
async fn no_websocket_task_outlives_the_servers_shutdown() {
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut alice = tenant("alice", ALICE);
    alice.burst = 1000;
    let mut config = config(vec![alice]);
    config.shutdown_grace_secs = 0.2;
    config.shutdown_drain_secs = 0.5;
    config.ws_pong_timeout_secs = 30.0;
    config.ws_ping_interval_secs = 30.0;
    let api = Api::start(config).await;
    let id = api.new_session(ALICE).await;
    let mut ws = ws_with_small_receive_buffer(&api, &id).await;
    // Quiet after its first line: no output piles up behind the stuck writer.
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "spin", "code": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('go', flush=True)\nwhile True: pass"}),
    )
    .await;
    let first = ws_next(&mut ws).await;
    assert_eq!(first["data"], "go\n", "{first}");
    ws_send(
        &mut ws,
        json!({"type": "cancel", "id": "c1", "execution_id": "spin", "grace_timeout_ms": 60_000}),
    )
    .await;
    // 100 error replies of 256 KiB each (25 MiB, far more than the sockets' buffers hold:
    // the client's is small and fixed), none of them read.
    let big_id = "i".repeat(256 * 1024);
    for _ in 0..100 {
        ws_send(&mut ws, json!({"type": "no_such_type", "id": big_id})).await;
    }
    let Api { handle, http, .. } = api;
    drop(http);
    handle.shutdown().await.unwrap();
    // Counted while the client still holds its socket open (it has no task of its own):
    // no task of the server may wait for it.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let after = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(after, before, "WebSocket tasks still alive after shutdown");
    drop(ws);
}

/// A WebSocket to session `id` whose socket has a small fixed receive buffer (so that a
/// client that does not read fills it and the server's send buffer soon: the kernel's
/// autotuning could otherwise grow it to tens of MiB).
async fn ws_with_small_receive_buffer(api: &Api, id: &str) -> WsStream {
    let addr = api.handle.local_addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = guard(socket.connect(addr)).await.unwrap();
    let url = format!("ws://{addr}/v1/sessions/{id}/ws");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {ALICE}").parse().unwrap());
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    guard(tokio_tungstenite::client_async(request, stream))
        .await
        .unwrap()
        .0
}
