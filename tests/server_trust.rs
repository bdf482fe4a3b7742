//! A tenant's code can write anything on its worker's protocol channels (docs/security.md):
//! forged frames for another tenant's execution, frames on the control channel, frames the
//! host must reject. None of it may reach another session or the server.

mod common;

use common::server::*;
use serde_json::json;

/// Writes frames on fd 3 (exec) and fd 4 (control) as the agent would, then a frame header
/// claiming 2 GiB: a protocol error that ends this worker.
const FORGER: &str = r#"
import json, os
def frame(msg):
    data = json.dumps(msg).encode()
    return len(data).to_bytes(4, 'big') + data
for fd in (3, 4):
    os.write(fd, frame({'type': 'result', 'id': 'f1', 'execution_id': 'bob-1', 'marked': False,
                        'value': None, 'repr': "'forged by alice'", 'execution_time': 0.0}))
    os.write(fd, frame({'type': 'input', 'id': 'f2', 'execution_id': 'bob-1', 'marked': False,
                        'prompt': 'password?', 'password': True, 'timeout': None}))
    os.write(fd, frame({'type': 'ready', 'id': 'f3', 'session_id': 'x', 'pid': 1,
                        'python_version': '0', 'capabilities': []}))
os.write(3, b'\x7f\xff\xff\xff' + b'x' * 64)
import time
time.sleep(30)
"#;

#[tokio::test]
async fn forged_and_malformed_frames_reach_neither_another_session_nor_the_server() {
    let api = Api::start(config(vec![tenant("alice", ALICE), tenant("bob", BOB)])).await;
    let alice = api.new_session(ALICE).await;
    let bob = api.new_session(BOB).await;
    let bob_path = format!("/v1/sessions/{bob}/execute");
    let bob_running = api.post(
        &bob_path,
        BOB,
        json!({"code": "import time\ntime.sleep(1)\n'bob ok'", "execution_id": "bob-1"}),
    );
    let alice_forging = api.execute(ALICE, &alice, json!({"code": FORGER}));
    let ((bob_status, bob_reply), alice_reply) = tokio::join!(bob_running, alice_forging);
    assert_eq!(bob_status, reqwest::StatusCode::OK, "{bob_reply}");
    assert_eq!(bob_reply["result"]["repr"], "'bob ok'", "{bob_reply}");
    assert_eq!(bob_reply["outputs"], json!([]), "{bob_reply}");
    // Alice's own worker broke the protocol: her execution ends with that error, at once.
    assert_eq!(
        alice_reply["error"]["exception_type"], "ProtocolError",
        "{alice_reply}"
    );
    // Bob's session and the server go on; Alice can start again.
    let again = api.execute(BOB, &bob, json!({"code": "6*7"})).await;
    assert_eq!(again["result"]["repr"], "42", "{again}");
    let fresh = api.new_session(ALICE).await;
    let ok = api.execute(ALICE, &fresh, json!({"code": "'fine'"})).await;
    assert_eq!(ok["result"]["repr"], "'fine'", "{ok}");
    api.handle.shutdown().await.unwrap();
}

/// A worker of `serve` gets none of the server's environment (a token given as
/// PYREPL3_TOKEN, any secret of the host): not in os.environ, not in /proc/self/environ,
/// which keeps what a process started with whatever it deletes later.
#[tokio::test]
async fn workers_of_serve_get_none_of_the_servers_environment() {
    let (server, base) = spawn_server_with(&["--min-idle", "1"], |command| {
        command
            .env("PYREPL3_TOKEN", ALICE)
            .env("HOST_SECRET_FOR_TEST", "s3cr3t-value");
    });
    let http = reqwest::Client::new();
    let id = create_session_at(&http, &base).await;
    let code = "import os, sys\nraw = open('/proc/self/environ', 'rb').read()\nlinks = []\n\
                for fd in os.listdir('/proc/self/fd'):\n    try:\n        \
                links.append(os.readlink(f'/proc/self/fd/{fd}'))\n    except OSError:\n        pass\n\
                (b's3cr3t' in raw, b'alice-token' in raw, sorted(os.environ), sys.path[0], \
                any('pyrepl3-agent' in link for link in links))";
    let answer = json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({"code": code})),
    )
    .await;
    assert_eq!(
        // PIP_PREFIX and PYTHONPATH: the session's package directory (docs/api.md).
        answer["result"]["repr"],
        "(False, False, ['HOME', 'LANG', 'PATH', 'PIP_PREFIX', 'PWD', 'PYTHONPATH'], '', False)",
        "{answer}"
    );
    drop(server);
}

/// A tenant's resource limits are set on the pooled worker it is handed, and shown in the
/// session's info.
#[tokio::test]
async fn a_tenants_limits_apply_to_the_sessions_it_gets_from_the_pool() {
    let mut limited = tenant("alice", ALICE);
    limited.memory_limit_bytes = 200 << 20;
    limited.open_files_limit = 64;
    let api = Api::start(config(vec![limited, tenant("bob", BOB)])).await;
    let alice = api.new_session(ALICE).await;
    let bob = api.new_session(BOB).await;
    let big = json!({"code": "len(bytearray(300 << 20))"});
    let refused = api.execute(ALICE, &alice, big.clone()).await;
    assert_eq!(
        refused["error"]["exception_type"], "MemoryError",
        "{refused}"
    );
    let allowed = api.execute(BOB, &bob, big).await;
    assert_eq!(allowed["result"]["repr"], "314572800", "{allowed}");
    let (_, info) = api.get(&format!("/v1/sessions/{alice}"), ALICE).await;
    assert_eq!(info["limits"]["memory_bytes"], 200 << 20, "{info}");
    assert_eq!(info["limits"]["open_files"], 64, "{info}");
    // How sessions are contained, said plainly (CI can write cgroups: root).
    assert!(
        info["containment"]
            .as_str()
            .is_some_and(|c| c.starts_with("sandbox (bubblewrap") && c.contains(", cgroup v")),
        "{info}"
    );
    let health: serde_json::Value = api
        .http
        .get(api.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["sandbox"]["mechanism"], "bubblewrap", "{health}");
    assert!(
        matches!(health["containment"]["cgroups"].as_str(), Some("v1" | "v2")),
        "{health}"
    );
    api.handle.shutdown().await.unwrap();
}
