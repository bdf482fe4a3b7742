//! The retention budget of finished execution logs: per session and for the whole service,
//! in bytes of events held (see [`super::config::Bounds`]), plus the count a session keeps
//! ([`KEPT_EXECUTIONS`]). Beyond a budget the oldest finished logs are dropped: removed from
//! their session's list (a later GET or resume answers `ExecutionExpired`) and their events
//! freed at once, even if a reader still holds the log (it gets an `ExecutionExpired` error
//! in place of what it missed). Logs that a reader is still being given are dropped last.

use std::sync::Arc;

use super::execlog::ExecLog;
use super::sessions::{Hosted, EXPIRED_IDS_KEPT, KEPT_EXECUTIONS};
use super::Inner;
use crate::session::Event;
use crate::sync::lock_unpoisoned as lock;

/// A finished log that retention may drop, with the session that keeps it.
struct Candidate {
    hosted: Arc<Hosted>,
    log: Arc<ExecLog>,
    bytes: usize,
    order: u64,
    waiting_reader: bool,
}

impl Inner {
    /// Called when one of `hosted`'s executions finished (or was added): applies the count,
    /// the session's budget, then the service's budget.
    pub(super) fn enforce_retention(&self, hosted: &Arc<Hosted>) {
        let bounds = self.config.bounds;
        // The session: count, then bytes.
        let mut mine = candidates(std::slice::from_ref(hosted));
        let over_count = {
            let list = lock(&hosted.executions);
            list.len().saturating_sub(KEPT_EXECUTIONS)
        };
        // Oldest finished first (by submission, as the list is ordered) for the count.
        let by_count: Vec<usize> = (0..mine.len().min(over_count)).collect();
        for i in by_count.into_iter().rev() {
            let c = mine.remove(i);
            drop_log(&c);
        }
        trim(mine, bounds.retained_log_bytes_per_session);
        // The service.
        let all: Vec<Arc<Hosted>> = lock(&self.sessions).values().cloned().collect();
        trim(candidates(&all), bounds.retained_log_bytes_total);
    }
}

/// The finished logs of these sessions, oldest finished first.
fn candidates(sessions: &[Arc<Hosted>]) -> Vec<Candidate> {
    let mut found: Vec<Candidate> = sessions
        .iter()
        .flat_map(|hosted| {
            let list = lock(&hosted.executions);
            list.iter()
                .filter(|log| log.is_done())
                .map(|log| Candidate {
                    hosted: hosted.clone(),
                    log: log.clone(),
                    bytes: log.held_bytes(),
                    order: log.finished_order(),
                    waiting_reader: log.has_waiting_reader(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    found.sort_by_key(|c| c.order);
    found
}

/// Drops logs until those left hold at most `budget` bytes: first the oldest that no reader
/// is waiting on, then (a reader too far behind) the oldest of the rest.
fn trim(mut candidates: Vec<Candidate>, budget: usize) {
    let mut total: usize = candidates.iter().map(|c| c.bytes).sum();
    for waiting in [false, true] {
        let mut i = 0;
        while total > budget && i < candidates.len() {
            if candidates[i].waiting_reader == waiting {
                let c = candidates.remove(i);
                total = total.saturating_sub(c.bytes);
                drop_log(&c);
            } else {
                i += 1;
            }
        }
    }
}

fn drop_log(c: &Candidate) {
    let id = &c.log.execution_id;
    {
        let mut list = lock(&c.hosted.executions);
        list.retain(|log| !Arc::ptr_eq(log, &c.log));
    }
    {
        let mut expired = lock(&c.hosted.expired);
        expired.push_back(id.clone());
        while expired.len() > EXPIRED_IDS_KEPT {
            expired.pop_front();
        }
    }
    tracing::debug!(session = %c.hosted.id, execution = %id, bytes = c.bytes, "finished log dropped by retention");
    c.log.expire(&Event::error(
        "ExecutionExpired",
        "this execution's events were dropped to stay within the server's retention budget",
    ));
}
