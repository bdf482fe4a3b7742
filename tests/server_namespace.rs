//! `GET /v1/sessions/{id}/namespace`: a session's user globals, for its own tenant only.

mod common;

use common::server::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_namespace_route_lists_a_sessions_globals_for_its_tenant_only() {
    let api = Api::start(config(vec![tenant("alice", ALICE), tenant("bob", BOB)])).await;
    let id = api.new_session(ALICE).await;
    api.execute(
        ALICE,
        &id,
        json!({"code": "rows = [1, 2, 3]\ndef total():\n    return sum(rows)\nimport math"}),
    )
    .await;
    let (status, body) = api
        .get(&format!("/v1/sessions/{id}/namespace"), ALICE)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    assert_eq!(
        body["entries"],
        json!([
            {"name": "math", "type": "module", "repr": body["entries"][0]["repr"],
             "size": body["entries"][0]["size"], "module": "math"},
            {"name": "rows", "type": "list", "repr": "[1, 2, 3]", "size": body["entries"][1]["size"]},
            {"name": "total", "type": "function", "repr": body["entries"][2]["repr"],
             "size": body["entries"][2]["size"], "source": "def total():\n    return sum(rows)\n"},
        ]),
        "{body}"
    );
    assert!(body["entries"][1]["size"].as_u64().is_some_and(|n| n > 50));
    assert!(body["entries"][0]["repr"]
        .as_str()
        .unwrap()
        .starts_with("<module 'math'"));
    // Another tenant's session does not exist for Bob.
    let (status, _) = api.get(&format!("/v1/sessions/{id}/namespace"), BOB).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.handle.shutdown().await.unwrap();
}

/// The pool's warm-up code runs in the namespace but not in the tenant's history: `In` does
/// not show the operator's code, and the tenant's first cell is number 1.
#[tokio::test]
async fn the_pools_warm_up_is_not_in_the_tenants_history() {
    let mut config = config(vec![tenant("alice", ALICE)]);
    config.pool.warmup_code = Some("WARM = 'operator'".into());
    let api = Api::start(config).await;
    let id = api.new_session(ALICE).await;
    let answer = api.execute(ALICE, &id, json!({"code": "(In, WARM)"})).await;
    assert_eq!(
        answer["result"]["repr"], "(['', '(In, WARM)'], 'operator')",
        "{answer}"
    );
    api.handle.shutdown().await.unwrap();
}
