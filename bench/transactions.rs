//! What a transaction costs (bench/README.md, "Transaction cost"): the same trivial cell run
//! under `commit_always` (no snapshot) and under `rollback_on_failure` (a copy-on-write fork
//! before it, killed after it), in alternating rounds on one session whose namespace holds
//! 1 MB, 100 MB and 1 GB; and what a rollback takes (`1/0` under `rollback_on_failure`: the
//! worker hands over and exits, its snapshot takes over). Prints a Markdown table.
//!
//! Built and run by `bench/run --transactions [--quick]` (`cargo run --release --example
//! bench_transactions -- [--quick]`).

use std::time::{Duration, Instant};

use pyrepl3::{
    Event, ExecuteOptions, Session, SessionConfig, TransactionOutcome, TransactionPolicy,
};

const MB: usize = 1 << 20;

/// Builds a namespace of about `bytes`: half in small objects (a list of strings, which a
/// collection and refcounting touch), half in one large buffer.
fn fill(bytes: usize) -> String {
    let strings = bytes / 2 / 64; // a 10-digit str is ~59 bytes, plus its list slot
    format!(
        "items = [str(1_000_000_000 + i) for i in range({strings})]\n\
         blob = bytearray(b'x' * {half})",
        half = bytes / 2
    )
}

async fn timed(
    session: &Session,
    code: &str,
    policy: TransactionPolicy,
) -> Result<(Duration, Option<TransactionOutcome>), String> {
    let options = ExecuteOptions {
        transaction_policy: policy,
        ..Default::default()
    };
    let started = Instant::now();
    let outcome = session.execute(code, options).outcome().await;
    let took = started.elapsed();
    match outcome.terminal {
        Event::Result { transaction, .. } | Event::Error { transaction, .. } => {
            Ok((took, transaction))
        }
        other => Err(format!("unexpected end: {other:?}")),
    }
}

fn p50(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round, rollbacks) = if quick { (3, 20, 10) } else { (10, 50, 30) };
    let sizes: &[(usize, &str)] = &[(MB, "1 MB"), (100 * MB, "100 MB"), (1024 * MB, "1 GB")];
    println!(
        "# pyrepl3 transaction cost ({} run)\n",
        if quick { "quick" } else { "full" }
    );
    println!("p50 of one `x = 1` execution, {rounds} alternating rounds of {per_round} each; rollback: p50 of {rollbacks} `1/0` executions.\n");
    println!("| namespace | worker RSS | commit_always | rollback_on_failure (commit) | cost of the snapshot | ratio | rollback |");
    println!("|---|---|---|---|---|---|---|");
    for &(bytes, label) in sizes {
        let session = Session::start(SessionConfig::default())
            .await
            .map_err(|e| e.to_string())?;
        let filled = session
            .execute(fill(bytes), ExecuteOptions::default())
            .outcome()
            .await;
        if let Some(error) = filled.error_type() {
            return Err(format!("filling {label}: {error}"));
        }
        let rss = session
            .info()
            .await
            .ok()
            .and_then(|i| i.rss_bytes)
            .map(|b| format!("{} MB", b / MB as u64))
            .unwrap_or_else(|| "?".into());
        let (mut plain, mut snapshot) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for _ in 0..per_round {
                plain.push(
                    timed(&session, "x = 1", TransactionPolicy::CommitAlways)
                        .await?
                        .0,
                );
            }
            for _ in 0..per_round {
                let (took, outcome) =
                    timed(&session, "x = 1", TransactionPolicy::RollbackOnFailure).await?;
                if outcome != Some(TransactionOutcome::Committed) {
                    return Err(format!("expected a commit, got {outcome:?}"));
                }
                snapshot.push(took);
            }
        }
        let mut rolled = Vec::new();
        for _ in 0..rollbacks {
            let (took, outcome) =
                timed(&session, "1/0", TransactionPolicy::RollbackOnFailure).await?;
            if outcome != Some(TransactionOutcome::RolledBack) {
                return Err(format!("expected a rollback, got {outcome:?}"));
            }
            rolled.push(took);
        }
        let (plain, snapshot, rolled) = (p50(&mut plain), p50(&mut snapshot), p50(&mut rolled));
        println!(
            "| {label} | {rss} | {} | {} | {} | {:.2}x | {} |",
            ms(plain),
            ms(snapshot),
            ms(snapshot.saturating_sub(plain)),
            snapshot.as_secs_f64() / plain.as_secs_f64(),
            ms(rolled)
        );
        session.shutdown().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
