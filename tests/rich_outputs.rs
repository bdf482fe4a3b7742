//! Rich outputs with real matplotlib and pandas (a virtualenv made by `scripts/test-venv`),
//! through every surface: the collected HTTP answer, server-sent events, the WebSocket, and
//! `pyrepl3 exec` (text, with images saved to `--display-dir`, and `--json`).

mod common;

use std::process::{Command, Stdio};

use base64::Engine as _;
use common::server::{self, is_terminal, sse_events, ws_next, ws_send, Api, ALICE};
use serde_json::{json, Value};

/// A line plot shown with `plt.show()` between two prints.
const PLOT: &str = "import matplotlib.pyplot as plt\nprint('before')\n\
                    plt.plot([1, 2, 3], [4, 1, 9])\nplt.title('line')\nplt.show()\nprint('after')";

/// The PNG's width and height, after checking its signature and header chunk.
fn png_size(base64_png: &str) -> (u32, u32) {
    let png = base64::engine::general_purpose::STANDARD
        .decode(base64_png)
        .expect("image/png is base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    assert!(png.len() > 2000, "a plot of {} bytes", png.len());
    (width, height)
}

async fn rich_server() -> Api {
    let mut config = server::config(vec![server::tenant("alice", ALICE)]);
    config.pool.python = Some(common::rich_python());
    Api::start(config).await
}

#[tokio::test]
async fn a_plot_a_figure_left_open_and_a_dataframe_come_back_rich_over_http() {
    let api = rich_server().await;
    let id = api.new_session(ALICE).await;
    let out = api.execute(ALICE, &id, json!({ "code": PLOT })).await;
    assert_eq!(out["error"], Value::Null, "{out}");
    let outputs: Vec<&str> = out["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["data"].as_str())
        .collect();
    assert_eq!(outputs.concat(), "before\nafter\n");
    let displays = out["displays"].as_array().unwrap();
    assert_eq!(displays.len(), 1, "{out}");
    let (width, height) = png_size(displays[0]["data"]["image/png"].as_str().unwrap());
    assert!(width > 100 && height > 100, "{width}x{height}");
    assert!(
        displays[0]["data"]["text/plain"]
            .as_str()
            .unwrap()
            .starts_with("<Figure size"),
        "{}",
        displays[0]["data"]
    );

    // A figure drawn and not shown comes back at the end of the cell, before the result,
    // and is closed; a figure that is the result is not shown twice.
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 5])\n7" }),
        )
        .await;
    assert_eq!(out["displays"].as_array().map(Vec::len), Some(1), "{out}");
    png_size(out["displays"][0]["data"]["image/png"].as_str().unwrap());
    assert_eq!(out["result"]["repr"], "7");
    let out = api
        .execute(ALICE, &id, json!({ "code": "plt.get_fignums()" }))
        .await;
    assert_eq!(out["result"]["value"], json!([]), "{out}");
    let out = api
        .execute(ALICE, &id, json!({ "code": "fig = plt.figure()\nfig" }))
        .await;
    assert_eq!(out["displays"].as_array().map(Vec::len), Some(1), "{out}");
    assert!(out["result"]["data"].is_null(), "shown once: {out}");

    // A DataFrame as the result: its HTML table, and its text as repr.
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3, 19]})" }),
        )
        .await;
    let html = out["result"]["data"]["text/html"].as_str().unwrap_or("");
    assert!(html.contains("<table") && html.contains("Lima"), "{out}");
    assert!(out["result"]["repr"].as_str().unwrap().contains("Oslo"));
    // And shown with display(): a display event with the table.
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "display(pd.DataFrame({'x': [1]}))\nprint('done')" }),
        )
        .await;
    let html = out["displays"][0]["data"]["text/html"]
        .as_str()
        .unwrap_or("");
    assert!(html.contains("<table"), "{out}");
}

#[tokio::test]
async fn a_backend_the_user_chose_keeps_its_figures() {
    let api = rich_server().await;
    let id = api.new_session(ALICE).await;
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n\
                              plt.plot([1, 2])\nplt.show()\nlen(plt.get_fignums())" }),
        )
        .await;
    assert_eq!(out["displays"], json!([]), "{out}");
    assert_eq!(out["result"]["value"], 1, "{out}");
}

