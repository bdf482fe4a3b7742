//! One execution's events as the service keeps them: numbered (`seq`), bounded, readable by
//! whoever is attached (a WebSocket, an SSE stream, an HTTP request waiting for the end), and
//! resumable after a disconnect (`since=seq`). It owns the back-pressure between a worker and
//! its remote readers: while more than [`UNDELIVERED_LIMIT`] bytes have not reached a reader,
//! the pump stops taking events from the session, so the session stops reading the worker's
//! pipes and the worker blocks in `write()`. Nothing is dropped and memory stays bounded.
//! The one exception: an execution abandoned by its readers (being cancelled) is not held
//! back, so past the limit its non-terminal events are dropped, counted, and a note before
//! its end says how much was left out. A finished log can be expired by the retention budget
//! (`retention.rs`), but never while an attached reader has not been given its end.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::event::ClientEvent;
use crate::protocol::StreamName;
use crate::session::{Event, Execution, Session};

/// Bytes of events not yet delivered to any reader before the pump waits.
pub const UNDELIVERED_LIMIT: usize = 4 * 1024 * 1024;
/// Most bytes handed to a reader at once.
const BATCH_LIMIT: usize = 256 * 1024;
/// Delivered events kept for a reader that reconnects with an older `since`: more than can
/// sit in the socket buffers of both ends when a connection drops (events written to a
/// socket are not yet received), so a reconnecting client finds everything it missed.
const RETAINED_DELIVERED: usize = 16 * 1024 * 1024;

/// One event as sent to clients: the [`ClientEvent`] with `seq`, serialized once and shared
/// by every reader (the JSON is the only copy the log keeps).
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub seq: u64,
    /// The event's `type`: output, input, result or error.
    pub kind: &'static str,
    pub text: Arc<str>,
}

impl LoggedEvent {
    fn new(seq: u64, event: &ClientEvent) -> Self {
        LoggedEvent {
            seq,
            kind: event.kind(),
            text: event.to_json_with_seq(seq).into(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.kind, "result" | "error")
    }

    /// The event back, for readers that need its fields (the HTTP collector, stdin answers).
    /// Read from the one JSON copy, so the log does not keep every event twice.
    pub fn event(&self) -> Option<ClientEvent> {
        serde_json::from_str(&self.text).ok()
    }

    fn size(&self) -> usize {
        self.text.len()
    }
}

#[derive(Debug)]
pub struct ExecLog {
    pub execution_id: String,
    state: Mutex<LogState>,
    /// A new event, the end, or a reader change.
    changed: Notify,
    /// Room for more undelivered events.
    room: Notify,
    /// Cancelled when the log ends (`done`): what waits on the execution's end without
    /// reading it (the reconnect grace) stops waiting then.
    ended: CancellationToken,
    /// The service's count of finished logs: the log takes its `finished_order` from it
    /// when its end is pushed.
    finish_counter: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct LogState {
    events: VecDeque<LoggedEvent>,
    next_seq: u64,
    /// Highest seq handed to a reader.
    delivered: u64,
    undelivered_bytes: usize,
    retained_bytes: usize,
    /// Bytes of the events in `events` (what the retention budget counts).
    held_bytes: usize,
    done: bool,
    /// Dropped by the retention budget: only an `ExecutionExpired` error is left.
    expired: bool,
    /// No reader came back within the reconnect grace (the execution is being cancelled):
    /// the pump no longer waits for room, so that the rest of the execution (bounded: its
    /// worker is stopped within the cancel grace) gets in and the log can end, instead of a
    /// pump waiting forever for a reader that will not come. Memory stays bounded all the
    /// same: past [`UNDELIVERED_LIMIT`] its non-terminal events are dropped (counted below).
    abandoned: bool,
    /// Events of an abandoned execution left out past the limit, and their output bytes;
    /// a note (stderr output) before the end says so.
    dropped_events: u64,
    dropped_output_bytes: u64,
    /// Order in which the service saw logs finish (retention drops the oldest first); set
    /// under this lock when the end is pushed, so a finished log never sorts as 0 (oldest).
    finished_order: u64,
    readers: usize,
    /// Attached readers not yet given the terminal event: while there is one, retention
    /// does not expire the log.
    readers_behind: usize,
    /// Handles held (see [`Claim`]): a reader may be about to attach (a WebSocket resume
    /// attaches once the upgrade is through), so retention does not expire the log either.
    claims: usize,
    /// Bumped whenever `readers` changes, so a stale disconnect-grace timer knows it is stale.
    readers_epoch: u64,
}

impl ExecLog {
    /// An empty log; `finish_counter` numbers the logs of a service as they finish.
    pub fn new(execution_id: &str, finish_counter: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(ExecLog {
            execution_id: execution_id.to_string(),
            state: Mutex::new(LogState {
                next_seq: 1,
                ..LogState::default()
            }),
            changed: Notify::new(),
            room: Notify::new(),
            ended: CancellationToken::new(),
            finish_counter,
        })
    }

