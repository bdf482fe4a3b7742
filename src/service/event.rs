//! The events of an execution as clients see them ([`ClientEvent`]): the service's own type,
//! separate from the host ⇄ worker wire enum `protocol::Message`, so that either can change
//! without the other. Its JSON is the documented event schema of `docs/api.md` (the execution
//! log adds `seq`); `pyrepl3 exec --json` prints it as it is.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::{StreamName, TransactionOutcome};
use crate::session::{Event, MimeBundle};

/// One event of an execution, as sent to clients. The fields are declared in the order
/// `exec --json` has always printed them; `id` is a fresh UUID per event, except for
/// `input`, whose `id` is the input id that an answer names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    Output {
        id: String,
        execution_id: String,
        stream: StreamName,
        data: String,
    },
    Input {
        /// The input id to answer.
        id: String,
        execution_id: String,
        prompt: String,
        /// True for `getpass`.
        password: bool,
        /// Always `null`: an input request waits as long as the execution may run.
        timeout: Option<f64>,
    },
    /// A rich output: `display()`, a matplotlib figure (docs/api.md, "Rich outputs").
    Display {
        id: String,
        execution_id: String,
        /// MIME type → content (base64 for binary types); always has `text/plain`.
        #[cfg_attr(feature = "server", schema(value_type = Object))]
        data: MimeBundle,
        #[cfg_attr(feature = "server", schema(value_type = Object))]
        metadata: MimeBundle,
        /// Set by `display(..., display_id=...)`: a display with the same id and `update`
        /// replaces it.
        display_id: Option<String>,
        update: bool,
    },
    Result {
        id: String,
        execution_id: String,
        /// The trailing expression's value when JSON-serialisable, else `null`.
        value: Value,
        repr: Option<String>,
        /// The value's MIME bundle, when it has representations beyond its repr.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
        data: Option<MimeBundle>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
        metadata: Option<MimeBundle>,
        /// Seconds.
        execution_time: f64,
        /// Present when the execution ran in a transaction.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction: Option<TransactionReport>,
    },
    Error {
        id: String,
        execution_id: String,
        exception_type: String,
        exception_message: String,
        traceback: String,
        /// Present when the execution ran in a transaction.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction: Option<TransactionReport>,
        /// For `SystemExit`: the status `python` would exit with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<u8>,
    },
}

/// What became of a transaction's changes, as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TransactionReport {
    pub outcome: TransactionOutcome,
    /// What a rollback does not cover (or why there was none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl TransactionReport {
    fn of(outcome: Option<TransactionOutcome>) -> Option<TransactionReport> {
        let note = match outcome? {
            TransactionOutcome::Committed => None,
            TransactionOutcome::RolledBack => Some(
                "the session's state is back as it was before the execution; effects outside \
                 the worker process (files written, network traffic, processes started) are \
                 not undone",
            ),
            TransactionOutcome::RollbackFailed => Some(
                "a rollback was due but could not be done (the snapshot was gone, ended from \
                 outside by the kernel's OOM killer or a signal; or the result could not be \
                 handed to it): the execution's changes were kept",
            ),
        };
        Some(TransactionReport {
            outcome: outcome?,
            note: note.map(str::to_string),
        })
    }
}

