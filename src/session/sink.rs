//! Where one execution's events go: the bounded channel to its consumer, plus the backlog the
//! consumer has not made room for yet. The backlog is bounded by the actor, which stops
//! reading the worker's pipes while it is over `BACKLOG_LIMIT` (back-pressure, never loss).

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::Event;

/// Events buffered per execution between the actor and the consumer.
pub const EVENT_CHANNEL_CAPACITY: usize = 64;
/// Output held for a consumer that is behind before the pipes stop being read (the worker
/// then blocks in its writes: back-pressure, never dropped output).
pub(crate) const BACKLOG_LIMIT: usize = 1024 * 1024;

#[derive(Debug)]
pub(crate) struct Sink {
    tx: mpsc::Sender<Event>,
    /// Events the consumer has not made room for yet, in order.
    backlog: VecDeque<Event>,
    backlog_bytes: usize,
    /// The consumer dropped its `Execution`: events are discarded.
    gone: bool,
}

impl Sink {
    pub fn new(tx: mpsc::Sender<Event>) -> Self {
        Sink {
            tx,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            gone: false,
        }
    }

    pub fn push(&mut self, event: Event) {
        if self.gone {
            return;
        }
        if !self.backlog.is_empty() {
            // Keep order: nothing overtakes what is already waiting.
            self.queue(event);
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.gone = true,
            Err(mpsc::error::TrySendError::Full(event)) => self.queue(event),
        }
    }

    fn queue(&mut self, event: Event) {
        self.backlog_bytes += event_size(&event);
        self.backlog.push_back(event);
    }

    /// Moves backlog into the channel while it has room.
    pub fn flush(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            let size = event_size(&event);
            match self.tx.try_send(event) {
                Ok(()) => self.backlog_bytes -= size,
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.gone = true;
                    self.backlog.clear();
                    self.backlog_bytes = 0;
                    return;
                }
            }
        }
    }

    pub fn backlog_bytes(&self) -> usize {
        self.backlog_bytes
    }

    /// The channel to wait on for room, while a consumer that is still there is behind.
    pub fn waiting_for_room(&self) -> Option<&mpsc::Sender<Event>> {
        (!self.backlog.is_empty() && !self.gone).then_some(&self.tx)
    }

    /// After the terminal event: flushes what fits; `Some` if a backlog is left for a task
    /// to deliver (so the actor can move on to the next execution).
    pub fn close(mut self) -> Option<Sink> {
        self.flush();
        (!self.gone && !self.backlog.is_empty()).then_some(self)
    }

    /// Delivers the rest of the backlog, waiting for the consumer (see [`Sink::close`]).
    pub async fn drain(self) {
        for event in self.backlog {
            if self.tx.send(event).await.is_err() {
                break;
            }
        }
    }
}

fn event_size(event: &Event) -> usize {
    match event {
        Event::Output { data, .. } => data.len(),
        _ => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(data: &str) -> Event {
        Event::Output {
            stream: crate::protocol::StreamName::Stdout,
            data: data.into(),
        }
    }

    #[test]
    fn a_full_channel_keeps_order_in_the_backlog() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut sink = Sink::new(tx);
        sink.push(output("a"));
        sink.push(output("bb"));
        sink.push(output("ccc"));
        assert_eq!(sink.backlog_bytes(), 5);
        assert!(sink.waiting_for_room().is_some());
        assert_eq!(rx.try_recv().ok(), Some(output("a")));
        sink.flush();
        assert_eq!(sink.backlog_bytes(), 3);
        let rest = sink
            .close()
            .expect("the channel is full: a backlog is left");
        assert_eq!(rest.backlog_bytes(), 3);
        assert_eq!(rx.try_recv().ok(), Some(output("bb")));
    }

    #[test]
    fn a_dropped_consumer_discards_events() {
        let (tx, rx) = mpsc::channel(1);
        let mut sink = Sink::new(tx);
        drop(rx);
        sink.push(output("a"));
        sink.push(output("b"));
        assert_eq!(sink.backlog_bytes(), 0);
        assert!(sink.close().is_none());
    }
}
