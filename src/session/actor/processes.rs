//! The actor's dealings with the worker's processes as the kernel sees them: the resource
//! limits set on them (and on the session's cgroup), and which process runs the session: the
//! one the worker reports at `ready`, and the one that takes over when a transaction rolls
//! back (docs/transactions.md), which gets the session's limits, what is left of its CPU
//! time, and the reason a limit of the session killed its predecessor.

use crate::error::Error;
use crate::protocol::Message;
use crate::worker::{ResourceLimits, WorkerProcess};

use super::Actor;

/// Sets `limits` on each process of `process`, parents first; what the kernel has in force on
/// the deepest (the Python process, once it runs).
fn apply_to_processes(
    process: &WorkerProcess,
    limits: ResourceLimits,
) -> std::io::Result<ResourceLimits> {
    let mut in_force = limits;
    process.each_process_parents_first(|pid| {
        in_force = limits.apply_and_read(pid)?;
        Ok(())
    })?;
    Ok(in_force)
}

impl Actor {
    /// The actor owns the process (and the spec for its successors). What is reported is
    /// what the kernel has in force (a limit above the host's own is lowered to it); nothing
    /// changes if they could not be set.
    pub(super) fn set_limits(&mut self, limits: ResourceLimits) -> Result<(), Error> {
        let applied = match &self.worker {
            Some(w) => apply_to_processes(&w.process, limits)
                .map_err(Error::io("setting the worker's resource limits")),
            None => Ok(limits),
        };
        let cgroup = self.cgroup.as_ref();
        let in_force = applied.and_then(|mut in_force| {
            if let Some(cgroup) = cgroup {
                cgroup
                    .set_max_processes(limits.processes)
                    .and_then(|()| cgroup.set_max_memory(limits.session_memory_bytes))
                    .map_err(Error::io("setting the session's cgroup limits"))?;
                in_force.processes = cgroup.max_processes();
                in_force.session_memory_bytes = cgroup.max_memory();
            }
            Ok(in_force)
        })?;
        self.spec.limits = limits;
        self.core.set_limits(in_force);
        Ok(())
    }

    /// A frame naming the Python process that runs the session (`ready`, or a snapshot's
    /// terminal frame after a takeover): it is located on the host; one that took over gets
    /// the session's limits, its CPU time less what the session's earlier processes used (a
    /// process's CPU time counts from its own start), and its frame names the limit that
    /// killed its predecessor. Returns the CPU-time limit if the session has used it up.
    pub(super) fn on_worker_pid(&mut self, msg: &mut Message) -> Option<u64> {
        let (worker_pid, cpu_before) = match &*msg {
            Message::Ready(ready) => (ready.pid, None),
            Message::Result(r) => (r.worker_pid?, r.cpu_time_before),
            Message::Error(e) => (e.worker_pid?, e.cpu_time_before),
            _ => return None,
        };
        let w = self.worker.as_mut()?;
        w.on_worker_pid(worker_pid);
        let mut budget_spent = None;
        if !matches!(msg, Message::Ready(_)) {
            // The kernel's account, not the worker's word (`cpu_before`, which user code
            // could forge): the larger of the two.
            let cpu_before = w
                .process
                .reaped_cpu_secs()
                .unwrap_or(0.0)
                .max(cpu_before.unwrap_or(0.0));
            budget_spent = self
                .spec
                .limits
                .cpu_time_secs
                .filter(|secs| cpu_before >= *secs as f64);
            let limits = self.spec.limits.less_cpu_time(cpu_before);
            if let Err(e) = apply_to_processes(&w.process, limits) {
                tracing::warn!(error = %e, "could not apply the session's limits to the snapshot that took over");
            }
        }
        self.core.set_worker_pid(w.process.pid());
        self.name_limit_kill(msg);
        budget_spent
    }

    /// A snapshot reports that the worker running a transaction was killed: when a limit of
    /// the session did it (the memory cgroup's OOM killer, the CPU-time limit's SIGXCPU), the
    /// error says so, as it does without a transaction.
    fn name_limit_kill(&mut self, msg: &mut Message) {
        let Message::Error(e) = msg else { return };
        if e.exception_type != "ExecutionKilled" {
            return;
        }
        let oom_kills = self.cgroup.as_ref().map_or(0, |c| c.oom_kills());
        let oom_killed = oom_kills > self.oom_kills_seen && e.exception_message.contains("SIGKILL");
        self.oom_kills_seen = oom_kills;
        let limits = self.spec.limits;
        let (kind, what) = if oom_killed {
            let limit = limits
                .session_memory_bytes
                .map_or(String::new(), |b| format!(" of {b} bytes"));
            (
                "MemoryLimitExceeded",
                format!("the session went over its memory limit{limit} and the kernel ended the worker running this execution"),
            )
        } else if let (Some(secs), true) = (
            limits.cpu_time_secs,
            e.exception_message.contains("SIGXCPU"),
        ) {
            (
                "CpuLimitExceeded",
                format!(
                    "the worker used up its CPU-time limit of {secs} s and the kernel ended it"
                ),
            )
        } else {
            return;
        };
        e.exception_type = kind.to_string();
        e.exception_message =
            format!("{what}; the session was rolled back to its state before the execution");
        e.traceback = format!("{kind}: {}\n", e.exception_message);
    }
}
