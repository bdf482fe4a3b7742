//! The checkpoint routes: a session's namespace saved into the durable store, listed, read,
//! downloaded and uploaded, restored (merged or replacing) into another session, refused
//! across tenants, over a tenant's limit, or when corrupt; kept across a server restart.

mod common;

use common::server::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_checkpoint_is_saved_listed_downloaded_uploaded_and_restored_for_its_tenant_only() {
    let api = Api::start(config(vec![tenant("alice", ALICE), tenant("bob", BOB)])).await;
    let id = api.new_session(ALICE).await;
    api.execute(
        ALICE,
        &id,
        json!({"code": "data = {'a': [1, 2]}\ndef double(x):\n    return 2 * x\nstream = (i for i in range(2))"}),
    )
    .await;
    let (status, record) = api
        .post(&format!("/v1/sessions/{id}/checkpoints"), ALICE, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{record}");
    assert_eq!(record["saved"], json!(["data", "double"]), "{record}");
    assert_eq!(record["skipped"][0]["name"], "stream", "{record}");
    assert!(record["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("generator"));
    assert_eq!(record["session_id"], id.as_str());
    let cid = record["id"].as_str().unwrap().to_string();

    let (_, listed) = api
        .get(&format!("/v1/sessions/{id}/checkpoints"), ALICE)
        .await;
    assert_eq!(listed["checkpoints"][0]["id"], cid.as_str(), "{listed}");
    let (status, read) = api.get(&format!("/v1/checkpoints/{cid}"), ALICE).await;
    assert_eq!((status, &read["size"]), (StatusCode::OK, &record["size"]));
    // Another tenant: not found, whatever the route.
    for path in [
        format!("/v1/checkpoints/{cid}"),
        format!("/v1/checkpoints/{cid}/data"),
    ] {
        let (status, _) = api.get(&path, BOB).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let bobs = api.new_session(BOB).await;
    let (status, _) = api
        .post(
            &format!("/v1/sessions/{bobs}/restore"),
            BOB,
            json!({"checkpoint_id": cid}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Restored into a fresh session, merged with what it has.
    let other = api.new_session(ALICE).await;
    api.execute(ALICE, &other, json!({"code": "mine = 1"}))
        .await;
    let (status, report) = api
        .post(
            &format!("/v1/sessions/{other}/restore"),
            ALICE,
            json!({"checkpoint_id": cid}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report,
        json!({"restored": ["double", "data"], "failed": []})
    );
    let answer = api
        .execute(ALICE, &other, json!({"code": "(data, double(21), mine)"}))
        .await;
    assert_eq!(
        answer["result"]["repr"], "({'a': [1, 2]}, 42, 1)",
        "{answer}"
    );

    // Downloaded as a file, uploaded again (as to another server), restored replacing.
    let file = api
        .http
        .get(api.url(&format!("/v1/checkpoints/{cid}/data")))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let uploaded: serde_json::Value = api
        .http
        .post(api.url("/v1/checkpoints"))
        .bearer_auth(ALICE)
        .header("content-type", "application/octet-stream")
        .body(file.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let copy = uploaded["id"].as_str().unwrap();
    assert_ne!(copy, cid);
    let (status, _) = api
        .post(
            &format!("/v1/sessions/{other}/restore"),
            ALICE,
            json!({"checkpoint_id": copy, "clear_existing": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer = api
        .execute(
            ALICE,
            &other,
            json!({"code": "('mine' in globals(), data)"}),
        )
        .await;
    assert_eq!(
        answer["result"]["repr"], "(False, {'a': [1, 2]})",
        "{answer}"
    );

    // A corrupt upload is stored, and refused when restored; the session is untouched.
    let junk: serde_json::Value = api
        .http
        .post(api.url("/v1/checkpoints"))
        .bearer_auth(ALICE)
        .body(b"\x00\x01 not a checkpoint".to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, refused) = api
        .post(
            &format!("/v1/sessions/{other}/restore"),
            ALICE,
            json!({"checkpoint_id": junk["id"], "clear_existing": true}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a pyrepl3 checkpoint"));
    let answer = api.execute(ALICE, &other, json!({"code": "data"})).await;
    assert_eq!(answer["result"]["repr"], "{'a': [1, 2]}");

    // Deleted: gone.
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/checkpoints/{cid}"),
            ALICE,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.get(&format!("/v1/checkpoints/{cid}"), ALICE).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tenant_over_its_checkpoint_limit_is_told() {
    let mut small = tenant("alice", ALICE);
    small.checkpoint_bytes_limit = 64;
    let api = Api::start(config(vec![small])).await;
    let id = api.new_session(ALICE).await;
    api.execute(ALICE, &id, json!({"code": "big = list(range(10000))"}))
        .await;
    let (status, body) = api
        .post(&format!("/v1/sessions/{id}/checkpoints"), ALICE, json!({}))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "checkpoint_limit", "{body}");
    api.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn checkpoints_outlive_the_server_in_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite3");
    let store = store.to_str().unwrap();
    let http = reqwest::Client::new();
    let cid = {
        let (mut server, base) = spawn_server(&["--min-idle", "0", "--store", store]);
        let id = create_session_at(&http, &base).await;
        json_of(
            http.post(format!("{base}/v1/sessions/{id}/execute"))
                .json(&json!({"code": "kept = 'across restarts'"})),
        )
        .await;
        let record = json_of(
            http.post(format!("{base}/v1/sessions/{id}/checkpoints"))
                .json(&json!({})),
        )
        .await;
        server.kill_and_wait(); // not even a graceful stop
        record["id"].as_str().unwrap().to_string()
    };
    let (server, base) = spawn_server(&["--min-idle", "0", "--store", store]);
    let id = create_session_at(&http, &base).await;
    let report = json_of(
        http.post(format!("{base}/v1/sessions/{id}/restore"))
            .json(&json!({"checkpoint_id": cid})),
    )
    .await;
    assert_eq!(report["restored"], json!(["kept"]), "{report}");
    let answer = json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({"code": "kept"})),
    )
    .await;
    assert_eq!(answer["result"]["repr"], "'across restarts'", "{answer}");
    drop(server);
}

#[tokio::test]
async fn a_session_can_start_from_a_checkpoint() {
    let api = Api::start(config(vec![tenant("alice", ALICE), tenant("bob", BOB)])).await;
    let id = api.new_session(ALICE).await;
    api.execute(ALICE, &id, json!({"code": "answer = 42"}))
        .await;
    let (_, record) = api
        .post(&format!("/v1/sessions/{id}/checkpoints"), ALICE, json!({}))
        .await;
    let cid = record["id"].as_str().unwrap();
    let (status, created) = api
        .post("/v1/sessions", ALICE, json!({"from_checkpoint": cid}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["restored"]["restored"],
        json!(["answer"]),
        "{created}"
    );
    let fresh = created["id"].as_str().unwrap();
    let answer = api.execute(ALICE, fresh, json!({"code": "answer"})).await;
    assert_eq!(answer["result"]["repr"], "42");
    // Not Bob's checkpoint; not a field of this route: clear errors, no session made.
    let (status, _) = api
        .post("/v1/sessions", BOB, json!({"from_checkpoint": cid}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api.post("/v1/sessions", ALICE, json!({"from": cid})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, listed) = api.get("/v1/sessions", BOB).await;
    assert_eq!(listed["sessions"], json!([]), "{listed}");
    api.handle.shutdown().await.unwrap();
}

/// The same over the WebSocket: `checkpoint`, `restore` and `list_checkpoints`, queued in
/// order with the connection's executions; refusals carry the API's error code.
#[tokio::test]
async fn checkpoints_over_the_websocket_are_queued_in_order_with_executions() {
    let api = Api::start(config(vec![tenant("alice", ALICE), tenant("bob", BOB)])).await;
    let id = api.new_session(ALICE).await;
    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "a", "code": "x = 1\ny = 'kept'"}),
    )
    .await;
    ws_send(&mut ws, json!({"type": "checkpoint", "id": "save"})).await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "b", "code": "x = 2\nz = 3"}),
    )
    .await;
    let mut saved = None;
    let mut terminals = 0;
    while saved.is_none() || terminals < 2 {
        let msg = ws_next(&mut ws).await;
        if msg["type"] == "checkpoint_reply" {
            assert_eq!(msg["in_reply_to"], "save", "{msg}");
            saved = Some(msg["checkpoint"].clone());
        } else if is_terminal(&msg) {
            terminals += 1;
        }
    }
    let saved = saved.unwrap();
    let cid = saved["id"].as_str().unwrap().to_string();
    let names: Vec<&str> = saved["saved"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(names.contains(&"x") && names.contains(&"y"), "{saved}");
    assert!(!names.contains(&"z"), "taken before `b` ran: {saved}");

    // Merge: x back to 1, z (made after the checkpoint) kept.
    ws_send(
        &mut ws,
        json!({"type": "restore", "id": "merge", "checkpoint_id": cid}),
    )
    .await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "c", "code": "(x, y, z)"}),
    )
    .await;
    let (mut report, mut state) = (None, None);
    while report.is_none() || state.is_none() {
        let msg = ws_next(&mut ws).await;
        if msg["type"] == "restore_reply" {
            report = Some(msg);
        } else if is_terminal(&msg) {
            state = Some(msg);
        }
    }
    assert_eq!(report.unwrap()["in_reply_to"], "merge");
    assert_eq!(state.unwrap()["repr"], "(1, 'kept', 3)");

    // Replace: z gone.
    ws_send(
        &mut ws,
        json!({"type": "restore", "id": "clear", "checkpoint_id": cid, "clear_existing": true}),
    )
    .await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "id": "d", "code": "'z' in globals()"}),
    )
    .await;
    let mut state = None;
    while state.is_none() {
        let msg = ws_next(&mut ws).await;
        if is_terminal(&msg) {
            state = Some(msg);
        }
    }
    assert_eq!(state.unwrap()["repr"], "False");

    ws_send(&mut ws, json!({"type": "list_checkpoints", "id": "list"})).await;
    let list = ws_next(&mut ws).await;
    assert_eq!(list["type"], "list_checkpoints_reply", "{list}");
    assert_eq!(list["checkpoints"][0]["id"], cid.as_str());

    // An unknown checkpoint, or another tenant's: refused with the API's code.
    ws_send(
        &mut ws,
        json!({"type": "restore", "id": "nope", "checkpoint_id": "ckpt-nope"}),
    )
    .await;
    let refused = ws_next(&mut ws).await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["code"].as_str(),
            refused["in_reply_to"].as_str()
        ),
        (Some("error"), Some("not_found"), Some("nope")),
        "{refused}"
    );
    let bobs = api.new_session(BOB).await;
    let mut bob_ws = api.ws(BOB, &bobs, "").await;
    ws_send(
        &mut bob_ws,
        json!({"type": "restore", "id": "steal", "checkpoint_id": cid}),
    )
    .await;
    let refused = ws_next(&mut bob_ws).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
}
