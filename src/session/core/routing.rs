//! The core's routing of what the worker sends: frames (ready, replies, ordered messages)
//! and output text, to the execution they belong to, output always before the message that
//! follows it (`ordering.rs` decides when), and the end of an execution.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{Core, Running, WorkerSlot};
use crate::protocol::{self, Message};
use crate::session::exit::ExitCause;
use crate::session::ordering::Text;
use crate::session::{Bundle, CancelOutcome, Display, Event, SessionState};

impl Core {
    pub(super) fn on_frame(&mut self, msg: Message, now: Instant) {
        let Some(w) = self.worker.as_mut() else {
            return;
        };
        if matches!(
            msg,
            Message::Ready(_)
                | Message::Input(_)
                | Message::Display(_)
                | Message::Result(_)
                | Message::Error(_)
        ) {
            w.overrun.heard();
        }
        match msg {
            Message::Ready(ready) => self.on_ready(ready, now),
            Message::Input(_) | Message::Display(_) | Message::Result(_) | Message::Error(_) => {
                let took_over = matches!(
                    &msg,
                    Message::Result(protocol::ResultMsg {
                        worker_pid: Some(_),
                        ..
                    }) | Message::Error(protocol::ErrorMsg {
                        worker_pid: Some(_),
                        ..
                    })
                );
                if took_over
                    && !w.group_killed
                    && self.current.as_ref().is_some_and(|r| r.worker_killed)
                    && matches!(w.exit_cause, Some(ExitCause::CancelGraceExpired { .. }))
                {
                    w.exit_cause = None; // the snapshot took over: the session goes on
                }
                if let Some(run) = &mut self.current {
                    // The code stopped: a cancel in progress has succeeded, whenever the
                    // terminal message gets delivered.
                    if terminal_execution_id(&msg) == Some(run.id.as_str()) {
                        let outcome = if run.worker_killed {
                            CancelOutcome::RolledBack
                        } else {
                            CancelOutcome::Cancelled
                        };
                        if let Some(cancel) = &mut run.cancel {
                            for reply in cancel.replies.drain(..) {
                                let _ = reply.send(outcome);
                            }
                        }
                    }
                }
                w.ordering.hold(msg);
                self.release_held(now);
            }
            Message::Heartbeat(_)
            | Message::IsCompleteReply(_)
            | Message::NamespaceReply(_)
            | Message::CompleteReply(_) => {
                let kind = msg.type_name();
                if !w.requests.answer(msg) {
                    tracing::debug!(session = %self.id, kind, "a reply to no pending request (its caller gave up), dropped");
                }
            }
            other => {
                tracing::warn!(session = %self.id, kind = other.type_name(), "unexpected message from the worker, ignored");
            }
        }
    }

    /// The segment whose text belongs to the running execution.
    pub(super) fn owner_segment(&self) -> Option<u64> {
        self.current.as_ref().map(|run| run.owned_segment)
    }

    pub(super) fn deliver_output(&mut self, texts: Vec<Text>) {
        if texts.is_empty() {
            return;
        }
        if let Some(run) = &mut self.current {
            for Text { stream, text } in texts {
                run.sink.push(Event::Output { stream, data: text });
            }
        }
    }

    /// Delivers held ordered messages whose markers both pipes have passed.
    pub(super) fn release_held(&mut self, now: Instant) {
        loop {
            let owner = self.owner_segment();
            let mut out = Vec::new();
            let Some(w) = self.worker.as_mut() else {
                return;
            };
            let released = w.ordering.release_next(owner, &mut out);
            self.deliver_output(out);
            let Some((seq, msg)) = released else {
                return;
            };
            self.deliver_ordered(seq, msg, now);
        }
    }

