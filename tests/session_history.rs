//! What a session remembers of its own past, as IPython does: `_`, `__`, `___`, `_N`, `In`,
//! `Out`; the source of what it defined (`inspect.getsource`); and a result's `value` as
//! `json.dumps` would give it.

mod common;

use common::*;
use pyrepl3::Event;

#[tokio::test]
async fn the_last_three_results_and_in_out_are_kept_as_ipython_keeps_them() {
    let s = start().await;
    assert_eq!(eval(&s, "10").await.as_deref(), Some("10"));
    assert_eq!(eval(&s, "x = 5").await, None);
    assert_eq!(eval(&s, "20").await.as_deref(), Some("20"));
    assert_eq!(eval(&s, "30").await.as_deref(), Some("30"));
    assert_eq!(
        eval(&s, "(_, __, ___)").await.as_deref(),
        Some("(30, 20, 10)")
    );
    assert_eq!(
        eval(&s, "(In[1], In[2], Out[1], Out[3], _1, 2 in Out, len(In))")
            .await
            .as_deref(),
        Some("('10', 'x = 5', 10, 20, 10, False, 7)")
    );
    // History names are not counted as the user's globals.
    assert_eq!(s.info().await.unwrap().namespace_size, Some(1), "only x");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn inspect_getsource_works_on_what_a_session_defined() {
    let s = start().await;
    eval(
        &s,
        "def square(n):\n    return n * n\n\nclass Point:\n    x = 0",
    )
    .await;
    assert_eq!(
        eval(&s, "import inspect; inspect.getsource(square)")
            .await
            .as_deref(),
        Some("'def square(n):\\n    return n * n\\n'")
    );
    assert_eq!(
        eval(&s, "inspect.getsource(Point)").await.as_deref(),
        Some("'class Point:\\n    x = 0'")
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_results_value_is_what_json_dumps_would_give() {
    let s = start().await;
    let value = |code: &'static str| {
        let s = s.clone();
        async move {
            match run(&s, code).await.terminal {
                Event::Result { value, .. } => value,
                other => panic!("{code}: {other:?}"),
            }
        }
    };
    assert_eq!(value("(1, 2)").await, serde_json::json!([1, 2]));
    assert_eq!(
        value("{1: 'a', 2.5: 'b', False: 'c', None: 'd', 'k': ('x',)}").await,
        serde_json::json!({"1": "a", "2.5": "b", "false": "c", "null": "d", "k": ["x"]})
    );
    // Not JSON: null, the repr still says what it is.
    assert_eq!(value("float('nan')").await, serde_json::Value::Null);
    assert_eq!(value("{(1, 2): 3}").await, serde_json::Value::Null);
    assert_eq!(value("{1, 2}").await, serde_json::Value::Null);
    s.shutdown().await.unwrap();
}
