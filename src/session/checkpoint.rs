//! What a checkpoint is on the host's side: the opaque saved namespace (made and read only by
//! the worker's agent; docs/protocol.md, "Checkpoints") and the reports that come with making
//! and restoring one, parsed from the agent's answers.

use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::requests::{Command, WorkerRequest};
use super::{Event, ExecuteOptions, Session};
use crate::error::Error;
use crate::protocol;

/// How long `namespace()` waits for the worker's answer: the reprs of user objects run user
/// code, which may be slow.
pub(super) const NAMESPACE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a checkpoint or a restore may run when the caller sets no limit: its pickling
/// runs user code (`__reduce__`), which may never return.
pub const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest checkpoint a worker makes or takes (compressed; its base64 fits a frame).
pub const MAX_CHECKPOINT_BYTES: usize = 11 << 20;

impl Session {
    /// What the namespace holds: each user global with its type, a short repr, its size, and
    /// the source of functions and classes defined in the session. Answered by the worker's
    /// reader thread, so it does not wait for a running execution (what it shows may then be
    /// mid-change).
    pub async fn namespace(&self) -> Result<protocol::NamespaceReply, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner
            .commands
            .send(Command::Ask(WorkerRequest::Namespace { reply }))
            .map_err(|_| Error::SessionClosed)?;
        // not polling: one deadline for one answer.
        match tokio::time::timeout(NAMESPACE_DEADLINE, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(Error::SessionDead(
                "no answer to namespace: the worker is not ready".into(),
            )),
            Err(_) => Err(Error::ReplyTimeout {
                request: "namespace",
                deadline: NAMESPACE_DEADLINE,
            }),
        }
    }

    /// Saves the namespace (`src/session/checkpoint.rs`): each user global on its own,
    /// functions and classes defined in the session by their source, modules by name; what
    /// cannot be saved is listed with the reason. Runs as an execution (queued behind those
    /// before it; `timeout`, cancel and the session's limits apply), outside the history.
    pub async fn checkpoint(&self, timeout: Option<Duration>) -> Result<Checkpoint, Error> {
        let options = ExecuteOptions {
            timeout: Some(timeout.unwrap_or(DEFAULT_CHECKPOINT_TIMEOUT)),
            ..ExecuteOptions::default()
        };
        let report = self
            .internal_call(serde_json::json!({"call": "checkpoint"}), options)
            .await?;
        parse_checkpoint(report)
    }

    /// Restores a checkpoint made by [`Session::checkpoint`] (in this session or another,
    /// of the same Python minor version): merged into the namespace, or replacing every
    /// user global with `clear_existing`. Each name that could not be restored is listed
    /// with the reason; a checkpoint that is not one (corrupt, foreign, another Python) is
    /// refused with [`Error::Checkpoint`] and the namespace is left as it was.
    pub async fn restore(
        &self,
        checkpoint: &[u8],
        clear_existing: bool,
        timeout: Option<Duration>,
    ) -> Result<RestoreReport, Error> {
        if checkpoint.len() > MAX_CHECKPOINT_BYTES {
            return Err(Error::Checkpoint(format!(
                "the checkpoint is {} bytes; at most {MAX_CHECKPOINT_BYTES} are taken",
                checkpoint.len()
            )));
        }
        let options = ExecuteOptions {
            timeout: Some(timeout.unwrap_or(DEFAULT_CHECKPOINT_TIMEOUT)),
            ..ExecuteOptions::default()
        };
        let call = serde_json::json!({
            "call": "restore",
            "checkpoint": base64::engine::general_purpose::STANDARD.encode(checkpoint),
            "clear_existing": clear_existing,
        });
        let report = self.internal_call(call, options).await?;
        parse_restore(report)
    }

    /// Runs one of the agent's own operations as an execution; its report (the result's
    /// value), or its error as [`Error::Checkpoint`].
    async fn internal_call(
        &self,
        call: serde_json::Value,
        options: ExecuteOptions,
    ) -> Result<serde_json::Value, Error> {
        let outcome = self
            .submit(String::new(), options, Some(call))
            .outcome()
            .await;
        match outcome.terminal {
            Event::Result { value, .. } => Ok(value),
            Event::Error {
                exception_type,
                exception_message,
                ..
            } => Err(Error::Checkpoint(if exception_message.is_empty() {
                exception_type
            } else {
                format!("{exception_type}: {exception_message}")
            })),
            other => Err(Error::Checkpoint(format!("unexpected end: {other:?}"))),
        }
    }

    /// Runs `code` of the host's own (the pool's warm-up) in the namespace, outside the
    /// session's history (`In`, `Out`, numbering). Its terminal event.
    pub(crate) async fn warm_up(&self, code: &str) -> Event {
        self.submit(
            String::new(),
            ExecuteOptions::default(),
            Some(serde_json::json!({"call": "run", "code": code})),
        )
        .outcome()
        .await
        .terminal
    }
}

/// A saved namespace, from [`super::Session::checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The checkpoint itself: compressed, opaque; restored by [`super::Session::restore`]
    /// into a session of the same Python minor version.
    pub data: Vec<u8>,
    /// Names saved.
    pub saved: Vec<String>,
    /// Names that could not be saved, each with the reason (an open file, a generator...).
    pub skipped: Vec<NotSaved>,
    /// The distributions installed in the session's package directory, `name==version`
    /// (recorded, not saved: a restore lists them).
    pub packages: Vec<String>,
}

/// A name left out of a checkpoint or of a restore, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct NotSaved {
    pub name: String,
    pub reason: String,
}

/// What [`super::Session::restore`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RestoreReport {
    /// Names restored.
    pub restored: Vec<String>,
    /// Names that could not be restored, each with the reason.
    pub failed: Vec<NotSaved>,
    /// The distributions the checkpoint's session had installed (`name==version`): listed,
    /// not installed by the restore. Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Those of `packages` this session does not have at that version (install them with
    /// `%pip install`). Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages_missing: Vec<String>,
}

#[derive(Deserialize)]
struct CheckpointReport {
    checkpoint: String,
    saved: Vec<String>,
    skipped: Vec<NotSaved>,
    #[serde(default)]
    packages: Vec<String>,
}

/// The agent's checkpoint report (a result's value) as a [`Checkpoint`].
fn parse_checkpoint(report: serde_json::Value) -> Result<Checkpoint, Error> {
    let report: CheckpointReport = serde_json::from_value(report)
        .map_err(|e| Error::Checkpoint(format!("the worker's report is malformed: {e}")))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(report.checkpoint)
        .map_err(|e| Error::Checkpoint(format!("the worker's checkpoint is malformed: {e}")))?;
    Ok(Checkpoint {
        data,
        saved: report.saved,
        skipped: report.skipped,
        packages: report.packages,
    })
}

/// The agent's restore report (a result's value).
fn parse_restore(report: serde_json::Value) -> Result<RestoreReport, Error> {
    serde_json::from_value(report)
        .map_err(|e| Error::Checkpoint(format!("the worker's report is malformed: {e}")))
}
