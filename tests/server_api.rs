//! The HTTP API end to end against a server on an ephemeral loopback port: authentication
//! and tenant isolation, every endpoint with its errors for client mistakes, /metrics.

mod common;

use common::server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

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

/// A tenant's answers (outputs, files, tickets) are kept by no cache, the browser's included.
#[tokio::test]
async fn api_answers_are_not_stored_by_caches() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let put = api
        .http
        .put(api.url(&format!("/v1/sessions/{id}/files/a.txt")))
        .bearer_auth(ALICE)
        .body("secret")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    for path in [
        "/v1/sessions".to_string(),
        format!("/v1/sessions/{id}"),
        format!("/v1/sessions/{id}/files/a.txt"),
        format!("/v1/sessions/{id}/files"),
        format!("/v1/sessions/{id}/namespace"),
    ] {
        let resp = api
            .http
            .get(api.url(&path))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
    }
    let executed = api
        .http
        .post(api.url(&format!("/v1/sessions/{id}/execute")))
        .bearer_auth(ALICE)
        .json(&json!({"code": "1 + 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(executed.headers()["cache-control"], "no-store");
    let mcp = api
        .http
        .post(api.url("/mcp"))
        .bearer_auth(ALICE)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(mcp.status(), StatusCode::OK);
    assert_eq!(mcp.headers()["cache-control"], "no-store", "/mcp");
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
        // Consecutive output of one stream is one entry.
        json!([{"stream": "stdout", "data": "hi\neof\n"}])
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

/// User code chooses its exception names; one label per name would let a session create
/// unbounded series. Builtins keep their name, the rest count as `other`.
#[tokio::test]
async fn metrics_error_labels_are_bounded_whatever_names_user_code_raises() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let code = "exec(f'class E{n}(Exception): pass', globals())\nraise globals()[f'E{n}']()";
    for n in 0..40 {
        let body = json!({"code": code.replace("{n}", &n.to_string())});
        let reply = api.execute(ALICE, &id, body).await;
        assert_eq!(reply["error"]["exception_type"], format!("E{n}"), "{reply}");
    }
    api.execute(ALICE, &id, json!({"code": "1/0"})).await;
    let text = api
        .http
        .get(api.url("/metrics"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pyrepl3_execution_errors_total{"))
        .collect();
    assert_eq!(
        series,
        [
            "pyrepl3_execution_errors_total{type=\"ZeroDivisionError\"} 1",
            "pyrepl3_execution_errors_total{type=\"other\"} 40",
        ],
        "{text}"
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
