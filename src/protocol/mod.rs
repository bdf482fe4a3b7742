//! The wire protocol between host and worker: the message enum (JSON objects tagged by
//! `type`) and the length-prefixed frame codec. `docs/protocol.md` is the contract; this module
//! is its Rust form and owns nothing else.

mod codec;
mod marker;

pub use codec::{MessageCodec, ProtocolError, DEFAULT_MAX_FRAME_LEN};
pub use marker::{MarkerScanner, Piece};

use serde::{Deserialize, Serialize};

/// Which output pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    Stdout,
    Stderr,
}

impl StreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// What happens to the session's state after an execution (docs/transactions.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TransactionPolicy {
    /// Whatever the code changed stays (no snapshot is taken).
    #[default]
    CommitAlways,
    /// An execution that ends with an error (or is killed) leaves the state as it was.
    RollbackOnFailure,
    /// The state is put back after every execution.
    RollbackAlways,
}

impl TransactionPolicy {
    /// Whether executions under this policy run in a transaction (with a snapshot).
    pub fn rolls_back(self) -> bool {
        self != TransactionPolicy::CommitAlways
    }
}

/// What became of a transaction's changes, reported on its terminal frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TransactionOutcome {
    /// The changes were kept.
    Committed,
    /// The session is back at its state before the execution.
    RolledBack,
    /// A rollback was due but could not be done (the snapshot was gone, or the terminal frame
    /// could not be handed to it): the changes were kept.
    RollbackFailed,
}

/// Every message of the protocol. The `type` field selects the variant; every variant has
/// an `id` that is unique within its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Execute(Execute),
    Output(Output),
    Input(InputRequest),
    InputResponse(InputResponse),
    Display(DisplayMsg),
    Result(ResultMsg),
    Error(ErrorMsg),
    Cancel(Cancel),
    Interrupt(Interrupt),
    Ready(Ready),
    Heartbeat(Heartbeat),
    Shutdown(Shutdown),
    IsComplete(IsComplete),
    IsCompleteReply(IsCompleteReply),
    Namespace(NamespaceRequest),
    NamespaceReply(NamespaceReply),
    Complete(CompleteRequest),
    CompleteReply(CompleteReply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execute {
    pub id: String,
    pub code: String,
    /// The host's number for this execution (1, 2, ... per worker): the target a SIGINT is
    /// meant for (see `WorkerProcess::interrupt_main_thread` in `src/worker/process.rs`).
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub transaction_policy: TransactionPolicy,
    #[serde(default)]
    pub capture_source: bool,
    /// An operation of the agent's own run in place of `code`, as an execution (so that
    /// cancel and timeouts apply to it): `{"call": "checkpoint"}` or `{"call": "restore",
    /// "checkpoint": <base64>, "clear_existing": bool}` (docs/protocol.md). Its result's
    /// `value` is the operation's report; it is not part of the session's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<serde_json::Value>,
    /// How the code is run (see [`CodeMode`]).
    #[serde(default, skip_serializing_if = "CodeMode::is_cell")]
    pub mode: CodeMode,
}

/// How an execution's code is run: as a cell of a notebook-like session, as a statement typed
/// at the Python REPL, or as `python -c` runs code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeMode {
    /// A trailing expression's value is the result; once asyncio is in use every cell runs
    /// in the session's event loop, as in `python -m asyncio`.
    #[default]
    Cell,
    /// As the interactive interpreter runs a statement (`pyrepl3 repl`): the value of every
    /// expression statement is shown as it is computed (`sys.displayhook`), as output; the
    /// result then carries no value of its own. The event loop as for `Cell`.
    Interactive,
    /// As `python -c` runs code (`pyrepl3 exec`): code that does not await runs outside the
    /// event loop, so `asyncio.run()` and `loop.run_until_complete()` work as in a script.
    /// The trailing expression's value is still the result.
    Script,
}

