//! The retention budget of finished execution logs: per session and for the whole service,
//! in bytes of events held (see [`super::config::Bounds`]), plus the count a session keeps
//! ([`KEPT_EXECUTIONS`] finished logs; running and queued ones are bounded by the queue cap).
//! Beyond a budget the oldest finished logs are dropped: removed from their session's list (a
//! later GET or resume answers `ExecutionExpired`) and their events freed at once. A log that
//! an attached reader has not been given the end of (or that a handle holds, from which a
//! reader may attach) is never expired: the byte budgets pass
//! over it (it is counted, and dropped by the pass that runs when that reader has the end);
//! beyond the count it is only taken off the list, and its events go with the reader.

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
}

impl Inner {
    /// Called when one of `hosted`'s executions finished (or was added), and when a reader
    /// that held a finished log back has its end: applies the count, the session's budget,
    /// then the service's budget.
    pub(super) fn enforce_retention(&self, hosted: &Arc<Hosted>) {
        let bounds = self.config.bounds;
        // The session: count, then bytes. Its executions run one after the other, so the
        // order of finishing is that of submission.
        let mut mine = candidates(std::slice::from_ref(hosted));
        let over_count = mine.len().saturating_sub(KEPT_EXECUTIONS);
        for c in mine.drain(..over_count) {
            // Unlisted in any case (the count bounds the list); freed now unless a reader is
            // still being given it, else when that reader lets go of it.
            unlist(&c);
            c.log.expire(&expired_reason());
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
                })
                .collect::<Vec<_>>()
        })
        .collect();
    found.sort_by_key(|c| c.order);
    found
}

/// Drops the oldest logs until those left hold at most `budget` bytes, passing over those
/// that a reader has not been given the end of (they still count).
fn trim(candidates: Vec<Candidate>, budget: usize) {
    let mut total: usize = candidates.iter().map(|c| c.bytes).sum();
    for c in candidates {
        if total <= budget {
            break;
        }
        if c.log.expire(&expired_reason()) {
            total = total.saturating_sub(c.bytes);
            unlist(&c);
        }
    }
}

fn expired_reason() -> Event {
    Event::error(
        "ExecutionExpired",
        "this execution's events were dropped to stay within the server's retention budget",
    )
}

/// Takes the log off its session's list, remembering its id as expired.
fn unlist(c: &Candidate) {
    let id = &c.log.execution_id;
    {
        let mut list = lock(&c.hosted.executions);
        let before = list.len();
        list.retain(|log| !Arc::ptr_eq(log, &c.log));
        if list.len() == before {
            return; // another pass took it
        }
    }
    {
        let mut expired = lock(&c.hosted.expired);
        expired.push_back(id.clone());
        while expired.len() > EXPIRED_IDS_KEPT {
            expired.pop_front();
        }
    }
    tracing::debug!(session = %c.hosted.id, execution = %id, bytes = c.bytes, "finished log dropped by retention");
}
