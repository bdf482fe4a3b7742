//! `/mcp` of a real `pyrepl3 serve` process with a real MCP client: the official `mcp`
//! package's streamable HTTP transport (in the test virtualenv that `scripts/test-venv`
//! makes) runs `tests/support/mcp_http_client.py`, which drives the server as an agent would,
//! as two tenants, and checks each answer and the REST API's view of the sessions it made.

mod common;

use std::process::{Command, Stdio};

use common::server::{spawn_server_with_config, ALICE, BOB};

#[test]
fn an_mcp_client_works_over_streamable_http_as_its_tenant_only() {
    let python = common::rich_python();
    let config = format!(
        "[[tenants]]\nname = \"default\"\ntoken = \"{ALICE}\"\nrate_per_second = 1e6\nburst = 1000000\n\n\
         [[tenants]]\nname = \"bob\"\ntoken = \"{BOB}\"\nrate_per_second = 1e6\nburst = 1000000\n"
    );
    let (mut server, base, _dir) = spawn_server_with_config(
        &config,
        &["--min-idle", "0", "--python", python.to_str().unwrap()],
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mcp_http_client.py");
    let mut client = common::Watched::spawn(
        Command::new(&python)
            .arg(&script)
            .arg(&base)
            .arg(ALICE)
            .arg(BOB)
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
        status.success() && transcript.contains("MCP HTTP OK"),
        "{transcript}\n{}",
        client.stderr()
    );
    server.kill_and_wait();
}