impl CodeMode {
    pub fn is_cell(&self) -> bool {
        *self == CodeMode::Cell
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub id: String,
    pub execution_id: String,
    pub stream: StreamName,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRequest {
    /// The input id that an `input_response` names.
    pub id: String,
    pub execution_id: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub password: bool,
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Whether markers on the pipes precede this message (see `docs/protocol.md`).
    #[serde(default = "marked_default", skip_serializing_if = "is_true")]
    pub marked: bool,
}

fn marked_default() -> bool {
    true
}

/// `marked` is worker → host only: clients never see the default.
fn is_true(b: &bool) -> bool {
    *b
}

/// A MIME bundle, as Jupyter's messages carry one: MIME type → content (text, base64 text for
/// binary types such as `image/png`, JSON for `application/json`).
pub type MimeBundle = serde_json::Map<String, serde_json::Value>;

/// A rich output of an execution (`display()`, a figure, a rich value in the REPL), ordered
/// with its output like an input request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisplayMsg {
    pub id: String,
    pub execution_id: String,
    /// Always has `text/plain`.
    pub data: MimeBundle,
    #[serde(default)]
    pub metadata: MimeBundle,
    /// Set by `display(..., display_id=...)`: later displays with `update` replace it.
    #[serde(default)]
    pub display_id: Option<String>,
    #[serde(default)]
    pub update: bool,
    #[serde(default = "marked_default", skip_serializing_if = "is_true")]
    pub marked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputResponse {
    pub id: String,
    pub input_id: String,
    /// `None` is end-of-file: `input()` raises `EOFError`.
    pub data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMsg {
    pub id: String,
    pub execution_id: String,
    #[serde(default)]
    pub value: serde_json::Value,
    #[serde(default)]
    pub repr: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub execution_time: f64,
    /// Set when the execution ran in a transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TransactionOutcome>,
    /// The value's MIME bundle, when it has representations beyond its repr (a DataFrame's
    /// `text/html`, a figure's `image/png`); `text/plain` is then the repr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<MimeBundle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MimeBundle>,
    /// Set when another process now runs the session (a rolled-back transaction's snapshot
    /// took over): its pid, as the worker sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pid: Option<u32>,
    /// With `worker_pid`: the CPU seconds the session's earlier worker processes used (a
    /// process's CPU-time limit counts from its own start; the host lowers the new one's by
    /// this much).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_before: Option<f64>,
    #[serde(default = "marked_default", skip_serializing_if = "is_true")]
    pub marked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub id: String,
    #[serde(default)]
    pub execution_id: Option<String>,
    pub exception_type: String,
    #[serde(default)]
    pub exception_message: String,
    #[serde(default)]
    pub traceback: String,
    /// Set when the execution ran in a transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TransactionOutcome>,
    /// Set when another process now runs the session (a rolled-back transaction's snapshot
    /// took over): its pid, as the worker sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pid: Option<u32>,
    /// With `worker_pid`: the CPU seconds the session's earlier worker processes used (a
    /// process's CPU-time limit counts from its own start; the host lowers the new one's by
    /// this much).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_before: Option<f64>,
    /// For `SystemExit`: the status the interpreter would exit with (`sys.exit(3)`: 3, no
    /// argument: 0, a message: 1, the message then in `exception_message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    #[serde(default = "marked_default", skip_serializing_if = "is_true")]
    pub marked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    pub id: String,
    pub execution_id: String,
    #[serde(default = "default_grace_ms")]
    pub grace_timeout_ms: u64,
}

fn default_grace_ms() -> u64 {
    500
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interrupt {
    pub id: String,
    pub execution_id: String,
    #[serde(default)]
    pub force_restart: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub id: String,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub pid: u32,
    #[serde(default)]
    pub python_version: String,
}

/// Sent by the host without fields; answered by the worker with the fields filled and
/// `in_reply_to` naming the request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_usage: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shutdown {
    pub id: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub checkpoint: bool,
}

/// Asks whether `code` is a complete statement, as the interactive interpreter decides it
/// (`codeop`, "single" mode); answered by the worker's reader thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsComplete {
    pub id: String,
    pub code: String,
}

/// What the interactive interpreter would do with the code of an `is_complete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletenessStatus {
    /// Run it.
    Complete,
    /// Ask for another line (an open block, bracket, string or a trailing backslash).
    Incomplete,
    /// A syntax error: running it shows the error with its caret.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsCompleteReply {
    pub id: String,
    pub in_reply_to: String,
    pub status: CompletenessStatus,
    /// Suggested indentation of the next line (reserved: the worker sends `""`).
    #[serde(default)]
    pub indent: String,
}

/// Asks how the text before a cursor could go on (Tab in the REPL): names, attributes and
/// mapping keys from the live namespace; answered by the worker's reader thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteRequest {
    pub id: String,
    /// The text before the cursor.
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteReply {
    pub id: String,
    pub in_reply_to: String,
    /// The end of `code` that each match replaces.
    #[serde(default)]
    pub token: String,
    /// At most 200, sorted.
    #[serde(default)]
    pub matches: Vec<String>,
}

/// Asks what the session's namespace holds; answered by the worker's reader thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceRequest {
    pub id: String,
}

/// The session's namespace: its user globals (not dunders, not the history), sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceReply {
    pub id: String,
    pub in_reply_to: String,
    pub entries: Vec<NamespaceEntry>,
    /// Entries were left out to keep the answer within its bound (see docs/protocol.md).
    #[serde(default)]
    pub truncated: bool,
}