    fn deliver_ordered(&mut self, seq: u64, msg: Message, now: Instant) {
        let belongs = |run: &Running| terminal_or_input_execution(&msg) == Some(run.id.as_str());
        let (Some(run), Some(w)) = (
            self.current.as_mut().filter(|r| belongs(r)),
            self.worker.as_mut(),
        ) else {
            self.late_messages_dropped += 1;
            tracing::debug!(session = %self.id, kind = msg.type_name(), "message for an execution that already ended, dropped");
            return;
        };
        match msg {
            Message::Input(req) => {
                // The code continues after the answer: text after this marker is its own.
                run.owned_segment = seq;
                let mut earlier = Vec::new();
                w.ordering.take_stray_through(seq, &mut earlier);
                for Text { stream, text } in earlier {
                    run.sink.push(Event::Output { stream, data: text });
                }
                let given = run.stdin.pop_front();
                if given.is_none() && self.input_ended {
                    // No one will answer (the server is shutting down): end-of-file at once,
                    // so the code's `except EOFError` runs within the grace.
                    self.send_input_answer(req.id, None);
                    return;
                }
                run.sink.push(Event::Input {
                    input_id: req.id.clone(),
                    prompt: req.prompt,
                    password: req.password,
                });
                match given {
                    // Answered with the code's own stdin; the event stays as a record.
                    Some(line) => self.send_input_answer(req.id, Some(line)),
                    None => {
                        run.pending_inputs.insert(req.id);
                    }
                }
            }
            Message::Display(d) => {
                // Stray text written before the display's marker, the display, then the text
                // after it (read before the display was released), which is the code's own as
                // it goes on.
                let mut before = Vec::new();
                w.ordering
                    .take_stray_through(seq.saturating_sub(1), &mut before);
                for Text { stream, text } in before {
                    run.sink.push(Event::Output { stream, data: text });
                }
                let display = Display {
                    data: d.data,
                    metadata: d.metadata,
                    display_id: d.display_id,
                    update: d.update,
                };
                run.sink.push(Event::Display(
                    display.within(self.config.max_display_bytes),
                ));
                run.owned_segment = seq;
                let mut after = Vec::new();
                w.ordering.take_stray_through(seq, &mut after);
                for Text { stream, text } in after {
                    run.sink.push(Event::Output { stream, data: text });
                }
            }
            Message::Result(r) => {
                Self::hold_to_time_limit(run, w, now);
                let event = match &run.cancel {
                    Some(cancel) if cancel.timed_out => {
                        crate::session::exit::timeout_event(run.timeout, None)
                            .with_transaction(r.transaction)
                    }
                    _ => Event::Result {
                        value: r.value,
                        repr: r.repr,
                        bundle: r.data.and_then(|data| {
                            let metadata = r.metadata.unwrap_or_default();
                            Bundle { data, metadata }
                                .within(self.config.max_display_bytes)
                                .map(Box::new)
                        }),
                        execution_time: crate::time::clamped_duration(r.execution_time),
                        transaction: r.transaction,
                    },
                };
                self.finish_current(event, now);
            }
            Message::Error(e) => {
                Self::hold_to_time_limit(run, w, now);
                let event = match &run.cancel {
                    Some(cancel) if cancel.timed_out && run.worker_killed => {
                        crate::session::exit::killed_timeout_event(run.timeout)
                            .with_transaction(e.transaction)
                    }
                    Some(cancel) if cancel.timed_out => {
                        crate::session::exit::timeout_event(run.timeout, Some(e.traceback))
                            .with_transaction(e.transaction)
                    }
                    _ => Event::Error {
                        exception_type: e.exception_type,
                        exception_message: e.exception_message,
                        traceback: e.traceback,
                        transaction: e.transaction,
                        exit_code: e.exit_code,
                    },
                };
                self.finish_current(event, now);
            }
            _ => {}
        }
    }

    /// The worker says the execution ended; it is held to its kill point anyway (the
    /// cancel's grace if one is running, else its timeout): see `overrun.rs`.
    fn hold_to_time_limit(run: &Running, w: &mut WorkerSlot, now: Instant) {
        let kill_at = run.cancel.as_ref().map(|c| c.deadline).or(run.deadline);
        if let Some(at) = kill_at {
            w.overrun.watch(at, now);
        }
    }

    pub(super) fn count_execution(&mut self, failed: bool) {
        self.execution_count += 1;
        self.executions
            .store(self.execution_count, Ordering::Relaxed);
        if failed {
            self.error_count += 1;
        }
        self.last_used_at = crate::time::unix_now();
    }

    fn finish_current(&mut self, event: Event, now: Instant) {
        let Some(run) = self.current.take() else {
            return;
        };
        self.count_execution(matches!(event, Event::Error { .. }));
        self.end_sink(run.sink, event);
        if !self.closing {
            self.set_state(SessionState::Idle);
        }
        self.pump(now);
    }
}

fn terminal_execution_id(msg: &Message) -> Option<&str> {
    match msg {
        Message::Result(r) => Some(&r.execution_id),
        Message::Error(e) => e.execution_id.as_deref(),
        _ => None,
    }
}

fn terminal_or_input_execution(msg: &Message) -> Option<&str> {
    match msg {
        Message::Input(i) => Some(&i.execution_id),
        Message::Display(d) => Some(&d.execution_id),
        other => terminal_execution_id(other),
    }
}
