//! The sending half of a WebSocket connection: followed executions' events in submission
//! order, replies and pings, each send racing the reading side's request to close.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::liveness::Progress;
use super::Outgoing;
use crate::service::{LoggedEvent, Reader, Service};

/// Close code of the server's shutdown (1001: going away).
const SHUTTING_DOWN: u16 = 1001;

/// What stopped the writer in the middle of a send.
enum Stop {
    /// The socket failed.
    Gone,
    /// The reading side asks to close with this frame (the client is not reading).
    Close(CloseFrame),
}

/// The sending half, and the reading side's request to close it.
pub(super) struct Writer {
    pub(super) sink: SplitSink<WebSocket, WsMessage>,
    pub(super) close: oneshot::Receiver<CloseFrame>,
    /// How long the last frames (the close frame; at shutdown, also what the logs still
    /// hold) may take to get out to a client that is slow to read: the pong timeout.
    pub(super) patience: Duration,
    /// Pings written, and writes the client took after a wait (see [`Liveness`]).
    pub(super) progress: watch::Sender<Progress>,
}

impl Writer {
    /// Sends one message, unless a close is asked for meanwhile (a send to a client that
    /// does not read never completes). A send that had to wait for the socket and went
    /// through is counted as progress (the client read).
    async fn send(&mut self, message: WsMessage) -> Result<(), Stop> {
        let is_ping = matches!(message, WsMessage::Ping(_));
        let mut waited = false;
        let sent = {
            let mut send = std::pin::pin!(self.sink.send(message));
            let send = std::future::poll_fn(|cx| {
                let poll = std::future::Future::poll(send.as_mut(), cx);
                // Pending with budget left: the socket (or the other half's lock) made it
                // wait, not the runtime's cooperative budget.
                waited |= poll.is_pending() && tokio::task::coop::has_budget_remaining();
                poll
            });
            tokio::select! {
                sent = send => sent.map_err(|_| Stop::Gone),
                frame = &mut self.close => Err(frame.map_or(Stop::Gone, Stop::Close)),
            }
        };
        if sent.is_ok() && (is_ping || waited) {
            self.progress.send_modify(|p| {
                if is_ping {
                    p.pings_written += 1;
                } else {
                    p.waited_writes += 1;
                }
            });
        }
        sent
    }

    async fn send_events(&mut self, events: Vec<LoggedEvent>) -> Result<(), Stop> {
        for LoggedEvent { text, .. } in events {
            self.send(WsMessage::Text((*text).into())).await?;
        }
        Ok(())
    }

    /// The last frame, within the patience.
    async fn close_with(mut self, frame: Option<CloseFrame>) {
        let close = self.sink.send(WsMessage::Close(frame));
        // not polling: one deadline for a client that is slow to take its close frame.
        let _ = tokio::time::timeout(self.patience, close).await;
    }
}

/// Owns the sending half: followed executions' events in submission order, replies and
/// pings. A slow client makes `send` wait, which leaves events undelivered in the log,
/// which holds the worker back (see `service::execlog`); meanwhile what the reading side
/// queues waits in the bounded channel.
pub(super) async fn write_loop(
    mut writer: Writer,
    mut out: mpsc::Receiver<Outgoing>,
    resumed: VecDeque<Reader>,
    service: Service,
) {
    let mut queue = resumed;
    let mut out_open = true;
    let stopped = loop {
        let step = tokio::select! {
            item = out.recv(), if out_open => match item {
                Some(Outgoing::Follow(reader)) => {
                    queue.push_back(reader);
                    Ok(())
                }
                Some(Outgoing::Reply(reply)) => {
                    writer.send(WsMessage::Text(reply.to_string().into())).await
                }
                Some(Outgoing::Ping) => writer.send(WsMessage::Ping(Default::default())).await,
                None if queue.is_empty() => return,
                None => {
                    out_open = false;
                    Ok(())
                }
            },
            batch = next_batch(queue.front_mut()) => match batch {
                Some(events) => writer.send_events(events).await,
                None => {
                    queue.pop_front();
                    if queue.is_empty() && !out_open {
                        return;
                    }
                    Ok(())
                }
            },
            frame = &mut writer.close => Err(frame.map_or(Stop::Gone, Stop::Close)),
            _ = service.stopped() => break None,
        };
        if let Err(stop) = step {
            break Some(stop);
        }
    };
    match stopped {
        Some(Stop::Gone) => {}
        Some(Stop::Close(frame)) => {
            // What this connection holds is released before the close frame waits.
            drop(queue);
            drop(out);
            writer.close_with(Some(frame)).await;
        }
        None => {
            // Shutdown: send what the logs still hold (they end at shutdown), then close,
            // all within the deadline.
            // not polling: one deadline for the last frames to a client that may not read.
            let _ = tokio::time::timeout(writer.patience, async {
                while let Some(mut reader) = queue.pop_front() {
                    if writer.send_events(reader.rest()).await.is_err() {
                        return;
                    }
                }
                // 1001 "going away": a client can tell the server's shutdown from a
                // connection lost on the way (1006).
                let _ = writer
                    .sink
                    .send(WsMessage::Close(Some(CloseFrame {
                        code: SHUTTING_DOWN,
                        reason: "the server is shutting down".into(),
                    })))
                    .await;
            })
            .await;
        }
    }
}

async fn next_batch(reader: Option<&mut Reader>) -> Option<Vec<LoggedEvent>> {
    match reader {
        Some(reader) => reader.next_batch().await,
        None => std::future::pending().await,
    }
}
