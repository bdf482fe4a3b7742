//! Holding an execution to its time limit after the worker said it ended. User code shares
//! its process with the agent, so it can write a `result` for its own execution and go on
//! running: the host must not take the worker's word for it. This owns the checks: every
//! execution that ends (by the worker's frame) before its kill point leaves a check at that
//! point; at a check the actor asks the *kernel* whether the worker's main thread is idle
//! (blocked reading the exec channel) or busy with an execution the host knows is running
//! (it has read that execution's frame). Otherwise the thread is still in code whose time
//! is up: it is interrupted like a timed-out execution, and killed if it is still busy one
//! grace later. Nothing here runs unless a deadline falls due.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

/// Checks are rounded up to this step, so that executions ending close together share one
/// check: at most one probe per step per session, however many executions end early.
const CHECK_STEP: Duration = Duration::from_millis(100);

/// Pending checks per worker at most (each 8 bytes). Past the cap, the latest check is kept
/// (it covers the longest limit) and the one before it is dropped.
pub(crate) const MAX_PENDING_CHECKS: usize = 1024;

/// What the kernel says of the worker, read by the actor when the core asks
/// ([`super::Effect::ProbeIdle`]). `None`: could not be read (no permission, no such file).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdleProbe {
    /// The main thread is blocked in `read` on the exec channel: the agent's idle state.
    pub reading_exec: Option<bool>,
    /// Bytes the host sent on the exec channel that the worker has not read yet.
    pub unread_exec_bytes: Option<usize>,
}

impl IdleProbe {
    /// Whether the main thread is running code whose time is up. `execution_running`: the
    /// host has an execution running, so a busy thread that has read everything sent is
    /// busy with that one, under its own deadline. When the kernel cannot tell, the worker
    /// is not blamed.
    pub fn overran(&self, execution_running: bool) -> bool {
        match (self.reading_exec, self.unread_exec_bytes) {
            (Some(true), _) | (None, _) => false,
            (Some(false), Some(0)) | (Some(false), None) => !execution_running,
            (Some(false), Some(_)) => true,
        }
    }
}

/// Set in a signal target (`Effect::Interrupt`): "interrupt code older than execution
/// `seq`", never that execution or a later one, so that a probe that caught an honest agent
/// between two executions cannot interrupt the next one (the agent's `_on_sigint`).
pub(crate) const OVERRUN_FLAG: u64 = 1 << 63;
/// Set in a signal target: the SIGINT is the execution's timeout, not a client's cancel (the
/// KeyboardInterrupt says which; docs/protocol.md, "Interrupting").
pub(crate) const TIMEOUT_FLAG: u64 = 1 << 62;

/// What the core does after a probe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Idle,
    /// Interrupt code older than the newest execution (SIGINT with [`OVERRUN_FLAG`]);
    /// checked again one grace later.
    Interrupt,
    /// Still busy one grace after the interrupt, and not a frame from the worker since:
    /// kill it.
    Kill,
    /// Busy, and an interrupt is already waiting for its confirmation.
    Wait,
}

#[derive(Debug, Default)]
pub(crate) struct OverrunWatch {
    /// When to check (kill points of executions that ended by the worker's word).
    checks: BTreeSet<Instant>,
    /// What checks are rounded from: the first check's `now`, so that every later kill
    /// point (never before its own `now`) rounds up, never down.
    base: Option<Instant>,
    /// An overrun was interrupted: check again then, kill if still busy.
    confirm: Option<Instant>,
    /// The worker's main thread sent a frame since the interrupt: it made progress, so a
    /// busy confirmation may be a later execution caught between frames. No kill then.
    heard_since_interrupt: bool,
}

impl OverrunWatch {
    /// An execution ended by the worker's word at `now`; its code may run until `kill_at`.
    pub fn watch(&mut self, kill_at: Instant, now: Instant) {
        let kill_at = kill_at.max(now);
        let base = *self.base.get_or_insert(now);
        let offset = kill_at.saturating_duration_since(base);
        let steps = offset.as_nanos().div_ceil(CHECK_STEP.as_nanos());
        let steps = u32::try_from(steps).unwrap_or(u32::MAX);
        let at = base
            .checked_add(CHECK_STEP.saturating_mul(steps))
            .unwrap_or(kill_at);
        if self.checks.len() >= MAX_PENDING_CHECKS && !self.checks.contains(&at) {
            // Keep the latest (it covers the longest limit); drop the one before it.
            let mut latest = self.checks.iter().rev().copied();
            if let (Some(_), Some(before)) = (latest.next(), latest.next()) {
                self.checks.remove(&before);
            }
        }
        self.checks.insert(at);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let check = self.checks.first().copied();
        check.into_iter().chain(self.confirm).min()
    }

