//! Transactions over the API: `transaction_policy` on HTTP and WebSocket executions (in the
//! default sandbox of `serve`), the terminal event's `transaction`, and clear refusals.

mod common;

use common::server::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn http_executions_roll_back_and_say_so_even_when_the_worker_dies() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    api.execute(ALICE, &id, json!({"code": "rows = [1, 2, 3]\nimport os"}))
        .await;
    let failed = api
        .execute(
            ALICE,
            &id,
            json!({"code": "rows.append(4)\nrows[0] = 0\nnew = 1\n1/0",
                   "transaction_policy": "rollback_on_failure"}),
        )
        .await;
    let error = &failed["error"];
    assert_eq!(error["exception_type"], "ZeroDivisionError", "{failed}");
    assert_eq!(error["transaction"]["outcome"], "rolled_back", "{failed}");
    assert!(
        error["transaction"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("not undone")),
        "{failed}"
    );
    let state = api
        .execute(ALICE, &id, json!({"code": "(rows, 'new' in globals())"}))
        .await;
    assert_eq!(state["result"]["repr"], "([1, 2, 3], False)", "{state}");
    assert!(
        state["result"].get("transaction").is_none(),
        "no transaction by default: {state}"
    );

    // A worker that dies (here by its own SIGKILL) comes back as it was, with a new pid.
    let pid_before = api.get(&format!("/v1/sessions/{id}"), ALICE).await.1["pid"].clone();
    let killed = api
        .execute(
            ALICE,
            &id,
            json!({"code": "rows.clear()\nos.kill(os.getpid(), 9)",
                   "transaction_policy": "rollback_always"}),
        )
        .await;
    assert_eq!(
        killed["error"]["exception_type"], "ExecutionKilled",
        "{killed}"
    );
    assert!(killed["error"]["exception_message"]
        .as_str()
        .is_some_and(|m| m.contains("SIGKILL")));
    let state = api.execute(ALICE, &id, json!({"code": "rows"})).await;
    assert_eq!(state["result"]["repr"], "[1, 2, 3]", "{state}");
    let (_, info) = api.get(&format!("/v1/sessions/{id}"), ALICE).await;
    assert_ne!(info["pid"], pid_before, "{info}");
    assert_eq!(info["state"], "idle", "{info}");

    // A committed transaction says so.
    let kept = api
        .execute(
            ALICE,
            &id,
            json!({"code": "rows.append(9)\nlen(rows)", "transaction_policy": "rollback_on_failure"}),
        )
        .await;
    assert_eq!(kept["result"]["repr"], "4", "{kept}");
    assert_eq!(
        kept["result"]["transaction"]["outcome"], "committed",
        "{kept}"
    );
    assert!(kept["result"]["transaction"].get("note").is_none());

    // An unknown policy is refused with the field named.
    let (status, body) = api
        .post(
            &format!("/v1/sessions/{id}/execute"),
            ALICE,
            json!({"code": "1", "transaction_policy": "sometimes"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("transaction_policy"), "{body}");
}

#[tokio::test]
async fn websocket_executions_take_a_transaction_policy() {
    let api = Api::start(config(vec![tenant("alice", ALICE)])).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "setup", "code": "x = 1"}),
    )
    .await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "tx", "code": "x = 2\nraise ValueError('no')",
               "transaction_policy": "rollback_on_failure"}),
    )
    .await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "read", "code": "x"}),
    )
    .await;
    let mut terminals = Vec::new();
    while terminals.len() < 3 {
        let msg = ws_next(&mut ws).await;
        if is_terminal(&msg) {
            terminals.push(msg);
        }
    }
    assert_eq!(
        terminals[1]["exception_type"], "ValueError",
        "{terminals:?}"
    );
    assert_eq!(terminals[1]["transaction"]["outcome"], "rolled_back");
    assert_eq!(terminals[2]["repr"], "1", "{terminals:?}");
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "bad", "code": "1", "transaction_policy": 3}),
    )
    .await;
    let refused = ws_next(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(
        refused.to_string().contains("transaction_policy"),
        "{refused}"
    );
}
