//! The TypeScript client (`clients/typescript`) against a real `pyrepl3 serve`: its own
//! `node --test` suite (`npm ci` first, for `ws`, the WebSocket class Node 20 lacks), and
//! its committed build (`dist/`, which the server embeds for the playground) checked to be
//! exactly what `tsc` makes of `src/` today.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::npm::{npm_ci, repo_dir, run};
use common::server::{spawn_server, ALICE};

/// The suite runs a few dozen executions; generous for a loaded CI machine.
const SUITE_DEADLINE: Duration = Duration::from_secs(180);

#[test]
fn the_typescript_clients_tests_pass_against_a_real_server() {
    let client = repo_dir("clients/typescript");
    npm_ci(&client);
    // A reconnect grace far beyond the tests' own deadlines: an execution the client left
    // running when it should have cancelled it holds its session up, and the test says so.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "reconnect_grace_secs = 600.0\n").unwrap();
    let (mut server, base) = spawn_server(&["--min-idle", "1", "--config", cfg.to_str().unwrap()]);
    let (status, stdout, stderr) = run(
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "test/"])
            .current_dir(&client)
            .env("PYREPL3_URL", &base)
            .env("PYREPL3_TOKEN", ALICE),
        SUITE_DEADLINE,
    );
    server.kill_and_wait();
    assert!(
        status.success(),
        "the client's tests failed:\n{stdout}{stderr}"
    );
    // The count of tests that ran and passed: a suite that found no test fails here.
    assert!(stdout.contains("ℹ pass 29"), "{stdout}");
    assert!(stdout.contains("ℹ fail 0"), "{stdout}");
}

#[test]
fn the_committed_build_is_what_tsc_makes_of_the_source() {
    let client = repo_dir("clients/typescript");
    npm_ci(&client);
    let out = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run(
        Command::new("node")
            .arg("node_modules/typescript/bin/tsc")
            .args(["-p", "tsconfig.json", "--outDir"])
            .arg(out.path())
            .current_dir(&client),
        common::GUARD,
    );
    assert!(status.success(), "tsc failed:\n{stdout}{stderr}");
    let built = files_in(out.path());
    let committed = files_in(&client.join("dist"));
    assert!(built.len() >= 12, "tsc made {built:?}");
    assert_eq!(
        committed.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        built.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "dist/ has other files than tsc makes: run `npm run build` in clients/typescript"
    );
    for ((name, committed), (_, built)) in committed.iter().zip(&built) {
        assert!(
            committed == built,
            "dist/{name} differs from tsc's build of src/: run `npm run build` in clients/typescript"
        );
    }
}

/// The files of `dir` (not recursive), sorted by name, with their contents.
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}
