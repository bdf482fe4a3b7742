//! `pyrepl3 serve` with real clients (reqwest, tokio-tungstenite) against a server on an
//! ephemeral loopback port: every endpoint, auth and tenant isolation, limits, SSE, the
//! WebSocket (input, cancel, queued executions, a slow reader, reconnect), idle culling,
//! /metrics, and SIGTERM with busy sessions.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{group_alive, guard, rss_bytes, wait_pid_exit};
use futures::{SinkExt, StreamExt};
use pyrepl3::server::{self, ServerConfig, ServerHandle, TenantConfig};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const ALICE: &str = "alice-token-0001";
const BOB: &str = "bob-token-000002";

fn tenant(name: &str, token: &str) -> TenantConfig {
    TenantConfig {
        name: name.into(),
        token: token.into(),
        ..TenantConfig::default()
    }
}

fn config(tenants: Vec<TenantConfig>) -> ServerConfig {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tenants,
        max_code_bytes: 10_000,
        ..ServerConfig::default()
    };
    config.pool.min_idle = 1;
    config.pool.max_sessions = 8;
    config
}

struct Api {
    handle: ServerHandle,
    http: Client,
    base: String,
}

impl Api {
    async fn start(config: ServerConfig) -> Api {
        let handle = guard(server::start(config)).await.expect("server starts");
        let base = format!("http://{}", handle.local_addr());
        Api {
            handle,
            http: Client::new(),
            base,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = guard(req.send()).await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn new_session(&self, token: &str) -> String {
        let (status, body) = self.post("/v1/sessions", token, json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    async fn execute(&self, token: &str, id: &str, body: Value) -> Value {
        let (status, body) = self
            .post(&format!("/v1/sessions/{id}/execute"), token, body)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn ws(&self, token: &str, id: &str, query: &str) -> WsStream {
        let url = format!(
            "ws://{}/v1/sessions/{id}/ws{query}",
            self.handle.local_addr()
        );
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        guard(tokio_tungstenite::connect_async(request))
            .await
            .unwrap()
            .0
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_send(ws: &mut WsStream, msg: Value) {
    ws.send(WsMessage::Text(msg.to_string().into()))
        .await
        .unwrap();
}

async fn ws_next(ws: &mut WsStream) -> Value {
    guard(async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("websocket ended: {other:?}"),
            }
        }
    })
    .await
}

/// Reads a resumed execution to its end: each event must follow the one before (starting
/// after `last_seq`) with no gap and no repeat; output data goes to `on_data`. Returns the
/// terminal message.
async fn read_resumed(
    ws: &mut WsStream,
    mut last_seq: u64,
    mut on_data: impl FnMut(&str),
) -> Value {
    guard(async {
        loop {
            let msg = ws_next(ws).await;
            assert_eq!(
                msg["seq"].as_u64().unwrap(),
                last_seq + 1,
                "no gap, no repeat"
            );
            last_seq += 1;
            if is_terminal(&msg) {
                return msg;
            }
            on_data(msg["data"].as_str().unwrap());
        }
    })
    .await
}

fn is_terminal(msg: &Value) -> bool {
    matches!(msg["type"].as_str(), Some("result" | "error"))
}

#[tokio::test]
async fn auth_and_tenant_isolation() {
    let api = Api::start(config(vec![tenant("alice", ALICE), tenant("bob", BOB)])).await;
    let resp = api.http.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "healthz needs no token");
    let resp = api.http.get(api.url("/v1/sessions")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = api.get("/v1/sessions", "wrong-token-123").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let id = api.new_session(ALICE).await;
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/sessions/{id}")),
        (reqwest::Method::DELETE, format!("/v1/sessions/{id}")),
        (reqwest::Method::POST, format!("/v1/sessions/{id}/restart")),
    ] {
        let (status, body) = api.call(method, &path, BOB, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = api
        .post(
            &format!("/v1/sessions/{id}/execute"),
            BOB,
            json!({"code": "1"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, bobs) = api.get("/v1/sessions", BOB).await;
    assert_eq!(bobs["sessions"].as_array().unwrap().len(), 0);
    let (_, alices) = api.get("/v1/sessions", ALICE).await;
    assert_eq!(alices["sessions"][0]["id"], id.as_str());
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_endpoint_and_clear_errors_for_client_mistakes() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let (status, info) = api.get(&format!("/v1/sessions/{id}"), ALICE).await;
    assert_eq!(status, StatusCode::OK);
    assert!(info["pid"].as_u64().is_some(), "{info}");

    let out = api
        .execute(ALICE, &id, json!({"code": "print('hi')\na = input('first? ')\nb = input()\ntry:\n    input()\nexcept EOFError:\n    print('eof')\na + b", "stdin": ["x", "y"]}))
        .await;
    assert_eq!(
        out["outputs"],
        json!([{"stream": "stdout", "data": "hi\n"}, {"stream": "stdout", "data": "eof\n"}])
    );
    assert_eq!(out["result"]["repr"], "'xy'");
    assert_eq!(out["error"], Value::Null);
    let out = api.execute(ALICE, &id, json!({"code": "1/0"})).await;
    assert_eq!(out["error"]["exception_type"], "ZeroDivisionError");
    assert_eq!(out["result"], Value::Null);
    let out = api
        .execute(
            ALICE,
            &id,
            json!({"code": "import time\ntime.sleep(10)", "timeout": 0.3}),
        )
        .await;
    assert_eq!(out["error"]["exception_type"], "ExecutionTimeout");

    let (status, _) = api
        .post(&format!("/v1/sessions/{id}/restart"), ALICE, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let out = api.execute(ALICE, &id, json!({"code": "a"})).await;
    assert_eq!(
        out["error"]["exception_type"], "NameError",
        "restart cleared the namespace"
    );

    let (status, pool) = api.get("/v1/pool", ALICE).await;
    assert_eq!(status, StatusCode::OK);
    assert!(pool["metrics"]["acquisitions"].as_u64().unwrap() >= 1);
    let resp = api.http.get(api.url("/openapi.json")).send().await.unwrap();
    let openapi: Value = resp.json().await.unwrap();
    assert!(
        openapi["paths"]["/v1/sessions/{id}/execute"].is_object(),
        "{openapi}"
    );

    // Client mistakes: the right status and a clear message, never a 500.
    let resp = api
        .http
        .post(api.url(&format!("/v1/sessions/{id}/execute")))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = api
        .post(
            &format!("/v1/sessions/{id}/execute"),
            ALICE,
            json!({"code": "x = 1\n".repeat(2000)}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, _) = api
        .post("/v1/sessions/nope/execute", ALICE, json!({"code": "1"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(reqwest::Method::PUT, "/v1/sessions", ALICE, None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = api.get("/v1/no/such/route", ALICE).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Rejections written by the framework itself come in the same JSON shape.
    for path in [
        format!("/v1/sessions/{id}/executions/x?since=abc"),
        format!("/v1/sessions/{id}/ws"),
    ] {
        let (status, body) = api.get(&path, ALICE).await;
        assert!(status.is_client_error(), "{path}: {status}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{path}: {body}"
        );
    }
    let (status, body) = api
        .post(
            &format!("/v1/sessions/{id}/input"),
            ALICE,
            json!({"input_id": "nope", "data": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .post(
            &format!("/v1/sessions/{id}/cancel"),
            ALICE,
            json!({"execution_id": "nope"}),
        )
        .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("not_running"))
    );

    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/sessions/{id}"),
            ALICE,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.get(&format!("/v1/sessions/{id}"), ALICE).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn session_and_rate_limits_answer_429() {
    let limited = TenantConfig {
        max_sessions: 1,
        rate_per_second: 1.0,
        burst: 3,
        ..tenant("alice", ALICE)
    };
    let api = Api::start(config(vec![limited])).await;
    api.new_session(ALICE).await; // 1 of 3
    let (status, body) = api.post("/v1/sessions", ALICE, json!({})).await; // 2 of 3
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "session_limit");
    api.get("/v1/sessions", ALICE).await; // 3 of 3
    let resp = api
        .http
        .get(api.url("/v1/sessions"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    api.handle.shutdown().await.unwrap();
}

/// Reads a server-sent-event body into its `data:` payloads.
async fn sse_events(resp: reqwest::Response) -> Vec<Value> {
    let text = guard(resp.text()).await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn execute_as_server_sent_events_streams_in_order() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let resp = api.http.post(api.url(&format!("/v1/sessions/{id}/execute")))
        .bearer_auth(ALICE).header("accept", "text/event-stream")
        .json(&json!({"code": "import sys, time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.01)\nprint('err', file=sys.stderr)\nx = input('q? ')\nx", "stdin": ["answer"]}))
        .send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(resp).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let stdout: String = events
        .iter()
        .filter(|e| e["stream"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "0\n1\n2\n3\n4\n");
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "input").count(), 1);
    assert_eq!(kinds.last(), Some(&"result"));
    assert_eq!(events.last().unwrap()["repr"], "'answer'");
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn input_and_cancel_over_http_while_streaming() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let resp = api.http.post(api.url(&format!("/v1/sessions/{id}/execute")))
        .bearer_auth(ALICE).header("accept", "text/event-stream")
        .json(&json!({"code": "name = input('name? ')\nprint('hello', name, flush=True)\nwhile True: pass"}))
        .send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut buffer = String::new();
    let mut execution_id = String::new();
    let mut sent_input = false;
    let mut cancelled = false;
    let end = guard(async {
        while let Some(chunk) = body.next().await {
            buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            while let Some(pos) = buffer.find("\n\n") {
                let block: String = buffer.drain(..pos + 2).collect();
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let event: Value = serde_json::from_str(data).unwrap();
                execution_id = event["execution_id"].as_str().unwrap().to_string();
                match event["type"].as_str().unwrap() {
                    "input" if !sent_input => {
                        sent_input = true;
                        let (status, _) = api
                            .post(
                                &format!("/v1/sessions/{id}/input"),
                                ALICE,
                                json!({"input_id": event["id"], "data": "web"}),
                            )
                            .await;
                        assert_eq!(status, StatusCode::NO_CONTENT);
                    }
                    "output" if !cancelled => {
                        assert_eq!(event["data"], "hello web\n");
                        cancelled = true;
                        let (status, body) = api
                            .post(
                                &format!("/v1/sessions/{id}/cancel"),
                                ALICE,
                                json!({"execution_id": execution_id, "grace_timeout_ms": 2000}),
                            )
                            .await;
                        assert_eq!(
                            (status, body["outcome"].as_str()),
                            (StatusCode::OK, Some("cancelled"))
                        );
                    }
                    "error" => return event,
                    other => panic!("unexpected {other}: {event}"),
                }
            }
        }
        panic!("stream ended without an error event")
    })
    .await;
    assert_eq!(end["exception_type"], "KeyboardInterrupt");
    // The finished execution can be read back.
    let (status, log) = api
        .get(
            &format!("/v1/sessions/{id}/executions/{execution_id}"),
            ALICE,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(log["done"], true);
    api.handle.shutdown().await.unwrap();
}

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
    ws_send(&mut ws, json!({"type": "no_such_type"})).await;
    assert_eq!(ws_next(&mut ws).await["exception_type"], "BadRequest");
    api.handle.shutdown().await.unwrap();
}

/// `pyrepl3 serve` as its own process (so its memory can be measured alone); returns the
/// child and the base URL it printed.
fn spawn_server(extra: &[&str]) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
        .args(["serve", "--listen", "127.0.0.1:0", "--token", ALICE])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    (child, base)
}

#[tokio::test]
async fn a_slow_websocket_reader_gets_every_byte_with_bounded_server_memory() {
    let (mut server, base) = spawn_server(&["--min-idle", "1"]);
    let server_rss = || rss_bytes(server.id());
    let http = Client::new();
    let session: Value = http
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(ALICE)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["id"].as_str().unwrap();
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
    // 50 MB in lines of 1000 bytes.
    ws_send(&mut ws, json!({"type": "execute", "id": "flood", "code": "import sys\nline = 'x' * 999 + '\\n'\nfor _ in range(50_000):\n    sys.stdout.write(line)"})).await;
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
    assert_eq!(bytes, 50_000_000, "every byte arrives");
    let growth = peak.saturating_sub(baseline);
    eprintln!("server RSS for 50 MB through a stalled reader: baseline {baseline}, peak {peak}");
    assert!(
        growth < 40_000_000,
        "server memory grew {growth} bytes for 50 MB of output"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert_eq!(
        guard(tokio::task::spawn_blocking(move || server.wait()))
            .await
            .unwrap()
            .unwrap()
            .code(),
        Some(0)
    );
}

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

#[tokio::test]
async fn idle_sessions_are_culled_at_their_deadline_but_never_while_busy() {
    let quick = TenantConfig {
        idle_timeout_secs: 1.0,
        ..tenant("alice", ALICE)
    };
    let api = Api::start(config(vec![quick])).await;
    let idle = api.new_session(ALICE).await;
    let busy = api.new_session(ALICE).await;
    // The busy one runs longer than the idle timeout.
    let long = api.execute(
        ALICE,
        &busy,
        json!({"code": "import time\ntime.sleep(1.6)\n'long'"}),
    );
    let check = async {
        let t0 = Instant::now();
        api.execute(ALICE, &idle, json!({"code": "1"})).await;
        // Timing is what is tested here: just before and just after the deadline.
        tokio::time::sleep(Duration::from_millis(700).saturating_sub(t0.elapsed())).await;
        assert_eq!(
            api.get(&format!("/v1/sessions/{idle}"), ALICE).await.0,
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            api.get(&format!("/v1/sessions/{idle}"), ALICE).await.0,
            StatusCode::NOT_FOUND
        );
    };
    let (out, ()) = tokio::join!(long, check);
    assert_eq!(
        out["result"]["repr"], "'long'",
        "a long cell is never culled the moment it ends"
    );
    assert_eq!(
        api.get(&format!("/v1/sessions/{busy}"), ALICE).await.0,
        StatusCode::OK
    );
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    api.execute(ALICE, &id, json!({"code": "1/0"})).await;
    api.execute(ALICE, &id, json!({"code": "1"})).await;
    let resp = api
        .http
        .get(api.url("/metrics"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            assert!(matches!(parts.next(), Some("HELP" | "TYPE")), "{line}");
            assert!(
                parts.next().is_some_and(|n| n.starts_with("pyrepl3_")),
                "{line}"
            );
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = name_labels.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = name_labels.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        samples.insert(name_labels.to_string(), value);
    }
    assert_eq!(samples["pyrepl3_executions_total"], 2.0);
    assert_eq!(
        samples["pyrepl3_execution_errors_total{type=\"ZeroDivisionError\"}"],
        1.0
    );
    assert_eq!(samples["pyrepl3_execution_duration_seconds_count"], 2.0);
    assert_eq!(samples["pyrepl3_sessions"], 1.0);
    assert!(samples.contains_key("pyrepl3_pool_idle"));
    assert!(samples.contains_key("pyrepl3_pool_warmup_iterations_total"));
    assert!(samples["pyrepl3_ratelimit_acquires_total{tenant=\"alice\"}"] >= 4.0);
    api.handle.shutdown().await.unwrap();
}

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
        let session: Value = http
            .post(format!("{base}/v1/sessions"))
            .bearer_auth(ALICE)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["id"].as_str().unwrap().to_string();
        let info: Value = http
            .get(format!("{base}/v1/sessions/{id}"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pids.push(info["pid"].as_u64().unwrap() as u32);
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
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    for pid in pids {
        assert!(
            wait_pid_exit(pid, Duration::from_secs(1)).await,
            "worker {pid} left behind"
        );
        assert!(!group_alive(pid));
    }
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
async fn concurrent_creates_cannot_exceed_a_tenants_session_limit() {
    // Regression: the limit was checked before waiting for the pool and the session added
    // after, so five concurrent creates with max_sessions = 1 all succeeded.
    let one = TenantConfig {
        max_sessions: 1,
        ..tenant("alice", ALICE)
    };
    let api = Api::start(config(vec![one])).await;
    let creates = (0..5).map(|_| api.post("/v1/sessions", ALICE, json!({})));
    let statuses: Vec<StatusCode> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        4
    );
    // A bad WebSocket message is answered with the id it carried.
    let (_, list) = api.get("/v1/sessions", ALICE).await;
    let id = list["sessions"][0]["id"].as_str().unwrap().to_string();
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "bad", "code": "1", "timeout": 1e30}),
    )
    .await;
    let reply = ws_next(&mut ws).await;
    assert_eq!(
        (
            reply["exception_type"].as_str(),
            reply["in_reply_to"].as_str()
        ),
        (Some("BadRequest"), Some("bad"))
    );
    let (status, _) = api
        .post(
            &format!("/v1/sessions/{id}/execute"),
            ALICE,
            json!({"code": "1", "timeout": 1e30}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "absurd timeouts are refused, not a crash"
    );
    api.handle.shutdown().await.unwrap();
}