    /// Marks the log ended (under its lock), numbering it in the order of finishing.
    fn finish(&self, st: &mut LogState) {
        st.done = true;
        if st.finished_order == 0 {
            st.finished_order = self.finish_counter.fetch_add(1, Ordering::SeqCst) + 1;
        }
    }

    /// Appends `event` under the lock; true if it ended the log.
    fn append(&self, st: &mut LogState, event: &ClientEvent) -> bool {
        let seq = st.next_seq;
        st.next_seq += 1;
        let logged = LoggedEvent::new(seq, event);
        st.undelivered_bytes += logged.size();
        st.held_bytes += logged.size();
        let ended = logged.is_terminal();
        st.events.push_back(logged);
        if ended {
            self.finish(st);
        }
        ended
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        crate::sync::lock_unpoisoned(&self.state)
    }

    pub fn is_done(&self) -> bool {
        self.lock().done
    }

    /// Bytes of the events the log holds (what the retention budget counts).
    pub fn held_bytes(&self) -> usize {
        self.lock().held_bytes
    }

    /// Place in the order in which the service's logs finished (0: not finished).
    pub fn finished_order(&self) -> u64 {
        self.lock().finished_order
    }

    /// Drops the events of a finished log (retention budget), freeing them even while
    /// handles still hold the log; true if it did (or had). Refused (false) while an
    /// attached reader has not been given the end: retention never takes a result from a
    /// reader. A later reader (one resuming) gets an `ExecutionExpired` error, with the
    /// terminal event's seq so the gap shows.
    pub fn expire(&self, reason: &Event) -> bool {
        let mut st = self.lock();
        if st.expired {
            return true;
        }
        if st.readers_behind > 0 || st.claims > 0 || !st.done {
            return false;
        }
        let last = st.next_seq.saturating_sub(1).max(1);
        let expired =
            LoggedEvent::new(last, &ClientEvent::from_session(&self.execution_id, reason));
        st.events.clear();
        st.held_bytes = expired.size();
        st.events.push_back(expired);
        st.expired = true;
        st.undelivered_bytes = 0;
        st.retained_bytes = 0;
        drop(st);
        self.ended.cancel();
        self.changed.notify_waiters();
        self.room.notify_waiters();
        true
    }

    /// Moves `execution`'s events into the log until its terminal event, waiting for room
    /// whenever readers are behind. `on_event` sees each event first (metrics).
    pub async fn pump(self: Arc<Self>, mut execution: Execution, mut on_event: impl FnMut(&Event)) {
        while let Some(event) = execution.next_event().await {
            on_event(&event);
            self.push(ClientEvent::from_session(&self.execution_id, &event))
                .await;
        }
        let mut st = self.lock();
        self.finish(&mut st);
        drop(st);
        self.ended.cancel();
        self.changed.notify_waiters();
    }