#[tokio::test]
async fn sse_and_the_websocket_carry_display_events_in_order() {
    let api = rich_server().await;
    let id = api.new_session(ALICE).await;
    let resp = api
        .http
        .post(api.url(&format!("/v1/sessions/{id}/execute")))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .json(&json!({ "code": PLOT }))
        .send()
        .await
        .unwrap();
    let kinds: Vec<String> = sse_events(resp)
        .await
        .iter()
        .map(|e| match e["type"].as_str() {
            Some("output") => format!("output:{}", e["data"].as_str().unwrap_or("").trim()),
            Some("display") => {
                png_size(e["data"]["image/png"].as_str().unwrap_or(""));
                "display".to_string()
            }
            other => other.unwrap_or("?").to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        ["output:before", "display", "output:after", "result"],
        "{kinds:?}"
    );

    let mut ws = api.ws(ALICE, &id, "").await;
    ws_send(
        &mut ws,
        json!({"type": "execute", "code": "display(1)\nprint('x')\ndisplay(2)"}),
    )
    .await;
    let mut seen = Vec::new();
    loop {
        let msg = ws_next(&mut ws).await;
        match msg["type"].as_str() {
            Some("display") => seen.push(format!("display:{}", msg["data"]["text/plain"])),
            Some("output") => seen.push(format!("output:{}", msg["data"])),
            _ => {}
        }
        if is_terminal(&msg) {
            break;
        }
    }
    assert_eq!(
        seen,
        ["display:\"1\"", "output:\"x\\n\"", "display:\"2\""],
        "{seen:?}"
    );
}

#[tokio::test]
async fn displays_count_in_the_collected_answers_output_cap() {
    let mut config = server::config(vec![server::tenant("alice", ALICE)]);
    config.pool.python = Some(common::rich_python());
    config.max_output_bytes = 20_000;
    let api = Api::start(config).await;
    let id = api.new_session(ALICE).await;
    // Each display ~6 KB: three fit, the rest are left out and counted.
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "class T:\n    def _repr_html_(self): return 'x' * 6000\n\
                              for _ in range(10): display(T())\nprint('tail')" }),
        )
        .await;
    let kept = out["displays"].as_array().map(Vec::len).unwrap_or(0);
    assert!((1..10).contains(&kept), "{kept} kept");
    assert_eq!(
        out["displays_truncated"],
        json!(10 - kept),
        "{}",
        out["displays_truncated"]
    );
    assert_eq!(out["truncated"], true);
    // What follows a left-out display is left out too: the answer keeps a prefix.
    assert_eq!(out["outputs"], json!([]), "{}", out["outputs"]);
    assert_eq!(out["output_truncated_bytes"], 5);
}

fn exec(args: &[&str], code: &str) -> (i32, String, String) {
    let mut child = common::Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
            .arg("exec")
            .arg("--python")
            .arg(common::rich_python())
            .args(args)
            .arg(code)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        common::GUARD,
    );
    let status = child.finish();
    (status.code().unwrap_or(-1), child.stdout(), child.stderr())
}

#[test]
fn exec_prints_a_plots_text_and_saves_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let (status, stdout, stderr) = exec(&["--display-dir", images.to_str().unwrap()], PLOT);
    assert_eq!(status, 0, "{stderr}");
    let saved = images.join("display-1.png");
    assert_eq!(
        stdout,
        format!(
            "before\n<Figure size 640x480 with 1 Axes>\n[display: image/png saved to {}]\nafter\n",
            saved.display()
        )
    );
    let png = std::fs::read(&saved).unwrap();
    png_size(&base64::engine::general_purpose::STANDARD.encode(png));

    // --json: the display event itself.
    let (status, stdout, _) = exec(&["--json"], PLOT);
    assert_eq!(status, 0);
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["output", "display", "output", "result"]);
    png_size(events[1]["data"]["image/png"].as_str().unwrap());
}

#[tokio::test]
async fn figures_after_a_switch_of_backend_or_a_timeout_and_ipythons_display() {
    let api = rich_server().await;
    let id = api.new_session(ALICE).await;
    // The inline backend in use first, then the user switches away: figures stay theirs.
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "import matplotlib.pyplot as plt\nplt.plot([1])" }),
        )
        .await;
    assert_eq!(out["displays"].as_array().map(Vec::len), Some(1), "{out}");
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "plt.switch_backend('agg')\nplt.figure()\nplt.plot([1, 2])\nlen(plt.get_fignums())" }),
        )
        .await;
    assert_eq!(out["displays"], json!([]), "{out}");
    assert_eq!(out["result"]["value"], 1);
    let out = api
        .execute(ALICE, &id, json!({ "code": "len(plt.get_fignums())" }))
        .await;
    assert_eq!(out["result"]["value"], 1, "kept open: {out}");

    // A timeout while a slow-to-draw figure is open: the figure is closed, not drawn, so the
    // code stops within the grace and the session keeps its namespace.
    // The imports run first, without a time limit: on a loaded machine they alone may take
    // longer than the limit below, which would stop the code before `kept` is set.
    let id = api.new_session(ALICE).await;
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "import matplotlib.pyplot as plt\nimport numpy as np\nkept = 'yes'" }),
        )
        .await;
    assert!(out["error"].is_null(), "{out}");
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "fig, ax = plt.subplots()\nax.scatter(np.random.rand(300000), np.random.rand(300000))\n\
                              while True: pass",
                    "timeout": 2 }),
        )
        .await;
    assert_eq!(out["error"]["exception_type"], "ExecutionTimeout", "{out}");
    assert!(
        !out["error"]["exception_message"]
            .as_str()
            .unwrap_or("")
            .contains("killed"),
        "{out}"
    );
    let out = api
        .execute(ALICE, &id, json!({ "code": "kept, plt.get_fignums()" }))
        .await;
    assert_eq!(out["result"]["value"], json!(["yes", []]), "{out}");

    // Notebook code: IPython's display and its HTML/Markdown objects, without an IPython
    // shell, give display events (IPython alone would print their repr).
    let out = api
        .execute(
            ALICE,
            &id,
            json!({ "code": "from IPython.display import display, HTML, Markdown\n\
                              display(HTML('<b>bold</b>'))\ndisplay(Markdown('*it*'))" }),
        )
        .await;
    let displays = out["displays"].as_array().cloned().unwrap_or_default();
    assert_eq!(displays.len(), 2, "{out}");
    assert_eq!(displays[0]["data"]["text/html"], "<b>bold</b>");
    assert_eq!(displays[1]["data"]["text/markdown"], "*it*");
}

