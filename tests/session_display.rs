//! Rich outputs through the library with a plain python3 (no IPython, no matplotlib): the
//! `display` event in order with the output, IPython's `_repr_*_` protocol on displays and
//! results, `display_id` updates, and the size limits.

mod common;

use base64::Engine as _;
use common::{run, start, start_with};
use pyrepl3::protocol::StreamName;
use pyrepl3::{CodeMode, Display, Event, ExecuteOptions, SessionConfig};

fn text(display: &Display, mime: &str) -> String {
    display.data[mime].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn two_displays_arrive_in_order_between_the_outputs_and_before_the_result() {
    let session = start().await;
    let out = run(
        &session,
        "import sys\nprint('a')\ndisplay({'k': 1})\nprint('b', file=sys.stderr)\n\
         display('two')\nprint('c')\n42",
    )
    .await;
    let kinds: Vec<String> = out
        .events
        .iter()
        .map(|event| match event {
            Event::Output { stream, data } => format!("{stream:?}:{}", data.trim()),
            Event::Display(d) => format!("display:{}", text(d, "text/plain")),
            Event::Result { repr, .. } => format!("result:{}", repr.as_deref().unwrap_or("")),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Stdout:a",
            "display:{'k': 1}",
            "Stderr:b",
            "display:'two'",
            "Stdout:c",
            "result:42"
        ],
        "{:?}",
        out.events
    );
    // A plain value's result carries no bundle: nothing beyond its repr.
    assert!(matches!(&out.terminal, Event::Result { bundle: None, .. }));
}

const RICH: &str = r#"
import base64
class Rich:
    def __repr__(self): return "Rich()"
    def _repr_html_(self): return "<table><tr><td>1</td></tr></table>"
    def _repr_markdown_(self): return "**bold**"
    def _repr_png_(self): return b"\x89PNG\r\n\x1a\nfake"
    def _repr_json_(self): return {"a": [1, 2]}
    def _repr_latex_(self): return None  # no LaTeX: left out
class Broken:
    def __repr__(self): return "Broken()"
    def _repr_html_(self): raise ValueError("no html today")
class Bundled:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": "bundled", "application/vnd.custom+json": {"x": 1}}, {"note": "m"}
class Claims:
    def __getattr__(self, name): return lambda *a, **k: "<b>anything</b>"
    def __repr__(self): return "Claims()"
"#;

#[tokio::test]
async fn the_repr_protocol_gives_results_and_displays_their_formats() {
    let session = start().await;
    run(&session, RICH).await;
    // As a result: every format, text/plain its repr.
    let out = run(&session, "Rich()").await;
    let Event::Result {
        repr,
        bundle: Some(bundle),
        ..
    } = &out.terminal
    else {
        panic!("{:?}", out.terminal)
    };
    assert_eq!(repr.as_deref(), Some("Rich()"));
    assert_eq!(bundle.data["text/plain"], "Rich()");
    assert_eq!(
        bundle.data["text/html"],
        "<table><tr><td>1</td></tr></table>"
    );
    assert_eq!(bundle.data["text/markdown"], "**bold**");
    assert_eq!(
        bundle.data["application/json"],
        serde_json::json!({"a": [1, 2]})
    );
    assert!(!bundle.data.contains_key("text/latex"), "{bundle:?}");
    let png = base64::engine::general_purpose::STANDARD
        .decode(bundle.data["image/png"].as_str().unwrap())
        .unwrap();
    assert_eq!(png, b"\x89PNG\r\n\x1a\nfake");

    // A failing method is left out, said on stderr; the rest is shown.
    let out = run(&session, "display(Broken())").await;
    let [display] = out.displays().collect::<Vec<_>>()[..] else {
        panic!("{:?}", out.events)
    };
    assert_eq!(display.data.len(), 1, "{display:?}");
    assert_eq!(text(display, "text/plain"), "Broken()");
    assert!(out.stderr.contains("no html today"), "{}", out.stderr);

    // _repr_mimebundle_ with metadata; include/exclude filter it.
    let out = run(
        &session,
        "display(Bundled())\ndisplay(Bundled(), exclude=['application/vnd.custom+json'])",
    )
    .await;
    let displays: Vec<_> = out.displays().collect();
    assert_eq!(displays.len(), 2, "{:?}", out.events);
    assert_eq!(text(displays[0], "text/plain"), "bundled");
    assert_eq!(
        displays[0].data["application/vnd.custom+json"],
        serde_json::json!({"x": 1})
    );
    assert_eq!(displays[0].metadata["note"], "m");
    assert!(!displays[1].data.contains_key("application/vnd.custom+json"));

    // An object that claims every attribute is not taken at its word (as IPython).
    let out = run(&session, "Claims()").await;
    assert!(
        matches!(&out.terminal, Event::Result { bundle: None, repr: Some(r), .. } if r == "Claims()"),
        "{:?}",
        out.terminal
    );
}

#[tokio::test]
async fn a_display_id_gives_a_handle_whose_updates_name_the_same_display() {
    let session = start().await;
    let out = run(
        &session,
        "h = display('first', display_id=True)\nh.update('second')\n\
         update_display('third', display_id=h.display_id)\ndisplay('own', display_id='mine')",
    )
    .await;
    assert!(out.error_type().is_none(), "{:?}", out.terminal);
    let displays: Vec<_> = out.displays().collect();
    let seen: Vec<_> = displays
        .iter()
        .map(|d| (text(d, "text/plain"), d.display_id.clone(), d.update))
        .collect();
    let id = displays[0].display_id.clone().expect("an id was made");
    assert_eq!(
        seen,
        [
            ("'first'".to_string(), Some(id.clone()), false),
            ("'second'".to_string(), Some(id.clone()), true),
            ("'third'".to_string(), Some(id), true),
            ("'own'".to_string(), Some("mine".to_string()), false),
        ]
    );
}

#[tokio::test]
async fn a_display_over_the_limit_is_replaced_by_a_note_and_the_session_goes_on() {
    let session = start_with(SessionConfig {
        max_display_bytes: 10_000,
        ..SessionConfig::default()
    })
    .await;
    let out = run(
        &session,
        "class Big:\n    def _repr_html_(self): return 'x' * 20000\n\
         display(Big())\nprint('after')\nBig()",
    )
    .await;
    let [display] = out.displays().collect::<Vec<_>>()[..] else {
        panic!("{:?}", out.events)
    };
    let note = text(display, "text/plain");
    assert!(note.contains("the limit is 10000 bytes"), "{note}");
    assert!(!display.data.contains_key("text/html"));
    assert_eq!(out.stdout, "after\n");
    // A result's bundle over the limit is left out; its repr stays.
    assert!(
        matches!(
            &out.terminal,
            Event::Result {
                bundle: None,
                repr: Some(_),
                ..
            }
        ),
        "{:?}",
        out.terminal
    );

    // Beyond what one frame can carry (16 MiB), the worker itself leaves it out.
    let session = start().await;
    let out = run(
        &session,
        "class Huge:\n    def _repr_html_(self): return 'x' * (17 << 20)\ndisplay(Huge())\n1",
    )
    .await;
    let [display] = out.displays().collect::<Vec<_>>()[..] else {
        panic!("{:?}", out.events)
    };
    assert!(
        text(display, "text/plain").contains("was left out"),
        "{display:?}"
    );
    assert_eq!(out.repr(), Some("1"));
}

#[tokio::test]
async fn the_interactive_mode_shows_a_rich_value_as_a_display() {
    let session = start().await;
    run(&session, RICH).await;
    let options = ExecuteOptions {
        mode: CodeMode::Interactive,
        ..ExecuteOptions::default()
    };
    let out = common::guard(session.execute("Rich(); 5", options).outcome()).await;
    let kinds: Vec<_> = out
        .events
        .iter()
        .map(|event| match event {
            Event::Display(d) => format!("display:{}", text(d, "text/plain")),
            Event::Output {
                stream: StreamName::Stdout,
                data,
            } => format!("stdout:{data}"),
            other => format!("{:?}", std::mem::discriminant(other)),
        })
        .collect();
    assert_eq!(
        kinds[..2],
        ["display:Rich()", "stdout:5\n"],
        "{:?}",
        out.events
    );
}
