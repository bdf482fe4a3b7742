//! Checkpoints of a session's namespace (`Session::checkpoint`, `Session::restore`): values,
//! functions and classes back, merged or replacing; what cannot be saved is said with the
//! reason; a corrupt checkpoint is refused and leaves the namespace as it was.

mod common;

use common::*;
use pyrepl3::NotSaved;

const STATE: &str = "import json, math as m\n\
data = [1, 2, {'k': (3, 4)}]\n\
def area(r):\n    return m.pi * r * r\n\n\
class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n    def norm(self):\n        return m.hypot(self.x, self.y)\n\n\
p = Point(3, 4)\n\
alias = area\n\
square = lambda n: n * n\n\
gen = (i for i in range(3))\n\
f = open('/dev/null')";

#[tokio::test]
async fn a_checkpoint_brings_values_functions_and_classes_back_into_another_session() {
    let source = start().await;
    eval(&source, STATE).await;
    let saved = guard(source.checkpoint(None)).await.unwrap();
    assert_eq!(
        saved.saved,
        ["Point", "alias", "area", "data", "json", "m", "p"],
        "{saved:?}"
    );
    let skipped: Vec<&str> = saved.skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(skipped, ["f", "gen", "square"], "{saved:?}");
    let reason = |name: &str| {
        saved
            .skipped
            .iter()
            .find(|s| s.name == name)
            .map(|s: &NotSaved| s.reason.clone())
            .unwrap()
    };
    assert!(reason("gen").contains("generator"), "{}", reason("gen"));
    assert!(reason("f").contains("TextIOWrapper"), "{}", reason("f"));
    source.shutdown().await.unwrap();

    let target = start().await;
    eval(&target, "kept = 'mine'").await;
    let report = guard(target.restore(&saved.data, false, None))
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        eval(&target, "(data, area(1) == m.pi, p.norm(), type(p) is Point, alias(2) == area(2), json.dumps(1), kept)")
            .await
            .as_deref(),
        Some("([1, 2, {'k': (3, 4)}], True, 5.0, True, True, '1', 'mine')")
    );
    assert_eq!(
        eval(&target, "import inspect; inspect.getsource(area)")
            .await
            .as_deref(),
        Some("'def area(r):\\n    return m.pi * r * r\\n'")
    );
    // Replacing: what the session had is gone.
    guard(target.restore(&saved.data, true, None))
        .await
        .unwrap();
    assert_eq!(
        eval(&target, "'kept' in globals()").await.as_deref(),
        Some("False")
    );
    target.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_or_foreign_checkpoint_is_refused_and_changes_nothing() {
    let s = start().await;
    eval(&s, "x = 1").await;
    for bad in [&b"not a checkpoint"[..], &[0x78, 0x9c, 1, 2, 3][..], b""] {
        let err = guard(s.restore(bad, true, None)).await.unwrap_err();
        assert!(
            err.to_string().contains("not a pyrepl3 checkpoint"),
            "{err}"
        );
    }
    // Valid compression, wrong document.
    let foreign = zlib_compress(br#"{"format": "something-else", "entries": []}"#);
    let err = guard(s.restore(&foreign, true, None)).await.unwrap_err();
    assert!(
        err.to_string().contains("not a pyrepl3 checkpoint"),
        "{err}"
    );
    assert_eq!(eval(&s, "x").await.as_deref(), Some("1"), "left as it was");
    s.shutdown().await.unwrap();
}

/// zlib-compresses `bytes` with the worker's own zlib (through python3), so the test needs
/// no compression crate.
fn zlib_compress(bytes: &[u8]) -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zlib; sys.stdout.buffer.write(zlib.compress(sys.stdin.buffer.read()))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    out.stdout
}

/// Definitions come back in the order they were made, values after what they need, whatever
/// their names; closures are not claimed as saved; nothing of the namespace can break it.
#[tokio::test]
async fn restore_follows_what_depends_on_what_and_hostile_objects_are_only_skipped() {
    let s = start().await;
    eval(
        &s,
        "LIMIT = 10\nclass Fruit:\n    pass\nclass Apple(Fruit):\n    pass\n\
         def clamp(x, hi=LIMIT):\n    return min(x, hi)\na = Apple()\n\
         def make_counter(n):\n    def step():\n        return n\n    return step\n\
         counter = make_counter(3)\n\
         class Evil:\n    @property\n    def __class__(self):\n        raise RuntimeError('boom')\nevil = Evil()",
    )
    .await;
    let saved = guard(s.checkpoint(None)).await.unwrap();
    let skipped: Vec<&str> = saved.skipped.iter().map(|n| n.name.as_str()).collect();
    assert!(skipped.contains(&"counter"), "{saved:?}");
    let closure = saved.skipped.iter().find(|n| n.name == "counter").unwrap();
    assert!(closure.reason.contains("closure"), "{closure:?}");
    let fresh = start().await;
    let report = guard(fresh.restore(&saved.data, true, None)).await.unwrap();
    let failed: Vec<&str> = report.failed.iter().map(|n| n.name.as_str()).collect();
    assert!(
        !failed
            .iter()
            .any(|n| ["Fruit", "Apple", "clamp", "a", "LIMIT"].contains(n)),
        "{report:?}"
    );
    assert_eq!(
        eval(
            &fresh,
            "(clamp(50), isinstance(a, Fruit), Apple.__mro__[1].__name__)"
        )
        .await
        .as_deref(),
        Some("(10, True, 'Fruit')")
    );
    // The namespace answer survives the hostile object too.
    let names: Vec<String> = s
        .namespace()
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&"evil".to_string()), "{names:?}");
    assert_eq!(
        eval(&s, "1 + 1").await.as_deref(),
        Some("2"),
        "the worker lives"
    );
    s.shutdown().await.unwrap();
    fresh.shutdown().await.unwrap();
}

/// A checkpoint whose pickling never returns is ended by its timeout; the session goes on.
#[tokio::test]
async fn a_checkpoint_that_hangs_ends_at_its_timeout() {
    let s = start().await;
    eval(&s, "import time\nclass Slow:\n    def __reduce__(self):\n        time.sleep(600)\nslow = Slow()").await;
    let err = guard(s.checkpoint(Some(std::time::Duration::from_millis(500))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Timeout"), "{err}");
    assert_eq!(
        eval(&s, "'still here'").await.as_deref(),
        Some("'still here'")
    );
    s.shutdown().await.unwrap();
}

/// A checkpoint that inflates to gigabytes (a zip bomb) is refused before it does.
#[tokio::test]
async fn a_zip_bomb_is_refused() {
    let s = start().await;
    let bomb = zlib_compress(&vec![b'a'; 520 << 20]);
    assert!(bomb.len() < 2 << 20);
    let err = guard(s.restore(&bomb, false, None)).await.unwrap_err();
    assert!(err.to_string().contains("inflates past"), "{err}");
    assert_eq!(eval(&s, "1").await.as_deref(), Some("1"));
    s.shutdown().await.unwrap();
}