impl ClientEvent {
    /// `event` of execution `execution_id`, with a fresh event id.
    pub fn from_session(execution_id: &str, event: &Event) -> ClientEvent {
        let id = uuid::Uuid::new_v4().to_string();
        let execution_id = execution_id.to_string();
        match event.clone() {
            Event::Output { stream, data } => ClientEvent::Output {
                id,
                execution_id,
                stream,
                data,
            },
            Event::Input {
                input_id,
                prompt,
                password,
            } => ClientEvent::Input {
                id: input_id,
                execution_id,
                prompt,
                password,
                timeout: None,
            },
            Event::Display(display) => ClientEvent::Display {
                id,
                execution_id,
                data: display.data,
                metadata: display.metadata,
                display_id: display.display_id,
                update: display.update,
            },
            Event::Result {
                value,
                repr,
                bundle,
                execution_time,
                transaction,
            } => {
                let (data, metadata) = match bundle {
                    Some(bundle) => (Some(bundle.data), Some(bundle.metadata)),
                    None => (None, None),
                };
                ClientEvent::Result {
                    id,
                    execution_id,
                    value,
                    repr,
                    data,
                    metadata,
                    execution_time: execution_time.as_secs_f64(),
                    transaction: TransactionReport::of(transaction),
                }
            }
            Event::Error {
                exception_type,
                exception_message,
                traceback,
                transaction,
                exit_code,
            } => ClientEvent::Error {
                id,
                execution_id,
                exception_type,
                exception_message,
                traceback,
                transaction: TransactionReport::of(transaction),
                exit_code,
            },
        }
    }

    /// The `type` tag: `output`, `input`, `display`, `result` or `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientEvent::Output { .. } => "output",
            ClientEvent::Input { .. } => "input",
            ClientEvent::Display { .. } => "display",
            ClientEvent::Result { .. } => "result",
            ClientEvent::Error { .. } => "error",
        }
    }

    /// A result or an error: the last event of its execution.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ClientEvent::Result { .. } | ClientEvent::Error { .. })
    }

    /// The JSON text with `seq` added, keys sorted (the text every reader of the execution
    /// log is sent).
    pub fn to_json_with_seq(&self, seq: u64) -> String {
        let mut json = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut json {
            map.insert("seq".into(), Value::from(seq));
        }
        json.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_json_is_the_documented_event_schema() {
        let output = ClientEvent::from_session(
            "e1",
            &Event::Output {
                stream: StreamName::Stderr,
                data: "x\n".into(),
            },
        );
        let ClientEvent::Output { id, .. } = &output else {
            panic!("{output:?}")
        };
        assert_eq!(
            serde_json::to_string(&output).unwrap(),
            format!(
                r#"{{"type":"output","id":"{id}","execution_id":"e1","stream":"stderr","data":"x\n"}}"#
            )
        );
        assert_eq!(
            output.to_json_with_seq(3),
            format!(
                r#"{{"data":"x\n","execution_id":"e1","id":"{id}","seq":3,"stream":"stderr","type":"output"}}"#
            )
        );

        let input = ClientEvent::from_session(
            "e1",
            &Event::Input {
                input_id: "w1-5".into(),
                prompt: "p? ".into(),
                password: false,
            },
        );
        assert_eq!(
            input.to_json_with_seq(1),
            r#"{"execution_id":"e1","id":"w1-5","password":false,"prompt":"p? ","seq":1,"timeout":null,"type":"input"}"#
        );

        let result = ClientEvent::from_session(
            "e1",
            &Event::Result {
                value: serde_json::json!(42),
                repr: Some("42".into()),
                bundle: None,
                execution_time: Duration::from_millis(1500),
                transaction: None,
            },
        );
        let ClientEvent::Result { id, .. } = &result else {
            panic!("{result:?}")
        };
        assert_eq!(
            serde_json::to_string(&result).unwrap(),
            format!(
                r#"{{"type":"result","id":"{id}","execution_id":"e1","value":42,"repr":"42","execution_time":1.5}}"#
            )
        );

        let error = ClientEvent::from_session("e1", &Event::error("Boom", "it broke"));
        let ClientEvent::Error { id, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            format!(
                r#"{{"type":"error","id":"{id}","execution_id":"e1","exception_type":"Boom","exception_message":"it broke","traceback":"Boom: it broke\n"}}"#
            )
        );
        // What readers get back from a logged text is the event itself.
        let back: ClientEvent = serde_json::from_str(&error.to_json_with_seq(2)).unwrap();
        assert_eq!(back, error);
        assert!(error.is_terminal() && !input.is_terminal());
    }
}
