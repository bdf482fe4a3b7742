//! What a checkpoint is on the host's side: the opaque saved namespace (made and read only by
//! the worker's agent; docs/protocol.md, "Checkpoints") and the reports that come with making
//! and restoring one, parsed from the agent's answers.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::Error;

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
}

/// A name left out of a checkpoint or of a restore, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotSaved {
    pub name: String,
    pub reason: String,
}

/// What [`super::Session::restore`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Names restored.
    pub restored: Vec<String>,
    /// Names that could not be restored, each with the reason.
    pub failed: Vec<NotSaved>,
}

#[derive(Deserialize)]
struct CheckpointReport {
    checkpoint: String,
    saved: Vec<String>,
    skipped: Vec<NotSaved>,
}

/// The agent's checkpoint report (a result's value) as a [`Checkpoint`].
pub(super) fn parse_checkpoint(report: serde_json::Value) -> Result<Checkpoint, Error> {
    let report: CheckpointReport = serde_json::from_value(report)
        .map_err(|e| Error::Checkpoint(format!("the worker's report is malformed: {e}")))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(report.checkpoint)
        .map_err(|e| Error::Checkpoint(format!("the worker's checkpoint is malformed: {e}")))?;
    Ok(Checkpoint {
        data,
        saved: report.saved,
        skipped: report.skipped,
    })
}

/// The agent's restore report (a result's value).
pub(super) fn parse_restore(report: serde_json::Value) -> Result<RestoreReport, Error> {
    serde_json::from_value(report)
        .map_err(|e| Error::Checkpoint(format!("the worker's report is malformed: {e}")))
}
