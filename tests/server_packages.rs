//! Packages per session and the per-session environment, black-box over HTTP with real
//! workers and real pip (docs/api.md, "Per-session environment", "Packages per session"):
//! `!pip`, `%pip` and `subprocess` installs go into the session's own directory, are
//! importable at once and by no other session, survive a restart, are recorded in
//! checkpoints and go away with the session; `env` and `cwd` are the session's, kept across
//! a restart, and refused when they would break the service. Offline: the wheels are built
//! by the session's own code (a wheel is a zip), and pip is run with `--no-index`. Each test
//! runs with the sandbox (the servers' default) and without it.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Python that writes `NAME-VERSION-py3-none-any.whl` into the working directory: a package
/// `NAME` whose `VALUE` is `VERSION`, depending on `requires` (a distribution name or "").
fn wheel(name: &str, version: &str, requires: &str) -> String {
    let requires = if requires.is_empty() {
        String::new()
    } else {
        format!("Requires-Dist: {requires}\\n")
    };
    format!(
        r#"import base64, hashlib, zipfile
def _record(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return '%s,sha256=%s,%d' % (path, digest, len(data))
_files = {{'{name}/__init__.py': b"VALUE = '{version}'\n",
          '{name}-{version}.dist-info/METADATA': b'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}',
          '{name}-{version}.dist-info/WHEEL': b'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}}
_record_path = '{name}-{version}.dist-info/RECORD'
_files[_record_path] = ('\n'.join([_record(p, d) for p, d in _files.items()] + [_record_path + ',,']) + '\n').encode()
with zipfile.ZipFile('{name}-{version}-py3-none-any.whl', 'w') as _z:
    for _p, _d in _files.items():
        _z.writestr(_p, _d)
"#
    )
}

async fn server(sandbox: bool) -> Api {
    let mut config = config(vec![tenant("alice", ALICE)]);
    config.sandbox.enabled = sandbox;
    Api::start(config).await
}

/// Runs `code`; its answer, which must have no error.
async fn ok(api: &Api, id: &str, code: &str) -> Value {
    let out = api.execute(ALICE, id, json!({ "code": code })).await;
    assert!(out["error"].is_null(), "`{code}` failed: {out}");
    out
}

fn stdout(out: &Value) -> String {
    out["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["stream"] == "stdout")
        .map(|o| o["data"].as_str().unwrap())
        .collect()
}

async fn pip_installs_into_the_session_only(sandbox: bool) {
    let api = server(sandbox).await;
    let a = api.new_session(ALICE).await;
    let b = api.new_session(ALICE).await;
    let (_, info) = api.get(&format!("/v1/sessions/{a}"), ALICE).await;
    let dir = std::path::PathBuf::from(info["cwd"].as_str().unwrap());
    // pkga needs pip, which the interpreter has: satisfied, not installed again.
    for (name, version, requires) in [
        ("pkga", "1.0", "pip"),
        ("pkgb", "2.0", ""),
        ("pkgc", "3.0", ""),
    ] {
        ok(&api, &a, &wheel(name, version, requires)).await;
    }

    // `!pip` (the pip on PATH, in a shell): importable in the next execution.
    let out = ok(
        &api,
        &a,
        "!pip install --no-index --no-cache-dir ./pkga-1.0-py3-none-any.whl",
    )
    .await;
    assert!(
        stdout(&out).contains("Successfully installed pkga-1.0"),
        "{out}"
    );
    let out = ok(&api, &a, "import pkga\npkga.VALUE, pkga.__file__").await;
    let repr = out["result"]["repr"].as_str().unwrap();
    assert!(repr.starts_with("('1.0', "), "{out}");
    assert!(
        repr.contains(&format!("{}/.pyrepl3/packages/", dir.display())),
        "installed in the session's directory: {repr}"
    );

    // `%pip` (this interpreter's pip), and the import in the same cell after it.
    let out = ok(
        &api,
        &a,
        "%pip install --no-index --no-cache-dir ./pkgb-2.0-py3-none-any.whl\nimport pkgb\npkgb.VALUE",
    )
    .await;
    assert_eq!(out["result"]["repr"], "'2.0'", "{out}");

    // pip run by user code in a subprocess: PIP_PREFIX sends it there too.
    ok(
        &api,
        &a,
        "import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-cache-dir', './pkgc-3.0-py3-none-any.whl'], check=True)",
    )
    .await;
    let out = ok(&api, &a, "import pkgc\npkgc.VALUE").await;
    assert_eq!(out["result"]["repr"], "'3.0'", "{out}");
    // A child python finds them too (PYTHONPATH).
    let out = ok(
        &api,
        &a,
        "!python3 -c 'import pkga, pkgb; print(pkgb.VALUE)'",
    )
    .await;
    assert_eq!(stdout(&out), "2.0\n", "{out}");

    // Another session cannot import them.
    let out = api.execute(ALICE, &b, json!({"code": "import pkga"})).await;
    assert_eq!(
        out["error"]["exception_type"], "ModuleNotFoundError",
        "{out}"
    );

    // A restarted worker still can: the directory is the session's, not the worker's.
    let (status, _) = api
        .post(&format!("/v1/sessions/{a}/restart"), ALICE, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let out = ok(
        &api,
        &a,
        "import pkga, pkgb, pkgc\npkga.VALUE + pkgb.VALUE + pkgc.VALUE",
    )
    .await;
    assert_eq!(out["result"]["repr"], "'1.02.03.0'", "{out}");

    // A checkpoint records what was installed; a session made from it lists them, and says
    // they are not installed there.
    let (status, record) = api
        .post(&format!("/v1/sessions/{a}/checkpoints"), ALICE, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{record}");
    assert_eq!(
        record["packages"],
        json!(["pkga==1.0", "pkgb==2.0", "pkgc==3.0"]),
        "{record}"
    );
    let cid = record["id"].as_str().unwrap();
    let (_, read) = api.get(&format!("/v1/checkpoints/{cid}"), ALICE).await;
    assert_eq!(read["packages"], record["packages"], "{read}");
    let (status, made) = api
        .post("/v1/sessions", ALICE, json!({ "from_checkpoint": cid }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["restored"]["packages"], record["packages"], "{made}");
    assert_eq!(
        made["restored"]["packages_missing"], record["packages"],
        "{made}"
    );

    // The directory goes with the session.
    let watch = common::RemovalWatch::new(&dir);
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/sessions/{a}"),
            ALICE,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(30);
    let removed = tokio::task::spawn_blocking(move || watch.wait(deadline))
        .await
        .unwrap();
    assert!(removed, "the session's directory was not removed");
    assert!(!dir.exists());
}

#[tokio::test]
async fn pip_installs_into_the_session_only_sandboxed() {
    pip_installs_into_the_session_only(true).await;
}

#[tokio::test]
async fn pip_installs_into_the_session_only_without_the_sandbox() {
    pip_installs_into_the_session_only(false).await;
}

async fn env_and_cwd_are_the_sessions_and_kept_across_a_restart(sandbox: bool) {
    let api = server(sandbox).await;
    let (status, made) = api
        .post(
            "/v1/sessions",
            ALICE,
            json!({"env": {"GREETING": "hello world", "EMPTY": ""}, "cwd": "work/data"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    let (_, info) = api.get(&format!("/v1/sessions/{id}"), ALICE).await;
    let cwd = info["cwd"].as_str().unwrap().to_string();
    assert!(cwd.ends_with("/work/data"), "{info}");
    assert!(
        !info.to_string().contains("hello world"),
        "the values are not shown: {info}"
    );
    let check = "import os\nprint(os.environ['GREETING'], repr(os.environ['EMPTY']), os.environ['PWD'])\n!echo \"$GREETING\"; pwd";
    let expected = format!("hello world '' {cwd}\nhello world\n{cwd}\n");
    assert_eq!(stdout(&ok(&api, &id, check).await), expected);
    let (status, _) = api
        .post(&format!("/v1/sessions/{id}/restart"), ALICE, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stdout(&ok(&api, &id, check).await), expected);
    // After a crash too: the dead session's restart starts the worker in the same setting.
    let out = api
        .execute(ALICE, &id, json!({"code": "import os; os._exit(3)"}))
        .await;
    assert_eq!(out["error"]["exception_type"], "WorkerDied", "{out}");
    let (status, _) = api
        .post(&format!("/v1/sessions/{id}/restart"), ALICE, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stdout(&ok(&api, &id, check).await), expected);
    // Another session does not have them.
    let other = api.new_session(ALICE).await;
    let out = ok(&api, &other, "import os\n'GREETING' in os.environ").await;
    assert_eq!(out["result"]["repr"], "False", "{out}");
}

#[tokio::test]
async fn env_and_cwd_are_the_sessions_and_kept_across_a_restart_sandboxed() {
    env_and_cwd_are_the_sessions_and_kept_across_a_restart(true).await;
}

#[tokio::test]
async fn env_and_cwd_are_the_sessions_and_kept_across_a_restart_without_the_sandbox() {
    env_and_cwd_are_the_sessions_and_kept_across_a_restart(false).await;
}

#[tokio::test]
async fn refused_names_values_and_directories_are_400_naming_the_problem() {
    let api = server(true).await;
    let cases = [
        (json!({"env": {"PYREPL3_FD": "9"}}), "PYREPL3_FD"),
        (json!({"env": {"PIP_PREFIX": "/tmp"}}), "PIP_PREFIX"),
        (json!({"env": {"PYTHONPATH": "/tmp"}}), "PYTHONPATH"),
        (json!({"env": {"LD_PRELOAD": "/x.so"}}), "LD_PRELOAD"),
        (json!({"env": {"HOME": "/"}}), "HOME"),
        (json!({"env": {"PATH": "/"}}), "PATH"),
        (json!({"env": {"1BAD": "x"}}), "1BAD"),
        (json!({"env": {"A-B": "x"}}), "A-B"),
        (json!({"env": {"A": "nul\u{0}"}}), "NUL"),
        (json!({"env": {"A": 1}}), "body"),
        (json!({"cwd": "../out"}), ".."),
        (json!({"cwd": "/etc"}), "absolute"),
    ];
    for (body, named) in cases {
        let (status, answer) = api.post("/v1/sessions", ALICE, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{body}: {message}");
    }
    let many: serde_json::Map<String, Value> = (0..=pyrepl3::session::MAX_VARS)
        .map(|i| (format!("V{i}"), json!("")))
        .collect();
    let (status, answer) = api
        .post("/v1/sessions", ALICE, json!({ "env": many }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // None of these took a session: the tenant holds none.
    let (_, list) = api.get("/v1/sessions", ALICE).await;
    assert_eq!(list["sessions"], json!([]), "{list}");
}

/// A tenant's variables never act on what starts its worker: `bwrap` and `setpriv` run as
/// root (with the sandbox, when the server is root) and the dynamic linker reads its own
/// variables in their environment (here: a file written where the tenant says, as root).
/// And a variable read at interpreter start acts the same before and after a restart.
#[tokio::test]
async fn a_sessions_variables_reach_its_code_not_what_starts_its_worker() {
    let api = server(true).await;
    let out_dir = tempfile::tempdir().unwrap();
    let planted = out_dir.path().join("planted");
    let (status, made) = api
        .post(
            "/v1/sessions",
            ALICE,
            json!({"env": {"LD_DEBUG": "files", "LD_DEBUG_OUTPUT": planted.to_str().unwrap(),
                           "PYTHONHASHSEED": "bogus", "MINE": "1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    let check = "import os\nos.environ['MINE'], os.environ['PYTHONHASHSEED']";
    for _ in 0..2 {
        let out = ok(&api, &id, check).await;
        assert_eq!(out["result"]["value"], json!(["1", "bogus"]), "{out}");
        let (status, body) = api
            .post(&format!("/v1/sessions/{id}/restart"), ALICE, json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let written: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert!(written.is_empty(), "the linker wrote {written:?}");
}
