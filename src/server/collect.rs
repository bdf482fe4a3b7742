//! The collected (non-streaming) answer of `POST /v1/sessions/{id}/execute`: an execution
//! read to its end and gathered into one JSON object, with its output and rich outputs kept
//! up to `max_output_bytes` of the answer (the rest counted, not kept), so the answer's size
//! is bounded whatever the code prints or displays.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::protocol::StreamName;
use crate::service::{ClientEvent, Reader, TransactionReport};
use crate::session::MimeBundle;

/// The JSON answer of `POST /v1/sessions/{id}/execute`: the execution's outcome and the first
/// `max_output_bytes` of its output and displays.
#[derive(Serialize, ToSchema)]
pub(super) struct ExecuteAnswer {
    execution_id: String,
    /// Output in the order produced; consecutive output of one stream is one entry.
    outputs: Vec<OutputChunk>,
    /// Rich outputs in the order produced (plots, `display()`).
    displays: Vec<DisplayOutput>,
    /// Output or displays beyond `max_output_bytes` were left out (and all that followed).
    truncated: bool,
    /// Bytes of output left out.
    output_truncated_bytes: usize,
    /// Displays left out.
    displays_truncated: usize,
    /// Set when the code finished; `null` after an error.
    result: Option<ResultValue>,
    /// Set when the code raised or was stopped.
    error: Option<ErrorValue>,
    /// Seconds the code ran (`0.0` when it ended with an error).
    execution_time: f64,
}

#[derive(Serialize, ToSchema)]
struct OutputChunk {
    stream: StreamName,
    data: String,
}

/// A rich output (docs/api.md, "Rich outputs").
#[derive(Serialize, ToSchema)]
struct DisplayOutput {
    /// MIME type → content (base64 for binary types); always has `text/plain`.
    #[schema(value_type = Object)]
    data: MimeBundle,
    #[schema(value_type = Object)]
    metadata: MimeBundle,
    /// Set by `display(..., display_id=...)`: a display with the same id and `update`
    /// replaces it.
    display_id: Option<String>,
    update: bool,
}

/// The value of the code's trailing expression.
#[derive(Serialize, ToSchema)]
struct ResultValue {
    /// The value as `json.dumps` would give it; `null` when it is not JSON (or over 1 MiB).
    value: Value,
    /// Its `repr()`; `null` when there is no trailing expression or it is `None`.
    repr: Option<String>,
    /// The value's MIME bundle, when it has representations beyond its repr.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    data: Option<MimeBundle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<MimeBundle>,
    /// Under a rollback policy: what became of the execution's changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction: Option<TransactionReport>,
}

/// How the code failed.
#[derive(Serialize, ToSchema)]
struct ErrorValue {
    exception_type: String,
    exception_message: String,
    traceback: String,
    /// Under a rollback policy: what became of the execution's changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction: Option<TransactionReport>,
}

/// Bytes an entry of `outputs` costs in the answer beyond its data's JSON:
/// `{"data":"","stream":"stdout"},`.
const OUTPUT_ENTRY_BYTES: usize = 32;
/// Bytes an entry of `displays` costs beyond its bundles' content (keys, quotes, the id).
const DISPLAY_ENTRY_BYTES: usize = 96;

/// Output kept for a collected answer: the first output, up to `limit` bytes of the JSON it
/// makes in the answer (each entry's overhead and the data as escaped, so the answer's size
/// is bounded whatever the output is like); the rest only counted (the reader still reads it,
/// so the worker is not held back). Consecutive chunks of one stream make one entry, so a
/// loop of tiny flushed prints does not make an entry (and a JSON object) per chunk. Display
/// outputs share the budget: one that does not fit whole is left out, as is all that follows.
struct Collected {
    outputs: Vec<(StreamName, String)>,
    displays: Vec<DisplayOutput>,
    /// Bytes of the answer's JSON that `outputs` and `displays` take.
    used: usize,
    limit: usize,
    /// Bytes of output left out.
    dropped: usize,
    /// Displays left out.
    dropped_displays: usize,
}

impl Collected {
    fn push(&mut self, stream: StreamName, data: &str) {
        if self.truncated() {
            // The answer keeps the first output only: once some was left out, all that
            // follows is too.
            self.dropped += data.len();
            return;
        }
        let merge = self.outputs.last().is_some_and(|(s, _)| *s == stream);
        let overhead = if merge { 0 } else { OUTPUT_ENTRY_BYTES };
        let mut room = self.limit.saturating_sub(self.used);
        let mut take = 0;
        if room > overhead {
            room -= overhead;
            // Byte by byte (a character's bytes cost one each, escapes aside), not char by
            // char: this runs over megabytes of output per execution.
            for (i, &b) in data.as_bytes().iter().enumerate() {
                let cost = json_escaped_len(b);
                if cost > room {
                    break;
                }
                room -= cost;
                take = i + 1;
            }
            // A character cut in the middle is left out whole (its bytes refunded).
            while !data.is_char_boundary(take) {
                take -= 1;
                room += 1;
            }
        }
        if take > 0 {
            self.used = self.limit - room;
            match self.outputs.last_mut() {
                Some((_, kept)) if merge => kept.push_str(&data[..take]),
                _ => self.outputs.push((stream, data[..take].to_string())),
            }
        }
        self.dropped += data.len() - take;
    }

