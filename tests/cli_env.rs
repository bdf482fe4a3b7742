//! `pyrepl3 exec --env NAME=VALUE` (and `run`): the variables are the code's and its child
//! processes', as with `env NAME=VALUE python -c`; the service's own names are refused.

mod common;

use std::process::{Command, Stdio};

use common::{Watched, GUARD};

/// `pyrepl3 ARGS` in a fresh directory: (status, stdout, stderr).
fn pyrepl3(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("script.py"),
        "import os\nprint(os.environ['B'])\n",
    )
    .unwrap();
    let mut child = Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
            .current_dir(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        GUARD,
    );
    let status = child.finish();
    (status.code().unwrap_or(-1), child.stdout(), child.stderr())
}

#[test]
fn exec_env_sets_variables_for_the_code_and_its_children() {
    let (status, out, err) = pyrepl3(&[
        "exec",
        "--env",
        "A=one",
        "--env",
        "B=x=y",
        "import os, subprocess\nprint(os.environ['A'], os.environ['B'])\n!echo \"$A\"\n_ = subprocess.run(['sh', '-c', 'echo $B'])",
    ]);
    assert_eq!(status, 0, "{err}");
    assert_eq!(out, "one x=y\none\nx=y\n");
    let (status, out, err) = pyrepl3(&["run", "--env", "B=from-run", "script.py"]);
    assert_eq!((status, out.as_str()), (0, "from-run\n"), "{err}");
}

#[test]
fn exec_env_refuses_the_services_names_and_malformed_pairs() {
    let (status, _, err) = pyrepl3(&["exec", "--env", "PYREPL3_FD=9", "1"]);
    assert_eq!(status, 2);
    assert!(err.contains("PYREPL3_FD"), "{err}");
    let (status, _, err) = pyrepl3(&["exec", "--env", "NOVALUE", "1"]);
    assert_eq!(status, 2);
    assert!(err.contains("NAME=VALUE"), "{err}");
}
