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

#[tokio::test]
async fn the_namespace_lists_each_user_global_with_type_repr_size_and_source() {
    let s = start().await;
    eval(
        &s,
        "x = 5\nimport json as j\ndef f():\n    return 1\nclass C:\n    pass\nbig = list(range(10000))\n\
         class BadRepr:\n    def __repr__(self):\n        raise ValueError('no')\nbad = BadRepr()\n10",
    )
    .await;
    let reply = s.namespace().await.unwrap();
    assert!(!reply.truncated);
    let names: Vec<&str> = reply.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["BadRepr", "C", "bad", "big", "f", "j", "x"],
        "no history names"
    );
    let entry = |name: &str| reply.entries.iter().find(|e| e.name == name).unwrap();
    assert_eq!(entry("x").type_name, "int");
    assert_eq!(entry("x").repr, "5");
    assert_eq!(entry("x").size, Some(28));
    assert_eq!(entry("j").type_name, "module");
    assert_eq!(entry("j").module.as_deref(), Some("json"));
    assert_eq!(entry("f").type_name, "function");
    assert_eq!(
        entry("f").source.as_deref(),
        Some("def f():\n    return 1\n")
    );
    assert_eq!(entry("C").type_name, "type");
    assert_eq!(entry("C").source.as_deref(), Some("class C:\n    pass\n"));
    assert_eq!(entry("bad").type_name, "__main__.BadRepr");
    // A repr that raises does not break the answer (reprlib names the instance instead).
    assert!(
        entry("bad").repr.starts_with("<BadRepr instance"),
        "{:?}",
        entry("bad")
    );
    assert!(
        entry("big").repr.starts_with("[0, 1, 2, 3, 4, 5, ..."),
        "{:?}",
        entry("big").repr
    );
    assert!(entry("big").repr.len() < 100);
    assert!(entry("j").source.is_none() && entry("x").source.is_none());
    s.shutdown().await.unwrap();
}
