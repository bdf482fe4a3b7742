//! Quick latency probe of a warm session: `1+1` round trip and cancel-to-error time.
//! `cargo run --release --example latency [runs]`. The side-by-side benchmark against
//! Jupyter lives under `bench/`; this is the smoke measurement for one machine.

use std::time::{Duration, Instant};

use pyrepl3::{Event, ExecuteOptions, Session, SessionConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<32} n={:<5} p50={:>9.1?} p90={:>9.1?} p99={:>9.1?}",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99)
    );
}

async fn terminal(execution: &mut pyrepl3::Execution) -> Event {
    let mut last = None;
    while let Some(event) = execution.next_event().await {
        last = Some(event);
    }
    last.expect("terminal event")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), pyrepl3::Error> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let session = Session::start(SessionConfig::default()).await?;

    for _ in 0..200 {
        terminal(&mut session.execute("1+1", ExecuteOptions::default())).await;
    }
    let mut round_trips = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let end = terminal(&mut session.execute("1+1", ExecuteOptions::default())).await;
        round_trips.push(t0.elapsed());
        assert!(matches!(end, Event::Result { .. }));
    }
    report("warm 1+1 round trip", round_trips);

    for (name, code) in [
        (
            "cancel `while True: pass`",
            "print('go', flush=True)\nwhile True: pass",
        ),
        (
            "cancel `time.sleep(100)`",
            "import time\nprint('go', flush=True)\ntime.sleep(100)",
        ),
    ] {
        let mut samples = Vec::new();
        for _ in 0..50 {
            let mut ex = session.execute(code, ExecuteOptions::default());
            // Wait for the code to be running.
            while let Some(event) = ex.next_event().await {
                if matches!(event, Event::Output { .. }) {
                    break;
                }
            }
            let t0 = Instant::now();
            let outcome = session.cancel(ex.id(), Duration::from_secs(2)).await?;
            let end = terminal(&mut ex).await;
            samples.push(t0.elapsed());
            assert_eq!(outcome, pyrepl3::CancelOutcome::Cancelled, "{end:?}");
        }
        report(name, samples);
    }
    session.shutdown().await?;

    // The pool: warm acquire (idle session available), and how long warmup takes to bring
    // idle back to min_idle after an acquire took it below.
    let pool = pyrepl3::SessionPool::start(pyrepl3::PoolConfig {
        min_idle: 2,
        max_sessions: 4,
        pre_warm: true,
        recycle_after_executions: None,
        ..Default::default()
    })
    .await?;
    let mut acquires = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let guard = pool.acquire().await?;
        acquires.push(t0.elapsed());
        drop(guard);
    }
    report("warm pool acquire", acquires);
    let mut refills = Vec::new();
    let mut idle = pool.idle_changes();
    for _ in 0..20 {
        let t0 = Instant::now();
        let guard = pool.acquire().await?;
        idle.wait_for(|n| *n >= 2)
            .await
            .map_err(|_| pyrepl3::Error::PoolClosed)?;
        refills.push(t0.elapsed());
        guard.discard();
        idle.wait_for(|n| *n >= 2)
            .await
            .map_err(|_| pyrepl3::Error::PoolClosed)?;
    }
    report("acquire -> idle back at min_idle", refills);
    pool.shutdown().await
}
