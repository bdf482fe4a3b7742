//! `serve` sandboxes every worker by default (docs/security.md): tried as a hostile tenant
//! would, the server's secrets, its port and its process are out of reach, whatever a
//! session leaves running dies with it or with a killed server, and a host that cannot
//! sandbox is refused unless the operator says `--sandbox off`.

mod common;

use std::time::Duration;

use common::server::*;
use common::{processes_running, wait_pid_exit};
use reqwest::Client;
use serde_json::{json, Value};

async fn run_code(http: &Client, base: &str, id: &str, code: &str) -> Value {
    json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({ "code": code })),
    )
    .await
}

#[tokio::test]
async fn the_servers_token_config_process_and_port_are_out_of_a_sessions_reach() {
    let toml = format!(
        "[[tenants]]\nname = \"default\"\ntoken = \"{ALICE}\"\n[[tenants]]\nname = \"bob\"\ntoken = \"{BOB}\"\n"
    );
    let (server, base, dir) = spawn_server_with_config(&toml, &["--min-idle", "1"]);
    let config_path = dir.path().join("serve.toml");
    let port = base.rsplit(':').next().unwrap().to_string();
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let code = format!(
        r#"import os, socket, signal
def caught(f):
    try:
        return 'succeeded: %r' % (f(),)
    except OSError as e:
        return type(e).__name__
def everything_readable():
    seen = b''
    for pid in os.listdir('/proc'):
        for name in ('cmdline', 'environ'):
            try:
                seen += open('/proc/%s/%s' % (pid, name), 'rb').read()
            except OSError:
                pass
    return seen
(caught(lambda: open({config:?}).read()),
 b'{bob}' in everything_readable() or b'{alice}' in everything_readable(),
 caught(lambda: socket.create_connection(('127.0.0.1', {port}), timeout=5)),
 caught(lambda: os.kill({server_pid}, signal.SIGKILL)),
 caught(lambda: os.kill(1, signal.SIGKILL)))"#,
        config = config_path.to_str().unwrap(),
        bob = BOB,
        alice = ALICE,
        server_pid = server.id(),
    );
    let answer = run_code(&http, &base, &id, &code).await;
    assert_eq!(
        answer["result"]["repr"],
        "('FileNotFoundError', False, 'ConnectionRefusedError', 'ProcessLookupError', 'PermissionError')",
        "{answer}"
    );
    // The server is untouched, and says how its sessions are contained.
    let health = json_of(http.get(format!("{base}/healthz"))).await;
    assert_eq!(health["sandbox"]["mechanism"], "bubblewrap", "{health}");
    assert_eq!(health["sandbox"]["network"], "none", "{health}");
    let info = json_of(http.get(format!("{base}/v1/sessions/{id}"))).await;
    assert!(
        info["containment"]
            .as_str()
            .is_some_and(|c| c.starts_with("sandbox (bubblewrap")),
        "{info}"
    );
    drop(server);
}

#[tokio::test]
async fn setsid_children_die_at_once_with_a_killed_server() {
    let (mut server, base) = spawn_server(&["--min-idle", "0"]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let answer = run_code(
        &http,
        &base,
        &id,
        "import subprocess\nfor _ in range(2): subprocess.Popen(['setsid', 'sleep', '4321.25'], start_new_session=True)\n'started'",
    )
    .await;
    assert_eq!(answer["result"]["repr"], "'started'", "{answer}");
    let mut detached = Vec::new();
    common::guard(async {
        while detached.len() < 2 {
            detached = processes_running(&["sleep", "4321.25"]);
            tokio::task::yield_now().await;
        }
    })
    .await;
    server.kill_and_wait();
    for pid in detached {
        assert!(
            wait_pid_exit(pid, Duration::from_secs(5)).await,
            "the setsid child {pid} outlived the killed server"
        );
    }
}

#[test]
fn serve_refuses_to_start_without_a_sandbox_unless_told_and_then_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.toml");
    std::fs::write(&path, "[sandbox]\nbwrap = \"/nonexistent/bwrap\"\n").unwrap();
    let mut refused = common::Watched::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--token",
                ALICE,
                "--min-idle",
                "0",
                "--store",
                ":memory:",
            ])
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        common::GUARD,
    );
    assert_eq!(refused.finish().code(), Some(2));
    let stderr = refused.stderr();
    assert!(stderr.contains("cannot sandbox"), "{stderr}");
    assert!(stderr.contains("--sandbox off"), "{stderr}");
}

