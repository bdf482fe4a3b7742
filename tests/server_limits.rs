//! Per-tenant limits of the server: session count (also under concurrent creates), request
//! rate (429 with Retry-After), idle culling at the deadline but never of a busy session.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use pyrepl3::server::TenantConfig;
use reqwest::StatusCode;
use serde_json::json;

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
