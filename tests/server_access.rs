//! What `pyrepl3 serve` tells its operator: `--help` names each option's environment
//! variable and default, and the access log has a line per request (method, route template,
//! status, duration, tenant, request id; never the token).

mod common;

use std::process::{Command, Stdio};

use common::server::*;
use common::Watched;
use common::GUARD;
use pyrepl3::server::ServerConfig;
use reqwest::{Client, StatusCode};
use serde_json::json;

#[test]
fn serve_help_shows_each_options_environment_variable_and_default() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pyrepl3"));
    command
        .args(["serve", "--help"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Watched::spawn(&mut command, GUARD);
    assert!(child.finish().success());
    let help = child.stdout();
    let defaults = ServerConfig::default();
    for (flag, env, default) in [
        ("--listen", "PYREPL3_LISTEN", defaults.listen.to_string()),
        ("--config", "PYREPL3_CONFIG", "none".to_string()),
        (
            "--token",
            "PYREPL3_TOKEN",
            "from the config, else generated".into(),
        ),
        ("--python", "PYREPL3_PYTHON", "python3".into()),
        (
            "--min-idle",
            "PYREPL3_MIN_IDLE",
            defaults.pool.min_idle.to_string(),
        ),
        (
            "--max-sessions",
            "PYREPL3_MAX_SESSIONS",
            defaults.pool.max_sessions.to_string(),
        ),
        (
            "--max-connections",
            "PYREPL3_MAX_CONNECTIONS",
            defaults.max_connections.to_string(),
        ),
    ] {
        // The option's entry: from its flag to the next option's.
        let start = help
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("{flag} in:\n{help}"));
        let end = help[start + 2..]
            .find("\n  -")
            .map_or(help.len(), |i| start + 2 + i);
        let entry = &help[start..end];
        assert!(entry.contains(&format!("[env: {env}")), "{entry}");
        assert!(entry.contains(&format!("[default: {default}]")), "{entry}");
    }
}

#[tokio::test]
async fn the_access_log_has_a_line_per_request_with_its_id_and_never_the_token() {
    let (mut child, base) = spawn_server_with(&[], |command| {
        command.env("PYREPL3_LOG", "info").stderr(Stdio::piped());
    });
    let http = Client::new();

    let created = http
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(ALICE)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let generated_id = created.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!generated_id.is_empty());
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let executed = http
        .post(format!("{base}/v1/sessions/{id}/execute"))
        .bearer_auth(ALICE)
        .header("x-request-id", "client-chosen-42")
        .json(&json!({"code": "1+1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(executed.status(), StatusCode::OK);
    assert_eq!(executed.headers()["x-request-id"], "client-chosen-42");

    // An id that would pose as other fields is quoted in the log.
    let sneaky = http
        .get(format!("{base}/healthz"))
        .header("x-request-id", "x status=999")
        .send()
        .await
        .unwrap();
    assert_eq!(sneaky.headers()["x-request-id"], "x status=999");

    let refused = http
        .get(format!("{base}/v1/sessions"))
        .bearer_auth("not-a-valid-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let refused_id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.finish().success());
    let log = child.stderr();
    let line_with = |request_id: &str| {
        log.lines()
            .find(|l| l.contains(&format!("request_id={request_id}")) && l.contains("status="))
            .unwrap_or_else(|| panic!("no access line for {request_id} in:\n{log}"))
            .to_string()
    };

    let line = line_with(&generated_id);
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("method=POST"), "{line}");
    assert!(line.contains("route=/v1/sessions "), "{line}");
    assert!(line.contains("status=201"), "{line}");
    assert!(line.contains("tenant=\"default\""), "{line}");
    assert!(line.contains("duration_ms="), "{line}");

    let line = line_with("client-chosen-42");
    assert!(line.contains("method=POST"), "{line}");
    // The route template, not the path with the session id.
    assert!(line.contains("route=/v1/sessions/{id}/execute"), "{line}");
    assert!(!line.contains(&id), "{line}");
    assert!(line.contains("status=200"), "{line}");

    let line = line_with(&refused_id);
    assert!(line.contains("status=401"), "{line}");
    assert!(!line.contains("tenant="), "{line}");

    let line = line_with("\"x status=999\"");
    assert!(line.contains("route=/healthz"), "{line}");
    assert!(line.contains("status=200"), "{line}");

    assert!(!log.contains(ALICE), "the token is in the log:\n{log}");
    assert!(!log.contains("not-a-valid-token"), "{log}");
}