#[tokio::test]
async fn with_sandbox_off_the_server_warns_at_start_and_in_healthz() {
    let (server, base) = spawn_server_with(&["--min-idle", "0", "--sandbox", "off"], |command| {
        command.stderr(std::process::Stdio::piped());
    });
    let http = Client::new();
    let health = json_of(http.get(format!("{base}/healthz"))).await;
    assert_eq!(health["sandbox"], "off", "{health}");
    assert!(
        health["warning"]
            .as_str()
            .is_some_and(|w| w.contains("not sandboxed")),
        "{health}"
    );
    let mut server = server;
    server.kill_and_wait();
    server.finish();
    assert!(
        server.stderr().contains(
            "sandbox off (--sandbox off, or [sandbox] enabled = false): workers are not sandboxed"
        ),
        "{}",
        server.stderr()
    );
}

/// `exec --sandbox`, run by an ordinary user (here `nobody`, when the tests run as root):
/// the sandbox is built inside a user namespace of its own, and holds as it does for root.
#[test]
fn exec_sandbox_works_for_an_ordinary_user_in_a_user_namespace() {
    let root = unsafe { libc::geteuid() } == 0;
    let python = if root { "/usr/bin/python3" } else { "python3" };
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_pyrepl3"));
    if root && !(std::path::Path::new(python).exists() && others_can_run(binary)) {
        eprintln!("no /usr/bin/python3, or the build is private to root: skipped");
        return;
    }
    // A file any user of the host could read: not there inside.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("world-readable.txt");
    std::fs::write(&secret, "do-not-leak").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let code = format!(
        "import os, ctypes\ndef caught(f):\n    try:\n        return f()\n    except OSError as e:\n        return type(e).__name__\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         print(os.getuid(), os.getpid(), caught(lambda: open({:?}).read()), libc.ptrace(16, 1, 0, 0), ctypes.get_errno() == 1, caught(lambda: __import__('socket').create_connection(('1.1.1.1', 53), timeout=3)))",
        secret.to_str().unwrap()
    );
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pyrepl3"));
    if root {
        command = std::process::Command::new("setpriv");
        command
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "env",
                "-i",
                "PATH=/usr/bin:/bin",
            ])
            .arg(env!("CARGO_BIN_EXE_pyrepl3"));
    }
    command.args(["exec", "--sandbox", "--python", python, &code]);
    let mut exec = common::Watched::spawn(
        command
            .current_dir("/")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        common::GUARD,
    );
    let status = exec.finish();
    assert!(status.success(), "{status:?}: {}", exec.stderr());
    let uid = if root {
        65534
    } else {
        unsafe { libc::geteuid() }
    };
    assert_eq!(
        exec.stdout().trim(),
        format!("{uid} 2 FileNotFoundError -1 True OSError"),
        "{}",
        exec.stderr()
    );
}

