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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn displays_from_a_thread_keep_their_order_and_stay_with_their_execution() {
    let session = start().await;
    // The main thread and a thread display and print in turn, numbered under a lock, as fast
    // as they can: every display in order, each followed by its own line, all before the
    // result. (Frames a thread sent on another channel than the main thread's were read out
    // of order, and some after the result: lost, their lines given to the next execution.)
    let out = run(
        &session,
        "import threading, itertools\nlock = threading.Lock()\ncount = itertools.count()\n\
         def shown():\n    with lock:\n        n = next(count)\n        display(n)\n        print('p%d' % n)\n\
         stop = False\ndef work():\n    while not stop:\n        shown()\n\
         t = threading.Thread(target=work)\nt.start()\nfor _ in range(3000):\n    shown()\n\
         stop = True\nt.join()\nnext(count)",
    )
    .await;
    let Some(total) = out.repr().and_then(|r| r.parse::<usize>().ok()) else {
        panic!("{:?}", out.terminal)
    };
    let mut expected = 0;
    let mut awaiting_print = false;
    for event in &out.events {
        match event {
            Event::Display(d) => {
                assert!(
                    !awaiting_print,
                    "display {expected} came before the line of the last"
                );
                assert_eq!(text(d, "text/plain"), expected.to_string());
                awaiting_print = true;
            }
            Event::Output { data, .. } => {
                for line in data.lines() {
                    assert!(awaiting_print, "line {line:?} before its display");
                    assert_eq!(line, format!("p{expected}"));
                    expected += 1;
                    awaiting_print = false;
                }
            }
            _ => {}
        }
    }
    assert_eq!(expected, total, "every display and line arrived");
    // Nothing of it is left for the next execution.
    let next = run(&session, "print('next')").await;
    assert_eq!(next.stdout, "next\n");
    assert_eq!(next.displays().count(), 0);
}

#[tokio::test]
async fn rich_formats_json_cannot_carry_or_too_large_for_a_frame_are_left_out_not_fatal() {
    let session = start().await;
    // A _repr_json_ with NaN: that format is left out (said), the result stands.
    let out = run(
        &session,
        "class J:\n    def __repr__(self): return 'J()'\n    def _repr_json_(self): return {'a': float('nan')}\n\
         \x20   def _repr_html_(self): return '<i>j</i>'\nJ()",
    )
    .await;
    let Event::Result {
        bundle: Some(bundle),
        ..
    } = &out.terminal
    else {
        panic!("{:?}", out.terminal)
    };
    assert!(!bundle.data.contains_key("application/json"), "{bundle:?}");
    assert_eq!(bundle.data["text/html"], "<i>j</i>");
    assert!(out.stderr.contains("application/json"), "{}", out.stderr);
    // A result bundle over a frame: left out, the repr stays, the session lives on.
    let out = run(
        &session,
        "class A:\n    def __repr__(self): return 'A()'\n    def _repr_html_(self): return 'x' * (20 << 20)\nA()",
    )
    .await;
    assert!(
        matches!(&out.terminal, Event::Result { bundle: None, repr: Some(r), .. } if r == "A()"),
        "{:?}",
        out.terminal
    );
    // Text whose UTF-8 is over a frame though its characters are not.
    let out = run(
        &session,
        "class U:\n    def _repr_html_(self): return '\u{e9}' * (10 << 20)\ndisplay(U())\n'alive'",
    )
    .await;
    assert_eq!(out.repr(), Some("'alive'"), "{:?}", out.terminal);
    let [display] = out.displays().collect::<Vec<_>>()[..] else {
        panic!("{:?}", out.events)
    };
    assert!(
        text(display, "text/plain").contains("left out"),
        "{display:?}"
    );
    // The repr of a rich result is computed once.
    let out = run(
        &session,
        "calls = []\nclass R:\n    def __repr__(self):\n        calls.append(1)\n        return 'R()'\n\
         \x20   def _repr_html_(self): return '<b>r</b>'\nR()",
    )
    .await;
    assert!(matches!(
        &out.terminal,
        Event::Result {
            bundle: Some(_),
            ..
        }
    ));
    assert_eq!(run(&session, "len(calls)").await.repr(), Some("1"));
}

#[tokio::test]
async fn a_formatter_that_misbehaves_is_said_and_the_display_goes_on() {
    let session = start().await;
    let out = run(
        &session,
        "class R:\n    def __repr__(self): raise ValueError('no repr')\n    def _repr_html_(self): return 42\n\
         class M:\n    def _repr_mimebundle_(self, include=None, exclude=None): return 'oops'\n\
         \x20   def __repr__(self): return 'M()'\n\
         display(R())\ndisplay(M())\n'after'",
    )
    .await;
    assert_eq!(out.repr(), Some("'after'"), "{:?}", out.terminal);
    let displays: Vec<_> = out.displays().collect();
    assert_eq!(displays.len(), 2, "{:?}", out.events);
    assert_eq!(text(displays[0], "text/plain"), "<R object>");
    assert!(
        !displays[0].data.contains_key("text/html"),
        "{:?}",
        displays[0]
    );
    assert_eq!(text(displays[1], "text/plain"), "M()");
    for said in ["no repr", "not str", "not a dict"] {
        assert!(out.stderr.contains(said), "{said}: {}", out.stderr);
    }
}
