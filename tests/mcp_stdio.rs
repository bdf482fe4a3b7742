//! `pyrepl3 mcp` with a real MCP client: the official `mcp` package (in the test virtualenv
//! that `scripts/test-venv` makes) runs `tests/support/mcp_client.py`, which drives the
//! server over stdio as an agent would and checks each answer (the checks both transports
//! share are in `tests/support/mcp_checks.py`).

mod common;

use std::process::{Command, Stdio};

#[test]
fn an_mcp_client_runs_code_gets_plots_progress_and_input_and_moves_files_over_stdio() {
    let python = common::rich_python();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mcp_client.py");
    let mut client = common::Watched::spawn(
        Command::new(&python)
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_pyrepl3"))
            .arg(&python)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        common::GUARD * 3,
    );
    let status = client.finish();
    let transcript = client.stdout();
    // The transcript, for the record (`cargo test -- --nocapture` shows it).
    eprintln!("{transcript}");
    assert!(
        status.success() && transcript.contains("MCP OK"),
        "{transcript}\n{}",
        client.stderr()
    );
}