/// Whether a user other than the owner can run `path` (every directory on the way open).
fn others_can_run(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// A tenant's own sandbox network: its sessions come from a pool of that network.
#[tokio::test]
async fn a_tenant_can_have_a_network_of_its_own() {
    let toml = format!(
        "[[tenants]]\nname = \"default\"\ntoken = \"{ALICE}\"\n[[tenants]]\nname = \"bob\"\ntoken = \"{BOB}\"\nnetwork = \"outbound\"\n"
    );
    let (server, base, _dir) = spawn_server_with_config(&toml, &["--min-idle", "1"]);
    let http = Client::new();
    let interfaces =
        "sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:])";
    let alice = create_session_at(&http, &base).await;
    let answer = run_code(&http, &base, &alice, interfaces).await;
    assert_eq!(answer["result"]["repr"], "['lo']", "{answer}");
    let created: Value = http
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(BOB)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bob = created["id"].as_str().unwrap();
    let answer: Value = http
        .post(format!("{base}/v1/sessions/{bob}/execute"))
        .bearer_auth(BOB)
        .json(&json!({ "code": interfaces }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["result"]["repr"], "['lo', 'tap0']", "{answer}");
    // Out to the world, but not to the server's port (on the host's loopback).
    let port = base.rsplit(':').next().unwrap();
    let refused: Value = http
        .post(format!("{base}/v1/sessions/{bob}/execute"))
        .bearer_auth(BOB)
        .json(&json!({ "code": format!("import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5)\nexcept OSError as e:\n    err = type(e).__name__\nerr") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        refused["result"]["repr"], "'ConnectionRefusedError'",
        "{refused}"
    );
    let info: Value = http
        .get(format!("{base}/v1/sessions/{bob}"))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        info["containment"]
            .as_str()
            .is_some_and(|c| c.contains("network outbound")),
        "{info}"
    );
    drop(server);
}

/// An fd the host inherited (here an open directory of the host, left inheritable by what
/// started it) never reaches a worker: in a sandbox it would be a way out of its file
/// system.
#[test]
fn fds_the_host_inherited_do_not_reach_the_worker() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = std::fs::File::open("/etc").unwrap();
    let raw = dir.as_raw_fd();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pyrepl3"));
    command.args([
        "exec",
        "--sandbox",
        "import os\ntry:\n    print(os.listdir(os.open('..', os.O_RDONLY, dir_fd=200))[:1])\nexcept OSError as e:\n    print(type(e).__name__)",
    ]);
    // SAFETY: dup2 only, between fork and exec; the new fd 200 is inheritable.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(raw, 200) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut exec = common::Watched::spawn(
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        common::GUARD,
    );
    assert!(exec.finish().success(), "{}", exec.stderr());
    assert_eq!(exec.stdout().trim(), "OSError", "fd 200 reached the worker");
}

/// As root, two pyrepl3 processes on one machine never give their sessions the same uid.
#[tokio::test]
async fn two_hosts_never_share_a_session_uid() {
    if unsafe { libc::geteuid() } != 0 {
        return; // one uid per session only as root
    }
    let (server, base) = spawn_server(&["--min-idle", "2"]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let answer = run_code(&http, &base, &id, "import os; os.getuid()").await;
    let server_uid = answer["result"]["repr"].as_str().unwrap().to_string();
    let mut exec = common::Watched::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
            .args(["exec", "--sandbox", "import os; print(os.getuid())"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        common::GUARD,
    );
    assert!(exec.finish().success(), "{}", exec.stderr());
    assert_ne!(
        exec.stdout().trim(),
        server_uid,
        "the same uid in two hosts"
    );
    drop(server);
}

/// The server's configuration file is hidden even where the sandbox shows its directory
/// (here under /usr, which every sandbox sees read-only).
#[tokio::test]
async fn the_config_file_is_hidden_even_under_usr() {
    let dir = std::path::Path::new("/usr/local/etc");
    if std::fs::create_dir_all(dir).is_err() {
        return; // not writable here (not root)
    }
    let path = dir.join(format!("pyrepl3-test-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!("[[tenants]]\nname = \"default\"\ntoken = \"{ALICE}\"\n"),
    )
    .unwrap();
    let removed = scopeguard(path.clone());
    let (server, base) = spawn_server(&["--min-idle", "1", "--config", path.to_str().unwrap()]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let code = format!(
        "import os\n(os.path.exists({:?}), open({:?}).read())",
        path.to_str().unwrap(),
        path.to_str().unwrap()
    );
    let answer = run_code(&http, &base, &id, &code).await;
    assert_eq!(answer["result"]["repr"], "(True, '')", "{answer}");
    drop(server);
    drop(removed);
}

/// Removes the file when dropped (also when the test fails).
fn scopeguard(path: std::path::PathBuf) -> impl Drop {
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    Remove(path)
}

/// The store (every tenant's checkpoints) is hidden from sessions even where the sandbox
/// shows its directory.
#[tokio::test]
async fn the_store_is_hidden_even_under_usr() {
    let dir = std::path::PathBuf::from(format!(
        "/usr/local/share/pyrepl3-test-{}",
        std::process::id()
    ));
    if std::fs::create_dir_all(&dir).is_err() {
        return; // not writable here (not root)
    }
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveDir(dir.clone());
    let store = dir.join("store.sqlite3");
    let (server, base) = spawn_server(&["--min-idle", "1", "--store", store.to_str().unwrap()]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let code = format!(
        "import os\npath = {:?}\n[(os.path.getsize(p) if os.path.exists(p) else None) for p in (path, path + '-wal')]",
        store.to_str().unwrap()
    );
    let answer = run_code(&http, &base, &id, &code).await;
    assert_eq!(answer["result"]["repr"], "[0, 0]", "{answer}");
    assert!(
        std::fs::metadata(&store).unwrap().len() > 0,
        "the real store is not empty"
    );
    drop(server);
}
