//! Top-level await as in `python -m asyncio`: a whole cell runs in the session's event loop,
//! so tasks can be created from any cell, keep running between cells and can be awaited in a
//! later one; `asyncio` is there without an import; a cancel or a timeout ends the cell, never
//! the tasks it started; `asyncio.run()` still works as in a script.

mod common;

use std::time::Duration;

use common::*;
use pyrepl3::{CancelOutcome, Event, ExecuteOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_cell_that_awaits_runs_whole_in_the_loop() {
    let s = start().await;
    let code = "import asyncio\ntask = asyncio.create_task(asyncio.sleep(0, 'done'))\nawait task";
    assert_eq!(eval(&s, code).await.as_deref(), Some("'done'"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn tasks_created_in_plain_cells_outlive_them_and_are_awaited_later() {
    let s = start().await;
    // No import: asyncio is in the namespace as in `python -m asyncio`.
    let code = "gate = asyncio.Event()\nasync def worker():\n    await gate.wait()\n    return 'finished'\nbg = asyncio.create_task(worker())";
    assert_eq!(eval(&s, code).await, None);
    assert_eq!(eval(&s, "bg.done()").await.as_deref(), Some("False"));
    assert_eq!(eval(&s, "gate.set()").await, None);
    assert_eq!(eval(&s, "await bg").await.as_deref(), Some("'finished'"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_started_in_a_cell_keeps_serving_between_cells() {
    let s = start().await;
    let code = r#"
async def echo(reader, writer):
    writer.write(b"echo " + await reader.readline())
    await writer.drain()
    writer.close()
server = await asyncio.start_server(echo, "127.0.0.1", 0)
server.sockets[0].getsockname()[1]
"#;
    let port: u16 = eval(&s, code).await.unwrap().parse().unwrap();
    // No cell runs now: only the loop waiting between cells can answer.
    for round in 0..3 {
        let mut conn = guard(tokio::net::TcpStream::connect(("127.0.0.1", port)))
            .await
            .unwrap();
        conn.write_all(format!("hello {round}\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        guard(conn.read_to_string(&mut answer)).await.unwrap();
        assert_eq!(answer, format!("echo hello {round}\n"));
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_or_timeout_ends_the_cell_but_not_its_background_tasks() {
    let s = start().await;
    let code = "ticks = 0\nasync def ticker():\n    global ticks\n    while True:\n        ticks += 1\n        await asyncio.sleep(0.001)\nbg = asyncio.create_task(ticker())";
    eval(&s, code).await;
    // Awaiting: the cancel arrives while the loop waits or runs the ticker.
    let mut ex = s.execute(
        "print('waiting', flush=True)\nawait asyncio.sleep(100)",
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "waiting").await;
    let outcome = guard(s.cancel(ex.id(), Duration::from_secs(5))).await;
    assert_eq!(outcome.unwrap(), CancelOutcome::Cancelled);
    match terminal(&mut ex).await {
        Event::Error {
            exception_type,
            exception_message,
            ..
        } => {
            assert_eq!(exception_type, "KeyboardInterrupt");
            assert_eq!(exception_message, "execution cancelled by the client");
        }
        other => panic!("{other:?}"),
    }
    // A cell busy in plain code inside the loop, stopped by its time limit.
    let busy = s.execute(
        "while True:\n    pass",
        ExecuteOptions {
            timeout: Some(Duration::from_millis(300)),
            ..ExecuteOptions::default()
        },
    );
    match guard(busy.outcome()).await.terminal {
        Event::Error { exception_type, .. } => assert_eq!(exception_type, "ExecutionTimeout"),
        other => panic!("{other:?}"),
    }
    // The ticker survived both and still ticks.
    let code = "before = ticks\nawait asyncio.sleep(0.05)\n(bg.done(), ticks > before)";
    assert_eq!(eval(&s, code).await.as_deref(), Some("(False, True)"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn asyncio_run_and_run_until_complete_work_as_in_a_script() {
    let s = start().await;
    let code = r#"
import asyncio
async def main():
    await asyncio.sleep(0)
    return 42
loop = asyncio.new_event_loop()
(asyncio.run(main()), loop.run_until_complete(main()), asyncio.get_running_loop() is not loop)
"#;
    assert_eq!(eval(&s, code).await.as_deref(), Some("(42, 42, True)"));
    // The session's loop still runs cells afterwards.
    assert_eq!(
        eval(&s, "await asyncio.sleep(0, 'still')").await.as_deref(),
        Some("'still'")
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_stops_busy_code_in_a_task_the_cell_started() {
    let s = start().await;
    eval(&s, "import asyncio\nkept = 'still here'").await;
    // The busy loop runs in a child task of the cell (gather), not in the cell's own task.
    let mut ex = s.execute(
        "async def spin():\n    print('spinning', flush=True)\n    while True:\n        pass\nawait asyncio.gather(spin())",
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "spinning").await;
    let outcome = guard(s.cancel(ex.id(), Duration::from_secs(5))).await;
    assert_eq!(outcome.unwrap(), CancelOutcome::Cancelled);
    assert!(
        matches!(terminal(&mut ex).await, Event::Error { exception_type, .. } if exception_type == "KeyboardInterrupt")
    );
    assert_eq!(eval(&s, "kept").await.as_deref(), Some("'still here'"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn context_variables_set_in_one_cell_are_seen_in_the_next() {
    let s = start().await;
    let code = "import asyncio, contextvars, decimal\nvar = contextvars.ContextVar('var', default='unset')\nvar.set('first')\ndecimal.getcontext().prec = 5";
    eval(&s, code).await;
    eval(
        &s,
        "var.set('second')\ndecimal.setcontext(decimal.Context(prec=7))",
    )
    .await;
    assert_eq!(
        eval(&s, "var.get(), decimal.getcontext().prec")
            .await
            .as_deref(),
        Some("('second', 7)")
    );
    assert_eq!(
        eval(&s, "await asyncio.sleep(0)\nvar.get()")
            .await
            .as_deref(),
        Some("'second'")
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn input_from_a_task_between_executions_is_end_of_file_not_a_dead_session() {
    let s = start().await;
    let code = "import asyncio\nasync def ask():\n    await asyncio.sleep(0)\n    try:\n        return input('anyone? ')\n    except EOFError:\n        return 'EOF'\nbg = asyncio.create_task(ask())";
    eval(&s, code).await;
    // The task asks while no execution runs (the loop runs between executions).
    assert_eq!(eval(&s, "await bg").await.as_deref(), Some("'EOF'"));
    assert_eq!(eval(&s, "1 + 1").await.as_deref(), Some("2"));
    s.shutdown().await.unwrap();
}
