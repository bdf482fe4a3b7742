//! A WebSocket connection's liveness: when the peer was last heard from, the one deadline
//! (the next ping, or the pong due), and what the writer reports of its progress.

use std::time::Duration;

use tokio::time::Instant;

/// When the peer was last heard from, and whether a ping is out: one deadline per
/// connection, the next ping or the pong due.
///
/// A ping reaches the client only after what was written before it, and a slow client on a
/// busy connection may take longer than the pong timeout to read that far while reading all
/// along. So the pong is due `pong_timeout` after the ping was *written* (not queued), and a
/// write that had to wait for the client and went through shows the client reading: it
/// counts like a frame from it. A frozen client is still caught: a ping written to a quiet
/// connection gets no answer, and on a busy one the socket's buffers fill and no write goes
/// through any more (the pong deadline from the ping's queuing then passes).
pub(super) struct Liveness {
    ping_interval: Duration,
    pong_timeout: Duration,
    /// A ping is out and nothing was heard since it was queued: the deadline is the pong's.
    pub(super) pinged: bool,
    /// A ping waits for the writer: no second one is queued.
    pub(super) ping_queued: bool,
    pub(super) deadline: Instant,
}

impl Liveness {
    pub(super) fn new(ping_interval: Duration, pong_timeout: Duration) -> Self {
        Liveness {
            ping_interval,
            pong_timeout,
            pinged: false,
            ping_queued: false,
            deadline: crate::time::deadline(Instant::now(), ping_interval),
        }
    }

    /// A frame from the peer (or a write it took) shows it alive: the next ping is due after
    /// a silence.
    pub(super) fn heard(&mut self) {
        self.pinged = false;
        self.deadline = crate::time::deadline(Instant::now(), self.ping_interval);
    }

    /// A ping is queued (unless one still waits for the writer): the pong is due within the
    /// pong timeout, also if the writer never gets the ping out (the client is not reading).
    pub(super) fn pinged(&mut self) {
        self.pinged = true;
        self.ping_queued = true;
        self.deadline = crate::time::deadline(Instant::now(), self.pong_timeout);
    }

    /// The writer has written the ping: the pong is due within the pong timeout from now,
    /// unless the peer was heard from since the ping was queued.
    pub(super) fn ping_written(&mut self) {
        self.ping_queued = false;
        if self.pinged {
            self.deadline = crate::time::deadline(Instant::now(), self.pong_timeout);
        }
    }
}

/// What the writer tells the reading side about its progress (counters: the reading side
/// acts on their changes).
#[derive(Clone, Copy, Default, PartialEq)]
pub(super) struct Progress {
    /// Pings written to the socket.
    pub(super) pings_written: u64,
    /// Writes that had to wait for the socket (the client's receive window was full) and
    /// then went through: the client read.
    pub(super) waited_writes: u64,
}
