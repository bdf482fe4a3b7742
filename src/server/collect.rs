//! The collected (non-streaming) answer of `POST /v1/sessions/{id}/execute`: an execution
//! read to its end and gathered into one JSON object, with its output and rich outputs kept
//! up to `max_output_bytes` of the answer (the rest counted, not kept), so the answer's size
//! is bounded whatever the code prints or displays.

use serde_json::{json, Value};

use crate::protocol::StreamName;
use crate::service::{ClientEvent, Reader};

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
    displays: Vec<Value>,
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

    fn push_display(&mut self, display: Value) {
        let cost = display.to_string().len() + DISPLAY_ENTRY_BYTES;
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
pub(super) async fn collect(mut reader: Reader, max_output_bytes: usize) -> Value {
    let mut kept = Collected {
        outputs: Vec::new(),
        displays: Vec::new(),
        used: 0,
        limit: max_output_bytes,
        dropped: 0,
        dropped_displays: 0,
    };
    let (mut result, mut error, mut execution_time) = (Value::Null, Value::Null, 0.0);
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
                }) => kept.push_display(json!({
                    "data": data,
                    "metadata": metadata,
                    "display_id": display_id,
                    "update": update,
                })),
                Some(ClientEvent::Result {
                    value,
                    repr,
                    data,
                    metadata,
                    execution_time: t,
                    transaction,
                    ..
                }) => {
                    result = json!({"value": value, "repr": repr});
                    if let (Some(data), Some(map)) = (data, result.as_object_mut()) {
                        map.insert("data".into(), Value::Object(data));
                        map.insert("metadata".into(), json!(metadata.unwrap_or_default()));
                    }
                    with_transaction(&mut result, transaction);
                    execution_time = t;
                }
                Some(ClientEvent::Error {
                    exception_type,
                    exception_message,
                    traceback,
                    transaction,
                    ..
                }) => {
                    error = json!({
                        "exception_type": exception_type,
                        "exception_message": exception_message,
                        "traceback": traceback,
                    });
                    with_transaction(&mut error, transaction);
                }
                Some(ClientEvent::Input { .. }) | None => {}
            }
        }
    }
    let truncated = kept.truncated();
    json!({
        "execution_id": reader.id(),
        "outputs": kept
            .outputs
            .into_iter()
            .map(|(stream, data)| json!({"stream": stream, "data": data}))
            .collect::<Vec<_>>(),
        "displays": kept.displays,
        "truncated": truncated,
        "output_truncated_bytes": kept.dropped,
        "displays_truncated": kept.dropped_displays,
        "result": result,
        "error": error,
        "execution_time": execution_time,
    })
}

/// Adds what became of the execution's transaction to its `result` or `error`, if it ran in
/// one.
fn with_transaction(object: &mut Value, transaction: Option<crate::service::TransactionReport>) {
    if let (Some(transaction), Some(map)) = (transaction, object.as_object_mut()) {
        map.insert("transaction".into(), json!(transaction));
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