#[tokio::test]
async fn the_repl_mode_shows_a_figure_value_once() {
    let session = common::start_with(pyrepl3::SessionConfig {
        python: common::rich_python(),
        ..pyrepl3::SessionConfig::default()
    })
    .await;
    let options = pyrepl3::ExecuteOptions {
        mode: pyrepl3::CodeMode::Interactive,
        ..pyrepl3::ExecuteOptions::default()
    };
    let out = common::guard(
        session
            .execute(
                "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(); ax.plot([1, 2]); fig",
                options,
            )
            .outcome(),
    )
    .await;
    let pngs = out
        .displays()
        .filter(|d| d.data.contains_key("image/png"))
        .count();
    assert_eq!(pngs, 1, "{:?}", out.events.len());
}

#[test]
fn exec_shows_what_a_failing_script_drew_and_notebook_lines_work() {
    // A figure drawn before the code failed (or exited) is shown, as in Jupyter: the end of
    // a script (atexit: pyplot's closes every figure) must not lose it.
    let dir = tempfile::tempdir().unwrap();
    for ending in ["1/0", "import sys; sys.exit(0)"] {
        let images = dir.path().join(ending.len().to_string());
        let (_, stdout, stderr) = exec(
            &["--display-dir", images.to_str().unwrap()],
            &format!("import matplotlib.pyplot as plt\nplt.plot([1, 2])\n{ending}"),
        );
        assert!(
            stdout.contains("[display: image/png saved to"),
            "{ending}: {stdout} / {stderr}"
        );
        assert!(images.join("display-1.png").exists());
    }
    // `%matplotlib inline` (notebook code) is accepted; IPython's display functions are the
    // session's, imported without warnings; publish_display_data gives a display.
    let (status, stdout, stderr) = exec(
        &["--json"],
        "%matplotlib inline\nfrom IPython.display import display, HTML, publish_display_data\n\
         display(HTML('<b>x</b>'))\npublish_display_data({'text/html': '<i>p</i>', 'text/plain': 'p'})",
    );
    assert_eq!(status, 0, "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
    let htmls: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "display")
        .map(|e| e["data"]["text/html"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(htmls, ["<b>x</b>", "<i>p</i>"], "{stdout}");
}

#[tokio::test]
async fn the_repl_mode_draws_a_figure_made_in_an_expression_statement_whole() {
    let session = common::start_with(pyrepl3::SessionConfig {
        python: common::rich_python(),
        ..pyrepl3::SessionConfig::default()
    })
    .await;
    let options = pyrepl3::ExecuteOptions {
        mode: pyrepl3::CodeMode::Interactive,
        ..pyrepl3::ExecuteOptions::default()
    };
    // As typed at the prompt: the figure's repr is echoed, and the one picture, 10 wide and
    // with its line, comes at the end (not an empty figure, then the line on a new one).
    let out = common::guard(
        session
            .execute(
                "import matplotlib.pyplot as plt\nplt.figure(figsize=(10, 2)); plt.plot([1, 3, 2])",
                options,
            )
            .outcome(),
    )
    .await;
    let pngs: Vec<_> = out
        .displays()
        .filter_map(|d| d.data.get("image/png").and_then(|p| p.as_str()))
        .collect();
    assert_eq!(pngs.len(), 1, "{:?}", out.stdout);
    let (width, height) = png_size(pngs[0]);
    assert!(width > 3 * height, "{width}x{height}");
    assert!(
        out.stdout.starts_with("<Figure size 1000x200"),
        "{}",
        out.stdout
    );
}