/// One name of the namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct NamespaceEntry {
    pub name: String,
    /// The value's type, `module.qualname` (`builtins.` left out).
    #[serde(rename = "type")]
    pub type_name: String,
    /// A short `repr` (at most 200 characters, containers abbreviated).
    pub repr: String,
    /// `sys.getsizeof` of the value (the object itself, not what it refers to); `null` when
    /// it cannot be told.
    pub size: Option<u64>,
    /// For functions and classes defined in the session: their source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For modules: the module's name (what `import` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Message {
    /// The id of the host's request this message answers, for replies.
    pub fn in_reply_to(&self) -> Option<&str> {
        match self {
            Message::Heartbeat(beat) => beat.in_reply_to.as_deref(),
            Message::IsCompleteReply(reply) => Some(&reply.in_reply_to),
            Message::NamespaceReply(reply) => Some(&reply.in_reply_to),
            Message::CompleteReply(reply) => Some(&reply.in_reply_to),
            _ => None,
        }
    }

    /// The `type` tag, for logs and errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Execute(_) => "execute",
            Message::Output(_) => "output",
            Message::Input(_) => "input",
            Message::InputResponse(_) => "input_response",
            Message::Display(_) => "display",
            Message::Result(_) => "result",
            Message::Error(_) => "error",
            Message::Cancel(_) => "cancel",
            Message::Interrupt(_) => "interrupt",
            Message::Ready(_) => "ready",
            Message::Heartbeat(_) => "heartbeat",
            Message::Shutdown(_) => "shutdown",
            Message::IsComplete(_) => "is_complete",
            Message::IsCompleteReply(_) => "is_complete_reply",
            Message::Namespace(_) => "namespace",
            Message::NamespaceReply(_) => "namespace_reply",
            Message::Complete(_) => "complete",
            Message::CompleteReply(_) => "complete_reply",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_use_the_documented_json_shape() {
        let msg = Message::Execute(Execute {
            id: "e1".into(),
            code: "1+1".into(),
            seq: 1,
            transaction_id: None,
            transaction_policy: TransactionPolicy::CommitAlways,
            capture_source: false,
            internal: None,
            mode: CodeMode::Cell,
        });
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["type"], "execute");
        assert_eq!(json["id"], "e1");
        assert_eq!(json["transaction_policy"], "commit_always");

        let parsed: Message = serde_json::from_str(
            r#"{"type":"result","id":"w1-1","execution_id":"e1","value":2,"repr":"2","execution_time":0.5,"extra":1}"#,
        )
        .unwrap();
        match parsed {
            Message::Result(r) => {
                assert_eq!(r.value, serde_json::json!(2));
                assert_eq!(r.repr.as_deref(), Some("2"));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn is_complete_messages_use_the_documented_json_shape() {
        let ask = Message::IsComplete(IsComplete {
            id: "h1".into(),
            code: "def f():".into(),
        });
        let json = serde_json::to_value(&ask).unwrap();
        assert_eq!(json["type"], "is_complete");
        assert_eq!(json["code"], "def f():");
        assert_eq!(ask.type_name(), "is_complete");

        let parsed: Message = serde_json::from_str(
            r#"{"type":"is_complete_reply","id":"w1-3","in_reply_to":"h1","status":"incomplete","indent":""}"#,
        )
        .unwrap();
        assert_eq!(parsed.type_name(), "is_complete_reply");
        match &parsed {
            Message::IsCompleteReply(r) => {
                assert_eq!(r.in_reply_to, "h1");
                assert_eq!(r.status, CompletenessStatus::Incomplete);
            }
            other => panic!("parsed as {other:?}"),
        }
        let json = serde_json::to_value(&parsed).unwrap();
        assert_eq!(json["status"], "incomplete");
        for (text, status) in [
            ("complete", CompletenessStatus::Complete),
            ("invalid", CompletenessStatus::Invalid),
        ] {
            let reply: Message = serde_json::from_value(serde_json::json!(
                {"type": "is_complete_reply", "id": "w", "in_reply_to": "h", "status": text}
            ))
            .unwrap();
            assert!(
                matches!(reply, Message::IsCompleteReply(r) if r.status == status && r.indent.is_empty())
            );
        }
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let msg = Message::InputResponse(InputResponse {
            id: "h1".into(),
            input_id: "w1-2".into(),
            data: None,
        });
        use tokio_util::codec::{Decoder, Encoder};
        let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME_LEN);
        let mut buf = bytes::BytesMut::new();
        codec.encode(msg.clone(), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }
}