    fn push_display(&mut self, display: DisplayOutput) {
        let json_bytes = serde_json::to_string(&display).map_or(0, |json| json.len());
        let cost = json_bytes + DISPLAY_ENTRY_BYTES;
        if self.truncated() || self.used + cost > self.limit {
            self.dropped_displays += 1;
            return;
        }
        self.used += cost;
        self.displays.push(display);
    }

    fn truncated(&self) -> bool {
        self.dropped > 0 || self.dropped_displays > 0
    }
}

/// Bytes the byte `b` of a UTF-8 string takes in a JSON string as serde_json writes it
/// (the bytes of a multi-byte character are written as they are).
fn json_escaped_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0..0x20 => 6,
        _ => 1,
    }
}

/// Reads an execution to its end (the reader answers its `input()` calls) and gathers the
/// JSON answer, with at most `max_output_bytes` of output and displays (`truncated` says
/// whether some was left out, `output_truncated_bytes` and `displays_truncated` how much).
pub(super) async fn collect(mut reader: Reader, max_output_bytes: usize) -> ExecuteAnswer {
    let mut kept = Collected {
        outputs: Vec::new(),
        displays: Vec::new(),
        used: 0,
        limit: max_output_bytes,
        dropped: 0,
        dropped_displays: 0,
    };
    let (mut result, mut error, mut execution_time) = (None, None, 0.0);
    while let Some(batch) = reader.next_batch().await {
        for logged in batch {
            if logged.kind == "input" {
                continue; // answered by the reader; not part of the answer
            }
            match logged.event() {
                Some(ClientEvent::Output { stream, data, .. }) => kept.push(stream, &data),
                Some(ClientEvent::Display {
                    data,
                    metadata,
                    display_id,
                    update,
                    ..
                }) => kept.push_display(DisplayOutput {
                    data,
                    metadata,
                    display_id,
                    update,
                }),
                Some(ClientEvent::Result {
                    value,
                    repr,
                    data,
                    metadata,
                    execution_time: t,
                    transaction,
                    ..
                }) => {
                    // A bundle's metadata is there whenever the bundle is.
                    let metadata = data.as_ref().map(|_| metadata.unwrap_or_default());
                    result = Some(ResultValue {
                        value,
                        repr,
                        data,
                        metadata,
                        transaction,
                    });
                    execution_time = t;
                }
                Some(ClientEvent::Error {
                    exception_type,
                    exception_message,
                    traceback,
                    transaction,
                    ..
                }) => {
                    error = Some(ErrorValue {
                        exception_type,
                        exception_message,
                        traceback,
                        transaction,
                    });
                }
                Some(ClientEvent::Input { .. }) | None => {}
            }
        }
    }
    let truncated = kept.truncated();
    ExecuteAnswer {
        execution_id: reader.id().to_string(),
        outputs: kept
            .outputs
            .into_iter()
            .map(|(stream, data)| OutputChunk { stream, data })
            .collect(),
        displays: kept.displays,
        truncated,
        output_truncated_bytes: kept.dropped,
        displays_truncated: kept.dropped_displays,
        result,
        error,
        execution_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(limit: usize) -> Collected {
        Collected {
            outputs: Vec::new(),
            displays: Vec::new(),
            used: 0,
            limit,
            dropped: 0,
            dropped_displays: 0,
        }
    }

    #[test]
    fn output_is_cut_at_the_limit_counted_as_json_and_never_inside_a_character() {
        // "ab" (2), "é" (2 bytes), "\n" (2 escaped): 6 bytes of JSON; one byte short of
        // it, the newline is left out; two short, the "é" is left out whole, not halved.
        for (room, kept) in [(6, "abé\n"), (5, "abé"), (3, "ab")] {
            let mut c = collected(OUTPUT_ENTRY_BYTES + room);
            c.push(StreamName::Stdout, "abé\n");
            let text = c.outputs.first().map(|(_, t)| t.as_str()).unwrap_or("");
            assert_eq!(text, kept, "room {room}");
            assert_eq!(c.dropped, "abé\n".len() - kept.len(), "room {room}");
            let json = serde_json::to_string(text).unwrap();
            assert!(json.len() - 2 <= room, "room {room}: {json}");
        }
        // A control character costs six (\u0001).
        let mut c = collected(OUTPUT_ENTRY_BYTES + 6);
        c.push(StreamName::Stdout, "\u{1}x");
        assert_eq!(c.outputs[0].1, "\u{1}");
    }
}