    /// At a deadline: whether the worker must be probed now (due checks are consumed).
    pub fn due(&mut self, now: Instant) -> bool {
        let mut due = self.confirm.is_some_and(|at| at <= now);
        while self.checks.first().is_some_and(|at| *at <= now) {
            self.checks.pop_first();
            due = true;
        }
        due
    }

    /// The main thread sent a frame (a result, an error, an input request, ready).
    pub fn heard(&mut self) {
        self.heard_since_interrupt = true;
    }

    /// The probe's answer, `grace` being how long interrupted code gets before the kill.
    pub fn verdict(&mut self, overran: bool, now: Instant, grace: Duration) -> Verdict {
        if !overran {
            self.confirm = None;
            return Verdict::Idle;
        }
        match self.confirm {
            Some(at) if at > now => Verdict::Wait,
            Some(_) if !self.heard_since_interrupt => {
                self.confirm = None;
                Verdict::Kill
            }
            _ => {
                // not polling: a deadline, raced in the one sleep_until of the actor.
                self.confirm = Some(crate::time::deadline(now, grace));
                self.heard_since_interrupt = false;
                Verdict::Interrupt
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(reading: bool, unread: usize) -> IdleProbe {
        IdleProbe {
            reading_exec: Some(reading),
            unread_exec_bytes: Some(unread),
        }
    }

    #[test]
    fn a_thread_is_blamed_only_when_the_kernel_shows_it_busy_outside_a_running_execution() {
        assert!(!probe(true, 0).overran(false));
        assert!(!probe(true, 40).overran(true));
        // Busy, everything read: the running execution's own deadline applies.
        assert!(!probe(false, 0).overran(true));
        assert!(probe(false, 0).overran(false));
        // Busy while the running execution's frame is still unread: older code.
        assert!(probe(false, 40).overran(true));
        assert!(!IdleProbe::default().overran(false));
    }

    #[test]
    fn an_overrun_is_interrupted_then_killed_one_grace_later_unless_it_stops() {
        let t0 = Instant::now();
        let grace = Duration::from_millis(100);
        let mut watch = OverrunWatch::default();
        watch.watch(t0 + Duration::from_secs(1), t0);
        assert_eq!(watch.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(!watch.due(t0));
        let t1 = t0 + Duration::from_secs(1);
        assert!(watch.due(t1));
        assert_eq!(watch.verdict(true, t1, grace), Verdict::Interrupt);
        assert_eq!(watch.next_deadline(), Some(t1 + grace));
        assert!(watch.due(t1 + grace));
        assert_eq!(watch.verdict(true, t1 + grace, grace), Verdict::Kill);
        assert_eq!(watch.next_deadline(), None);

        // Stopped within the grace: nothing more.
        watch.watch(t1, t1);
        assert!(watch.due(t1));
        assert_eq!(watch.verdict(true, t1, grace), Verdict::Interrupt);
        assert!(watch.due(t1 + grace));
        assert_eq!(watch.verdict(false, t1 + grace, grace), Verdict::Idle);
        assert_eq!(watch.next_deadline(), None);

        // Busy at the confirmation, but the worker sent a frame since: it made progress
        // (a later execution caught between frames), so it is interrupted again, not killed.
        watch.watch(t1, t1);
        assert!(watch.due(t1));
        assert_eq!(watch.verdict(true, t1, grace), Verdict::Interrupt);
        assert_eq!(watch.verdict(true, t1, grace), Verdict::Wait);
        watch.heard();
        assert!(watch.due(t1 + grace));
        assert_eq!(watch.verdict(true, t1 + grace, grace), Verdict::Interrupt);
    }

    #[test]
    fn checks_close_together_share_one_probe_and_are_bounded_keeping_the_latest() {
        let t0 = Instant::now();
        let mut watch = OverrunWatch::default();
        for i in 0..10 {
            watch.watch(t0 + Duration::from_millis(i), t0);
        }
        assert_eq!(watch.checks.len(), 2, "t0 and t0 + one step");
        let step = |i: u32| t0 + CHECK_STEP * i;
        for i in 0..(MAX_PENDING_CHECKS as u32 + 10) {
            watch.watch(step(i), t0);
        }
        assert_eq!(watch.checks.len(), MAX_PENDING_CHECKS);
        assert_eq!(
            watch.checks.last(),
            Some(&step(MAX_PENDING_CHECKS as u32 + 9))
        );
        // Rounded up: never earlier than asked.
        let mut fresh = OverrunWatch::default();
        fresh.watch(t0 + Duration::from_secs(300), t0);
        // A later execution with a shorter limit is checked at its own limit, not the
        // first one's.
        fresh.watch(
            t0 + Duration::from_millis(1150),
            t0 + Duration::from_millis(1000),
        );
        assert_eq!(fresh.checks.first(), Some(&step(12)));
    }
}
