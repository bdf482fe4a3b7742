//! `execute` as server-sent events: events stream in order while the code runs, and input
//! and cancel arrive over plain HTTP meanwhile.

mod common;

use common::guard;
use common::server::*;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

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