    /// Appends an event (and ends the log if it is terminal), after waiting for room.
    pub async fn push(&self, event: ClientEvent) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut st = self.lock();
                if st.done {
                    return; // already ended (the service ended it at shutdown)
                }
                let terminal = event.is_terminal();
                let full = st.undelivered_bytes >= UNDELIVERED_LIMIT;
                if full && st.abandoned && !terminal {
                    // Nobody reads it and it is being cancelled: leave it out, counted, so
                    // that code printing on through the cancel grace cannot fill memory.
                    st.dropped_events += 1;
                    if let ClientEvent::Output { data, .. } = &event {
                        st.dropped_output_bytes += data.len() as u64;
                    }
                    return;
                }
                if !full || st.abandoned {
                    if terminal && st.dropped_events > 0 {
                        let note = self.dropped_note(&st);
                        self.append(&mut st, &note);
                    }
                    let ended = self.append(&mut st, &event);
                    drop(st);
                    if ended {
                        self.ended.cancel();
                        // A pump waiting for room (its reader fell behind) must see the end
                        // (`end_with` at shutdown), not wait for a reader that is gone.
                        self.room.notify_waiters();
                    }
                    self.changed.notify_waiters();
                    return;
                }
            }
            // not polling: woken when a reader takes events and frees room.
            room.await;
        }
    }

    /// The stderr note that says what was left out of an abandoned execution.
    fn dropped_note(&self, st: &LogState) -> ClientEvent {
        ClientEvent::Output {
            id: uuid::Uuid::new_v4().to_string(),
            execution_id: self.execution_id.clone(),
            stream: StreamName::Stderr,
            data: format!(
                "\n[pyrepl3: {} events ({} bytes of output) of this execution were dropped: nobody was reading it while it was being cancelled]\n",
                st.dropped_events, st.dropped_output_bytes
            ),
        }
    }

    /// Events left out of an abandoned execution (see [`UNDELIVERED_LIMIT`]).
    #[cfg(test)]
    pub fn dropped_events(&self) -> u64 {
        self.lock().dropped_events
    }

    /// Ends the log with `event` (of this execution) unless it has ended already (shutdown).
    pub async fn end_with(&self, event: &Event) {
        if !self.is_done() {
            {
                let mut st = self.lock();
                // The end must get in even if readers are behind: make room in the count.
                st.undelivered_bytes = 0;
            }
            self.push(ClientEvent::from_session(&self.execution_id, event))
                .await;
        }
    }

    /// Events after `since`, waiting for at least one; `None` once the log has ended and
    /// everything after `since` was read. `since` is the reader's acknowledgement: it has
    /// sent on everything up to there, so those events stop counting as undelivered.
    pub async fn next_after(&self, since: u64) -> Option<Vec<LoggedEvent>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = self.lock();
                self.mark_delivered(&mut st, since);
                let mut bytes = 0;
                let batch: Vec<LoggedEvent> = st
                    .events
                    .iter()
                    .filter(|e| e.seq > since)
                    .take_while(|e| {
                        let take = bytes < BATCH_LIMIT;
                        bytes += e.size();
                        take
                    })
                    .cloned()
                    .collect();
                if !batch.is_empty() {
                    return Some(batch);
                }
                if st.done {
                    return None;
                }
            }
            // not polling: woken by the next event or the end.
            changed.await;
        }
    }

    fn mark_delivered(&self, st: &mut LogState, upto: u64) {
        if upto <= st.delivered {
            return;
        }
        let newly: usize = st
            .events
            .iter()
            .filter(|e| e.seq > st.delivered && e.seq <= upto)
            .map(LoggedEvent::size)
            .sum();
        st.delivered = upto;
        st.undelivered_bytes = st.undelivered_bytes.saturating_sub(newly);
        st.retained_bytes += newly;
        // Keep some delivered history for readers that resume from an older seq.
        while st.retained_bytes > RETAINED_DELIVERED {
            match st.events.front() {
                Some(front) if front.seq <= st.delivered => {
                    let size = front.size();
                    st.events.pop_front();
                    st.retained_bytes = st.retained_bytes.saturating_sub(size);
                    st.held_bytes = st.held_bytes.saturating_sub(size);
                }
                _ => break,
            }
        }
        self.room.notify_waiters();
    }

    /// Registers a reader; the guard unregisters it. When the last reader leaves while the
    /// execution still runs, `abandon` = (session, grace) cancels it unless a reader is back
    /// within the grace.
    pub fn attach(self: &Arc<Self>, abandon: Option<(Session, Duration)>) -> ReaderGuard {
        let mut st = self.lock();
        st.readers += 1;
        st.readers_behind += 1;
        st.readers_epoch += 1;
        ReaderGuard {
            log: self.clone(),
            abandon,
            behind: true,
        }
    }

    /// Events after `since` that are there now, without waiting. Like `next_after`, takes
    /// `since` as acknowledged; what it returns is acknowledged by the next read.
    pub fn snapshot_after(&self, since: u64) -> Vec<LoggedEvent> {
        let mut st = self.lock();
        self.mark_delivered(&mut st, since);
        st.events
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }

    /// Waits `grace`; true if the log still has no reader, has not ended, and no reader came
    /// and went meanwhile.
    async fn abandoned_after(&self, grace: Duration) -> bool {
        let epoch = {
            let st = self.lock();
            if st.readers > 0 || st.done {
                return false;
            }
            st.readers_epoch
        };
        // Ends early when the log does (the execution ended, or the service ended it at
        // shutdown): then nothing is left to cancel, and no task outlives the service.
        tokio::select! {
            // not polling: one deadline, the reconnect grace.
            _ = tokio::time::sleep(grace) => {}
            _ = self.ended.cancelled() => return false,
        }
        let mut st = self.lock();
        let abandoned = st.readers == 0 && !st.done && st.readers_epoch == epoch;
        if abandoned {
            st.abandoned = true;
            drop(st);
            self.room.notify_waiters();
        }
        abandoned
    }
}

