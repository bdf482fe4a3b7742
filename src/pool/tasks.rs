//! The pool's two background tasks: demand-driven warmup (with bounded exponential back-off
//! after failed spawns) and deadline-driven idle eviction. Both hold the pool only weakly, so
//! dropping the last handle ends them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Inner, SessionFactory, Signals};

/// Demand-driven warmup: sleeps until notified, then creates sessions until idle (plus
/// sessions being created) covers `min_idle` and every waiter, within `max_sessions`.
pub(super) async fn warmup_task<F: SessionFactory>(
    pool: Weak<Inner<F>>,
    signals: Arc<Signals>,
    token: CancellationToken,
) {
    let mut backoff = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = signals.warmup.notified() => {}
        }
        let Some(inner) = pool.upgrade() else { return };
        inner.lock().metrics.warmup_iterations += 1;
        let initial = inner.config.spawn_backoff_initial;
        let max = inner.config.spawn_backoff_max;
        loop {
            let wanted = {
                let mut st = inner.lock();
                if st.closed {
                    return;
                }
                let want = inner.config.min_idle + st.open_waiters();
                let have = st.idle.len() + st.warming;
                let room = inner.config.max_sessions.saturating_sub(st.total());
                let n = want.saturating_sub(have).min(room);
                st.creating += n;
                st.warming += n;
                n
            };
            if wanted == 0 {
                break;
            }
            let errors = inner.warm(wanted).await;
            for e in &errors {
                tracing::warn!(error = %e, "warmup could not start a session");
            }
            if errors.is_empty() {
                backoff = None;
                continue;
            }
            let delay = backoff.map_or(initial, |d: Duration| (d * 2).min(max));
            backoff = Some(delay);
            inner.lock().metrics.last_spawn_backoff = Some(delay);
            drop(inner);
            tokio::select! {
                _ = token.cancelled() => return,
                // not polling: back-off after a failed spawn, bounded by spawn_backoff_max.
                _ = tokio::time::sleep(delay) => {}
            }
            let Some(again) = pool.upgrade() else { return };
            again.lock().metrics.timer_wakeups += 1;
            drop(again);
            // Loop again only through the outer `loop` so the pool can go away meanwhile.
            signals.warmup.notify_one();
            break;
        }
    }
}

/// Deadline-driven idle eviction: sleeps exactly until the earliest expiry of an idle
/// session beyond `min_idle`, re-armed whenever that deadline changes; no timer otherwise.
pub(super) async fn health_task<F: SessionFactory>(
    pool: Weak<Inner<F>>,
    signals: Arc<Signals>,
    token: CancellationToken,
) {
    loop {
        let due = {
            let Some(inner) = pool.upgrade() else { return };
            let mut st = inner.lock();
            let due = st.eviction_due(inner.config.min_idle, inner.config.idle_timeout);
            st.metrics.next_health_check_due_at = due;
            due
        };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = signals.health.notified() => {}
            // not polling: the earliest idle expiry, re-armed when it changes.
            _ = crate::time::sleep_until_opt(due) => {
                if let Some(inner) = pool.upgrade() {
                    inner.evict_expired();
                }
            }
        }
    }
}
