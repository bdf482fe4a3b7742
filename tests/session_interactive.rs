//! What the REPL asks of a session: interactive executions (each expression statement's value
//! shown as Python's REPL shows it) and completion from the live namespace.

mod common;

use common::*;
use pyrepl3::{CodeMode, Event, ExecuteOptions};

#[tokio::test]
async fn an_interactive_execution_shows_every_expression_statement() {
    let s = start().await;
    let interactive = ExecuteOptions {
        mode: CodeMode::Interactive,
        ..ExecuteOptions::default()
    };
    let out = guard(
        s.execute("for i in range(3): i\n1; None; 'two'", interactive.clone())
            .outcome(),
    )
    .await;
    assert_eq!(out.stdout, "0\n1\n2\n1\n'two'\n");
    assert!(
        matches!(&out.terminal, Event::Result { repr: None, .. }),
        "{:?}",
        out.terminal
    );
    // The values are the session's last results, as the REPL's `_`.
    assert_eq!(
        eval(&s, "_, Out[1]").await.as_deref(),
        Some("('two', 'two')")
    );
    // Awaiting works the same way; a plain execution shows only its last value.
    let out = guard(
        s.execute("import asyncio\nawait asyncio.sleep(0, 5); 6", interactive)
            .outcome(),
    )
    .await;
    assert_eq!(out.stdout, "5\n6\n");
    let out = run(&s, "7; 8").await;
    assert_eq!(out.stdout, "");
    assert!(matches!(&out.terminal, Event::Result { repr: Some(r), .. } if r == "8"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn completion_offers_names_attributes_and_keys() {
    let s = start().await;
    eval(
        &s,
        "import os\nsettings = {'alpha': 1, 'alpine': 2, 3: 'x'}\nmy_value = 1\nmy_other = 2",
    )
    .await;
    let (token, matches) = guard(s.complete("print(my_")).await.unwrap();
    assert_eq!(token, "my_");
    assert_eq!(matches, ["my_other", "my_value"]);
    let (token, matches) = guard(s.complete("x = os.pa")).await.unwrap();
    assert_eq!(token, "os.pa");
    assert!(matches.contains(&"os.path".to_string()), "{matches:?}");
    let (token, matches) = guard(s.complete("settings[\"al")).await.unwrap();
    assert_eq!(token, "\"al");
    assert_eq!(matches, ["\"alpha\"]", "\"alpine\"]"]);
    // Builtins and keywords too; nothing for an empty token.
    let (_, matches) = guard(s.complete("isinst")).await.unwrap();
    assert_eq!(matches, ["isinstance("]);
    let (_, matches) = guard(s.complete("x = ")).await.unwrap();
    assert!(matches.is_empty());
    // A property that raises does not break it, and readline stays importable.
    eval(
        &s,
        "class Odd:\n    @property\n    def boom(self): raise RuntimeError\n    ok = 1\nodd = Odd()",
    )
    .await;
    let (_, matches) = guard(s.complete("odd.")).await.unwrap();
    assert!(matches.contains(&"odd.ok".to_string()), "{matches:?}");
    let out = run(
        &s,
        "import sys\n'readline' in sys.modules and sys.modules['readline'] is None",
    )
    .await;
    assert!(matches!(&out.terminal, Event::Result { repr: Some(r), .. } if r == "False"));
    s.shutdown().await.unwrap();
}
