//! The core's handling of what handles ask (execute, input, cancel, interrupt, restart,
//! shutdown, info, worker requests), of the queue, and of deadlines (timeouts, cancel grace,
//! start and shutdown limits).

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::overrun::{IdleProbe, Verdict, OVERRUN_FLAG, TIMEOUT_FLAG};
use super::{new_id, CancelState, Core, Effect, ExitCause, Queued, Running};
use crate::error::Error;
use crate::protocol::{self, Message};
use crate::session::requests::{Command, WorkerRequest};
use crate::session::sink::Sink;
use crate::session::{CancelOutcome, Event, InterruptOutcome, SessionInfo, SessionState};

impl Core {
    pub(super) fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Execute {
                id,
                code,
                timeout,
                events,
                internal,
                policy,
                mode,
                stdin,
            } => {
                let mut sink = Sink::new(events);
                if self.closing {
                    sink.push(Event::error("SessionClosed", "the session is shut down"));
                    return;
                }
                if let (Some(reason), None) = (&self.dead_reason, &self.worker) {
                    sink.push(Event::error(
                        "SessionDead",
                        format!(
                            "the session's worker is dead ({reason}); the session needs a restart (a fresh worker) to run code"
                        ),
                    ));
                    return;
                }
                self.queue.push_back(Queued {
                    id,
                    code,
                    timeout: timeout.or(self.config.default_timeout),
                    sink,
                    internal,
                    policy,
                    mode,
                    stdin,
                });
                self.pump(now);
            }
            Command::InputResponse {
                input_id,
                data,
                reply,
            } => {
                let known = self
                    .current
                    .as_mut()
                    .is_some_and(|run| run.pending_inputs.remove(&input_id));
                if known {
                    self.send_input_answer(input_id, data);
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(Error::UnknownInput(input_id)));
                }
            }
            Command::Cancel {
                execution_id,
                grace,
                reply,
            } => self.cancel(execution_id, grace, reply, now),
            Command::CancelAll { grace, reply } => {
                let queued: Vec<String> = self.queue.iter().map(|q| q.id.clone()).collect();
                for id in queued {
                    self.remove_queued(&id);
                }
                match self.current.as_ref().map(|r| r.id.clone()) {
                    Some(id) => self.cancel(id, grace, reply, now),
                    None => {
                        let _ = reply.send(CancelOutcome::NotRunning);
                    }
                }
            }
            Command::Interrupt {
                execution_id,
                force_restart,
                reply,
            } => {
                let outcome = self.interrupt(&execution_id, force_restart);
                let _ = reply.send(Ok(outcome));
            }
            Command::Restart { reply } => {
                if self.closing {
                    let _ = reply.send(Err(Error::SessionClosed));
                    return;
                }
                self.restart_waiters.push(reply);
                match &self.worker {
                    Some(w) if w.exit_cause.is_some() => {} // already going; its exit restarts or fails
                    Some(_) => self.kill_worker(ExitCause::Restart),
                    None => {
                        self.restarts += 1;
                        self.set_state(SessionState::Restarting);
                        self.start_worker();
                    }
                }
            }
            Command::EndInput { reply } => {
                self.input_ended = true;
                let waiting: Vec<String> = self
                    .current
                    .as_mut()
                    .map(|run| run.pending_inputs.drain().collect())
                    .unwrap_or_default();
                for input_id in waiting {
                    self.send_input_answer(input_id, None);
                }
                let _ = reply.send(());
            }
            Command::Shutdown { reply } => {
                self.shutdown_waiters.push(reply);
                self.begin_shutdown(now);
            }
            Command::Info { reply } => {
                let _ = reply.send(self.info());
            }
            Command::Ask(request) => self.ask(request),
            // Applied by the actor, which owns the process; reaching here (a core driven
            // without an actor) it only records them.
            Command::SetLimits { limits, reply } => {
                self.set_limits(limits);
                let _ = reply.send(Ok(()));
            }
            Command::SetEnvironment { kept, reply } => {
                self.set_environment(kept);
                let _ = reply.send(());
            }
        }
    }

    /// Sends a question to a ready worker. Not ready (or the table is full): the request is
    /// dropped, which its handle reports.
    fn ask(&mut self, request: WorkerRequest) {
        let Some(w) = self.worker.as_mut().filter(|w| w.ready) else {
            return;
        };
        let id = new_id();
        let msg = request.message(id.clone());
        if w.requests.insert(id, request) {
            self.send(msg);
        }
    }

    fn cancel(
        &mut self,
        execution_id: String,
        grace: Duration,
        reply: oneshot::Sender<CancelOutcome>,
        now: Instant,
    ) {
        if self.remove_queued(&execution_id) {
            let _ = reply.send(CancelOutcome::Cancelled);
            return;
        }
        let Some(run) = self.current.as_mut().filter(|r| r.id == execution_id) else {
            let _ = reply.send(CancelOutcome::NotRunning);
            return;
        };
        // not polling: a deadline, raced in the one sleep_until of the actor.
        let deadline = crate::time::deadline(now, grace);
        match &mut run.cancel {
            Some(cancel) => {
                cancel.replies.push(reply);
                cancel.deadline = cancel.deadline.min(deadline);
            }
            None => {
                run.cancel = Some(CancelState {
                    deadline,
                    timed_out: false,
                    replies: vec![reply],
                });
                self.interrupt_worker(false);
            }
        }
    }

    fn interrupt(&mut self, execution_id: &str, force_restart: bool) -> InterruptOutcome {
        if self.remove_queued(execution_id) {
            return InterruptOutcome::Interrupted;
        }
        if self.current.as_ref().is_none_or(|r| r.id != execution_id) {
            return InterruptOutcome::NotRunning;
        }
        if force_restart {
            self.kill_worker(ExitCause::ForcedInterrupt);
            return InterruptOutcome::Restarted;
        }
        self.interrupt_worker(false);
        InterruptOutcome::Interrupted
    }

    /// KeyboardInterrupt for the running code: SIGINT straight to the worker's main thread.
    /// Sent only while the host's current execution runs; one that lands after the code
    /// returned is absorbed by the agent (protocol.md). `timed_out`: for its timeout (the
    /// KeyboardInterrupt says so), not a client's cancel.
    fn interrupt_worker(&mut self, timed_out: bool) {
        if let (Some(_), Some(run)) = (&self.worker, &self.current) {
            let flag = if timed_out { TIMEOUT_FLAG } else { 0 };
            self.effects.push(Effect::Interrupt {
                seq: run.seq | flag,
            });
        }
    }

    /// Removes a queued (not yet started) execution, ending it with an error event.
    fn remove_queued(&mut self, execution_id: &str) -> bool {
        let Some(pos) = self.queue.iter().position(|q| q.id == execution_id) else {
            return false;
        };
        if let Some(queued) = self.queue.remove(pos) {
            self.end_sink(
                queued.sink,
                Event::error(
                    "ExecutionCancelled",
                    "cancelled before it started; it did not run",
                ),
            );
        }
        true
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.clone(),
            state: *self.state.borrow(),
            pid: self.worker.as_ref().and_then(|w| w.pid),
            python_version: self.python_version.clone(),
            cwd: self.cwd.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            execution_count: self.execution_count,
            error_count: self.error_count,
            queued: self.queue.len(),
            restarts: self.restarts,
            rss_bytes: None,
            cpu_time_secs: None,
            namespace_size: None,
            timer_wakeups: self.timer_wakeups,
            late_messages_dropped: self.late_messages_dropped,
            dead_reason: self.dead_reason.clone(),
            limits: self.config.limits,
            containment: self.containment.clone(),
            restored_from: None,
            restore_failed: Vec::new(),
            saved_at: None,
        }
    }

    /// Starts the next queued execution if the worker is free.
    pub(super) fn pump(&mut self, now: Instant) {
        if self.current.is_some() || self.closing {
            return;
        }
        let Some(w) = &mut self.worker else { return };
        if !w.ready || w.exit_cause.is_some() {
            return;
        }
        let Some(mut queued) = self.queue.pop_front() else {
            return;
        };
        // Every marked message is delivered by now, so both pipes are at this marker count.
        let segment = w.ordering.next_segment();
        w.last_seq += 1;
        let seq = w.last_seq;
        let mut run = Running {
            id: queued.id.clone(),
            sink: queued.sink,
            timeout: queued.timeout,
            // not polling: a deadline, raced in the one sleep_until of the actor.
            deadline: queued.timeout.map(|t| crate::time::deadline(now, t)),
            cancel: None,
            pending_inputs: HashSet::new(),
            stdin: std::mem::take(&mut queued.stdin).into(),
            owned_segment: segment,
            seq,
            transactional: queued.policy.rolls_back() && w.transactions,
            worker_killed: false,
        };
        // Output written between executions (background threads, children) comes first.
        let mut earlier = Vec::new();
        w.ordering.take_stray_through(segment, &mut earlier);
        for text in earlier {
            run.sink.push(Event::Output {
                stream: text.stream,
                data: text.text,
            });
        }
        self.current = Some(run);
        self.set_state(SessionState::Busy);
        self.send(Message::Execute(protocol::Execute {
            id: queued.id,
            code: queued.code,
            seq,
            transaction_id: None,
            transaction_policy: queued.policy,
            capture_source: false,
            internal: queued.internal,
            mode: queued.mode,
        }));
    }

    pub(super) fn on_deadline(&mut self, now: Instant) {
        self.timer_wakeups += 1;
        let mut kill: Option<ExitCause> = None;
        if let Some(w) = &mut self.worker {
            let start_due = w.start_deadline.is_some_and(|at| at <= now);
            if !w.ready && w.exit_cause.is_none() && start_due {
                kill = Some(ExitCause::StartTimeout);
            }
            if w.kill_deadline.is_some_and(|at| at <= now) {
                w.kill_deadline = None;
                self.effects.push(Effect::KillGroup);
            }
            // Due checks are consumed even while the worker is going away, so that the
            // deadline does not stay in the past.
            if w.overrun.due(now) && w.ready && w.exit_cause.is_none() {
                self.effects.push(Effect::ProbeIdle);
            }
        }
        let grace = self.config.timeout_grace;
        let mut send_cancel = false;
        let mut worker_killed = None;
        if let Some(run) = &mut self.current {
            match &mut run.cancel {
                // In a transaction, the worker process alone is killed first: its snapshot
                // then ends the execution with the session as it was. Should no snapshot
                // answer within another grace, the group goes as usual.
                Some(cancel)
                    if cancel.deadline <= now && run.transactional && !run.worker_killed =>
                {
                    run.worker_killed = true;
                    // not polling: a deadline, raced in the one sleep_until of the actor.
                    cancel.deadline = crate::time::deadline(now, grace);
                    worker_killed = Some(cancel.timed_out);
                    self.effects.push(Effect::KillWorkerProcess);
                }
                Some(cancel) if cancel.deadline <= now => {
                    kill = Some(ExitCause::CancelGraceExpired {
                        timed_out: cancel.timed_out,
                    });
                }
                Some(_) => {}
                None if run.deadline.is_some_and(|at| at <= now) => {
                    run.cancel = Some(CancelState {
                        // not polling: a deadline, raced in the one sleep_until of the actor.
                        deadline: crate::time::deadline(now, grace),
                        timed_out: true,
                        replies: Vec::new(),
                    });
                    send_cancel = true;
                }
                None => {}
            }
        }
        if send_cancel {
            self.interrupt_worker(true);
        }
        // Should no snapshot take over (it was gone), the exit is this kill's, and the
        // session is restarted as without a transaction; a snapshot's frame clears it.
        if let (Some(timed_out), Some(w)) = (worker_killed, &mut self.worker) {
            w.exit_cause
                .get_or_insert(ExitCause::CancelGraceExpired { timed_out });
        }
        if let Some(cause) = kill {
            self.kill_worker(cause);
        }
    }

    /// The kernel's answer to an overrun check (`overrun.rs`).
    pub(super) fn on_idle_probe(&mut self, probe: IdleProbe, now: Instant) {
        // A cancel under way kills at its own deadline; an interrupt now would overwrite
        // its signal target.
        let cancelling = self.current.as_ref().is_some_and(|r| r.cancel.is_some());
        let overran = probe.overran(self.current.is_some()) && !cancelling;
        let grace = self.config.timeout_grace;
        let Some(w) = &mut self.worker else { return };
        if w.exit_cause.is_some() {
            return;
        }
        match w.overrun.verdict(overran, now, grace) {
            Verdict::Idle | Verdict::Wait => {}
            Verdict::Interrupt => {
                tracing::warn!(session = %self.id, "code that was reported finished is still running past its time limit; interrupting it");
                // Code older than the running execution (or than the next one, if none
                // runs): never an execution the host started and the worker has not begun.
                let newest = self.current.as_ref().map_or(w.last_seq + 1, |r| r.seq);
                self.effects.push(Effect::Interrupt {
                    seq: OVERRUN_FLAG | newest,
                });
            }
            Verdict::Kill => {
                tracing::warn!(session = %self.id, "code that was reported finished ignored its interrupt; killing the worker");
                self.kill_worker(ExitCause::Overran);
            }
        }
    }

    pub(super) fn send(&mut self, msg: Message) {
        if self.worker.is_some() {
            self.effects.push(Effect::Send(msg));
        }
    }

    /// Answers the worker's `input()` request `input_id` with a line, or end-of-file (`None`).
    pub(super) fn send_input_answer(&mut self, input_id: String, data: Option<String>) {
        self.send(Message::InputResponse(protocol::InputResponse {
            id: new_id(),
            input_id,
            data,
        }));
    }
}
