//! `pyrepl3 serve` for the server tests: in process on an ephemeral loopback port with a
//! reqwest client (`Api`), or as its own process (`spawn_server`), and WebSocket helpers.

use std::process::{Command, Stdio};

use futures::{SinkExt, StreamExt};
use pyrepl3::server::{self, ServerConfig, ServerHandle, TenantConfig};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{guard, Watched, GUARD};

pub const ALICE: &str = "alice-token-0001";
pub const BOB: &str = "bob-token-000002";

pub fn tenant(name: &str, token: &str) -> TenantConfig {
    TenantConfig {
        name: name.into(),
        token: token.into(),
        ..TenantConfig::default()
    }
}

pub fn config(tenants: Vec<TenantConfig>) -> ServerConfig {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tenants,
        max_code_bytes: 10_000,
        ..ServerConfig::default()
    };
    config.pool.min_idle = 1;
    config.pool.max_sessions = 8;
    // Each server a store of its own (a file's store takes one server at a time).
    config.store = Some(":memory:".into());
    config
}

pub struct Api {
    pub handle: ServerHandle,
    pub http: Client,
    pub base: String,
}

impl Api {
    pub async fn start(config: ServerConfig) -> Api {
        let handle = guard(server::start(config)).await.expect("server starts");
        let base = format!("http://{}", handle.local_addr());
        Api {
            handle,
            http: Client::new(),
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn call(
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

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub async fn new_session(&self, token: &str) -> String {
        let (status, body) = self.post("/v1/sessions", token, json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn execute(&self, token: &str, id: &str, body: Value) -> Value {
        let (status, body) = self
            .post(&format!("/v1/sessions/{id}/execute"), token, body)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn ws(&self, token: &str, id: &str, query: &str) -> WsStream {
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

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws_send(ws: &mut WsStream, msg: Value) {
    ws.send(WsMessage::Text(msg.to_string().into()))
        .await
        .unwrap();
}

pub async fn ws_next(ws: &mut WsStream) -> Value {
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
pub async fn read_resumed(
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

pub fn is_terminal(msg: &Value) -> bool {
    matches!(msg["type"].as_str(), Some("result" | "error"))
}

/// Reads a server-sent-event body into its `data:` payloads.
pub async fn sse_events(resp: reqwest::Response) -> Vec<Value> {
    let text = guard(resp.text()).await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// `pyrepl3 serve` as its own process (so its memory can be measured alone, and it can be
/// sent signals); returns the child and the base URL it printed.
pub fn spawn_server(extra: &[&str]) -> (Watched, String) {
    spawn_server_with(extra, |_| {})
}

/// [`spawn_server`] with the command adjusted by `configure` before it starts (environment,
/// stderr piped to be read, resource limits...).
pub fn spawn_server_with(
    extra: &[&str],
    configure: impl FnOnce(&mut Command),
) -> (Watched, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pyrepl3"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--token", ALICE])
        .args(extra)
        // Each server a store of its own, unless the test names one.
        .args(if extra.contains(&"--store") {
            &[][..]
        } else {
            &["--store", ":memory:"][..]
        })
        .stdout(Stdio::piped())
        .stderr(
            if std::env::var_os("PYREPL3_TEST_SERVER_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            },
        );
    configure(&mut command);
    let mut child = Watched::spawn(&mut command, GUARD);
    let line = child.read_line();
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    (child, base)
}

/// [`spawn_server`] with extra environment variables.
pub fn spawn_server_env(extra: &[&str], env: &[(&str, &std::path::Path)]) -> (Watched, String) {
    spawn_server_with(extra, |command| {
        command.envs(env.iter().map(|(k, v)| (k, v)));
    })
}

/// A session created on a server process from [`spawn_server`], as ALICE; its id.
pub async fn create_session_at(http: &Client, base: &str) -> String {
    let session = json_of(http.post(format!("{base}/v1/sessions")).json(&json!({}))).await;
    session["id"].as_str().unwrap().to_string()
}

/// The JSON answer of a request to a server process, sent as ALICE.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// [`spawn_server`] with a config file holding `toml` (the directory is removed when the
/// returned guard drops, so keep it alive as long as the server).
pub fn spawn_server_with_config(
    toml: &str,
    extra: &[&str],
) -> (Watched, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.toml");
    std::fs::write(&path, toml).unwrap();
    let mut args = vec!["--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (child, base) = spawn_server(&args);
    (child, base, dir)
}

/// A WebSocket to session `id` of a server process from [`spawn_server`], as ALICE.
pub async fn ws_at(base: &str, id: &str, query: &str) -> WsStream {
    let url = format!(
        "{}/v1/sessions/{id}/ws{query}",
        base.replace("http://", "ws://")
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {ALICE}").parse().unwrap());
    guard(tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .0
}

/// Sends SIGTERM to a server process and checks that it exits 0.
pub async fn stop_server(mut server: Watched) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = guard(tokio::task::spawn_blocking(move || server.wait()))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "the server exits 0");
}
