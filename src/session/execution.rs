//! One execution as the library hands it out: the [`Event`]s it reports, the [`Execution`]
//! stream of them, and the [`ExecutionOutcome`] gathered from it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;

use super::{Bundle, Display, TransactionOutcome};
use crate::protocol::StreamName;

/// What an execution reports, in order. Exactly one terminal event (`Result` or `Error`)
/// ends every execution, after all of its output.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Output {
        stream: StreamName,
        data: String,
    },
    /// The code is waiting in `input()`; answer with [`Session::input_response`].
    Input {
        input_id: String,
        prompt: String,
        password: bool,
    },
    /// A rich output (`display()`, a matplotlib figure), in order with the output.
    Display(Display),
    Result {
        /// The trailing expression's value when JSON-serialisable, else `null`.
        value: serde_json::Value,
        /// `repr()` of the trailing expression's value; `None` when there was none or it
        /// was `None`.
        repr: Option<String>,
        /// The value's MIME bundle when it has representations beyond its repr (a
        /// DataFrame's `text/html`; `text/plain` is the repr).
        bundle: Option<Box<Bundle>>,
        execution_time: Duration,
        /// What became of the execution's changes, when it ran in a transaction.
        transaction: Option<TransactionOutcome>,
    },
    Error {
        exception_type: String,
        exception_message: String,
        traceback: String,
        /// What became of the execution's changes, when it ran in a transaction.
        transaction: Option<TransactionOutcome>,
        /// For `SystemExit`: the status `python` would exit with (see `protocol::ErrorMsg`).
        exit_code: Option<u8>,
    },
}

impl Event {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Result { .. } | Event::Error { .. })
    }

    pub(crate) fn error(exception_type: &str, message: impl Into<String>) -> Event {
        let message = message.into();
        Event::Error {
            exception_type: exception_type.to_string(),
            traceback: format!("{exception_type}: {message}\n"),
            exception_message: message,
            transaction: None,
            exit_code: None,
        }
    }

    /// The same terminal event, saying what became of its transaction.
    pub(crate) fn with_transaction(mut self, outcome: Option<TransactionOutcome>) -> Event {
        if let Event::Result { transaction, .. } | Event::Error { transaction, .. } = &mut self {
            *transaction = outcome;
        }
        self
    }
}

/// One submitted execution: a stream of its [`Event`]s that ends after the terminal event.
/// Dropping it does not stop the code; its remaining events are discarded.
#[derive(Debug)]
pub struct Execution {
    pub(super) id: String,
    pub(super) events: mpsc::Receiver<Event>,
}

impl Execution {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event, `None` after the terminal one.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Waits for the end and gathers the output. Input requests are not answered here: use
    /// the stream for code that calls `input()`.
    pub async fn outcome(mut self) -> ExecutionOutcome {
        let mut outcome = ExecutionOutcome {
            stdout: String::new(),
            stderr: String::new(),
            events: Vec::new(),
            terminal: Event::error("SessionClosed", "the execution ended without a result"),
        };
        while let Some(event) = self.events.recv().await {
            match &event {
                Event::Output {
                    stream: StreamName::Stdout,
                    data,
                } => outcome.stdout.push_str(data),
                Event::Output {
                    stream: StreamName::Stderr,
                    data,
                } => outcome.stderr.push_str(data),
                _ => {}
            }
            if event.is_terminal() {
                outcome.terminal = event.clone();
            }
            outcome.events.push(event);
        }
        outcome
    }
}

impl Stream for Execution {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

/// Everything an execution produced, gathered by [`Execution::outcome`].
#[derive(Debug, Clone)]
pub struct ExecutionOutcome {
    pub stdout: String,
    pub stderr: String,
    /// Every event in order, the terminal one last.
    pub events: Vec<Event>,
    pub terminal: Event,
}

impl ExecutionOutcome {
    /// `repr` of the result, if the execution ended with one.
    pub fn repr(&self) -> Option<&str> {
        match &self.terminal {
            Event::Result { repr, .. } => repr.as_deref(),
            _ => None,
        }
    }

    /// The rich outputs (`display()`, figures), in order.
    pub fn displays(&self) -> impl Iterator<Item = &Display> {
        self.events.iter().filter_map(|event| match event {
            Event::Display(display) => Some(display),
            _ => None,
        })
    }

    /// The exception type, if the execution ended with an error.
    pub fn error_type(&self) -> Option<&str> {
        match &self.terminal {
            Event::Error { exception_type, .. } => Some(exception_type),
            _ => None,
        }
    }
}
