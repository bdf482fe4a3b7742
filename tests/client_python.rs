//! The Python client (`clients/python`) against a real `pyrepl3 serve`: its own unittest
//! suite, run with the package on `PYTHONPATH` (stdlib only: nothing to install).

mod common;

use std::process::{Command, Stdio};

use common::server::{spawn_server, ALICE};

#[test]
fn the_python_clients_tests_pass_against_a_real_server() {
    // A small per-file limit, for the test of an upload refused while it is being sent.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    // And a reconnect grace far beyond the tests' own deadlines: an execution the client
    // left running when it should have cancelled it holds its session up, and the test says so.
    std::fs::write(
        &cfg,
        "reconnect_grace_secs = 600.0\n[files]\nmax_file_bytes = 4194304\n",
    )
    .unwrap();
    let (mut server, base) = spawn_server(&["--min-idle", "1", "--config", cfg.to_str().unwrap()]);
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let mut tests = common::Watched::spawn(
        Command::new("python3")
            .args(["-m", "unittest", "-v", "tests.test_client"])
            .current_dir(&client)
            .env("PYTHONPATH", &client)
            .env("PYREPL3_URL", &base)
            .env("PYREPL3_TOKEN", ALICE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        common::GUARD,
    );
    let status = tests.finish();
    let report = tests.stderr();
    assert!(
        status.success(),
        "the client's tests failed:\n{report}{}",
        tests.stdout()
    );
    assert!(report.contains("Ran 19 tests"), "{report}");
    server.kill_and_wait();
}
