//! What a browser needs of the server: CORS for the listed origins (preflights answered), and
//! WebSocket tickets, since a browser cannot send `Authorization` on a WebSocket.

mod common;

use common::server::{self, is_terminal, Api, ALICE, BOB};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const APP: &str = "https://app.example";

async fn browser_server(origins: &[&str]) -> Api {
    let mut config = server::config(vec![
        server::tenant("alice", ALICE),
        server::tenant("bob", BOB),
    ]);
    config.cors_origins = origins.iter().map(|o| o.to_string()).collect();
    Api::start(config).await
}

async fn preflight(api: &Api, origin: &str) -> reqwest::Response {
    api.http
        .request(Method::OPTIONS, api.url("/v1/sessions"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

fn allowed_origin(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test]
async fn listed_origins_get_preflights_answered_and_cors_headers_others_do_not() {
    let api = browser_server(&[APP]).await;
    let resp = preflight(&api, APP).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(allowed_origin(&resp).as_deref(), Some(APP));
    let headers = resp
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );
    // Another origin: no CORS headers, so the browser keeps its page out.
    let resp = preflight(&api, "https://evil.example").await;
    assert_eq!(allowed_origin(&resp), None);
    // The real request from a listed origin carries the header, errors too.
    for token in [ALICE, "not-a-token"] {
        let resp = api
            .http
            .post(api.url("/v1/sessions"))
            .header("origin", APP)
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            allowed_origin(&resp).as_deref(),
            Some(APP),
            "{}",
            resp.status()
        );
    }
    // Without a list, nothing changes: no CORS headers, a preflight is not answered.
    let plain = browser_server(&[]).await;
    let resp = preflight(&plain, APP).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(allowed_origin(&resp), None);
}

async fn ws_with_ticket(
    api: &Api,
    id: &str,
    ticket: &str,
) -> Result<common::server::WsStream, (StatusCode, String)> {
    let url = format!(
        "ws://{}/v1/sessions/{id}/ws?ticket={ticket}",
        api.handle.local_addr()
    );
    match common::guard(tokio_tungstenite::connect_async(url)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            StatusCode::from_u16(resp.status().as_u16()).unwrap(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{e}"),
    }
}

async fn ticket(api: &Api, token: &str, id: &str) -> (StatusCode, Value) {
    api.post(&format!("/v1/sessions/{id}/ws-ticket"), token, json!({}))
        .await
}

#[tokio::test]
async fn a_websocket_ticket_opens_its_session_once() {
    let api = browser_server(&[APP]).await;
    let id = api.new_session(ALICE).await;
    let (status, body) = ticket(&api, ALICE, &id).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["expires_in"], 30.0);
    let secret = body["ticket"].as_str().unwrap().to_string();
    // No Authorization header: the ticket is the credential.
    let mut ws = ws_with_ticket(&api, &id, &secret)
        .await
        .expect("the ticket opens it");
    ws.send(WsMessage::Text(
        json!({"type": "execute", "code": "6 * 7"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let result = common::guard(async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    let msg: Value = serde_json::from_str(t.as_str()).unwrap();
                    if is_terminal(&msg) {
                        return msg;
                    }
                }
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!(result["repr"], "42", "{result}");
    // Spent: a second use is refused, as is a made-up one, with words about the ticket
    // (not about a bearer token the browser never sent).
    for refused in [&secret[..], "made-up"] {
        let (status, body) = ws_with_ticket(&api, &id, refused).await.err().unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("invalid WebSocket ticket"), "{body}");
        assert!(body.contains("\"unauthorized\""), "{body}");
    }
    // A ticket is for its session only; another tenant's session gets none.
    let other = api.new_session(ALICE).await;
    let (_, body) = ticket(&api, ALICE, &id).await;
    let secret = body["ticket"].as_str().unwrap().to_string();
    assert_eq!(
        ws_with_ticket(&api, &other, &secret)
            .await
            .err()
            .map(|e| e.0),
        Some(StatusCode::UNAUTHORIZED)
    );
    let (status, _) = ticket(&api, BOB, &id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = ticket(&api, "not-a-token", &id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