/// Keeps retention from expiring a log while it lives (held by an execution handle, from
/// which a reader may attach at any time).
#[derive(Debug)]
pub struct Claim(Arc<ExecLog>);

impl Claim {
    pub fn new(log: &Arc<ExecLog>) -> Claim {
        log.lock().claims += 1;
        Claim(log.clone())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.claims = st.claims.saturating_sub(1);
    }
}

/// Keeps a reader registered while it lives.
#[derive(Debug)]
pub struct ReaderGuard {
    log: Arc<ExecLog>,
    abandon: Option<(Session, Duration)>,
    /// Not yet given the terminal event (counted in `readers_behind`).
    behind: bool,
}

impl ReaderGuard {
    /// The reader has been given the terminal event (or found the log ended): it no longer
    /// holds retention back. True if it was the last reader behind on this log.
    pub fn received_end(&mut self) -> bool {
        if !self.behind {
            return false;
        }
        self.behind = false;
        let mut st = self.log.lock();
        st.readers_behind = st.readers_behind.saturating_sub(1);
        st.readers_behind == 0
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let last_reader_left = {
            let mut st = self.log.lock();
            if self.behind {
                st.readers_behind = st.readers_behind.saturating_sub(1);
            }
            st.readers = st.readers.saturating_sub(1);
            st.readers_epoch += 1;
            st.readers == 0 && !st.done
        };
        if let (true, Some((session, grace))) = (last_reader_left, self.abandon.take()) {
            let log = self.log.clone();
            // A runtime is there whenever a reader (a request or connection task) drops.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if log.abandoned_after(grace).await {
                        tracing::info!(execution = %log.execution_id, "nobody came back within the reconnect grace: cancelled");
                        let _ = session.cancel(&log.execution_id, Duration::from_secs(2)).await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(data: &str) -> ClientEvent {
        ClientEvent::Output {
            id: "o".into(),
            execution_id: "e".into(),
            stream: StreamName::Stdout,
            data: data.into(),
        }
    }

    fn result() -> ClientEvent {
        ClientEvent::Result {
            id: "r".into(),
            execution_id: "e".into(),
            value: serde_json::Value::Null,
            repr: None,
            data: None,
            metadata: None,
            execution_time: 0.0,
            transaction: None,
        }
    }

    #[tokio::test]
    async fn an_abandoned_execution_keeps_bounded_memory_and_says_what_it_dropped() {
        let log = ExecLog::new("e", Arc::default());
        // Nobody attached: abandoned at once (a zero grace).
        assert!(log.abandoned_after(Duration::ZERO).await);
        // Code that catches KeyboardInterrupt and prints on: 40 MB in 1 kB lines.
        let line = "x".repeat(999) + "\n";
        for _ in 0..40_000 {
            log.push(output(&line)).await;
        }
        let held = log.held_bytes();
        assert!(
            held < UNDELIVERED_LIMIT + 4096,
            "an abandoned log holds {held} bytes"
        );
        let dropped = log.dropped_events();
        assert!(dropped > 30_000, "{dropped} events dropped");
        // The end gets in, after a note that says what was left out.
        log.push(result()).await;
        assert!(log.is_done());
        let events = log.snapshot_after(0);
        let [.., note, end] = events.as_slice() else {
            panic!("{} events", events.len())
        };
        assert_eq!(end.kind, "result");
        match note.event() {
            Some(ClientEvent::Output { stream, data, .. }) => {
                assert_eq!(stream, StreamName::Stderr);
                let expected = format!("{dropped} events ({} bytes of output)", dropped * 1000);
                assert!(data.contains(&expected), "{data}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_push_waiting_for_room_returns_when_the_log_is_ended() {
        let log = ExecLog::new("e", Arc::default());
        let _reader = log.attach(None);
        let line = "x".repeat(999) + "\n";
        while log.lock().undelivered_bytes < UNDELIVERED_LIMIT {
            log.push(output(&line)).await;
        }
        // The reader is behind: the next push waits for room...
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.push(output("more\n")).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // ...until the service ends the log (shutdown): then it returns.
        log.end_with(&crate::session::Event::error("ServerShutdown", "stopped"))
            .await;
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting push returned")
            .unwrap();
    }

    #[tokio::test]
    async fn a_log_is_numbered_when_its_end_is_pushed() {
        let counter = Arc::new(AtomicU64::new(0));
        let first = ExecLog::new("a", counter.clone());
        let second = ExecLog::new("b", counter);
        first.push(output("x")).await;
        assert_eq!(first.finished_order(), 0, "still running");
        // Set with the end, under the log's lock: no moment in which a finished log sorts
        // as 0 (the oldest) for a concurrent retention pass.
        first.push(result()).await;
        assert!(first.is_done());
        assert_eq!(first.finished_order(), 1);
        second.end_with(&Event::error("E", "m")).await;
        assert_eq!(second.finished_order(), 2);
    }

    #[tokio::test]
    async fn a_log_is_not_expired_while_a_reader_has_not_been_given_its_end() {
        let log = ExecLog::new("e", Arc::default());
        let mut reader = log.attach(None);
        log.push(output("x")).await;
        log.push(result()).await;
        let reason = Event::error("ExecutionExpired", "budget");
        assert!(
            !log.expire(&reason),
            "the reader has not been given the end"
        );
        let batch = log.next_after(0).await.unwrap_or_default();
        assert_eq!(batch.last().map(|e| e.kind), Some("result"));
        assert!(reader.received_end(), "the last reader behind");
        // A handle from which a reader may yet attach (a resume) holds it too.
        let claim = Claim::new(&log);
        assert!(!log.expire(&reason), "claimed");
        drop(claim);
        assert!(log.expire(&reason));
        drop(reader);
    }
}
