//! Decoding of one output pipe's bytes: marker detection and UTF-8 decoding that never splits
//! a character across events. Pure: the bytes come from the actor, the text goes to
//! `ordering.rs`, which decides whose it is.

use crate::protocol::{MarkerScanner, Piece};

/// A decoded piece of one pipe, in stream order.
#[derive(Debug, PartialEq)]
pub(crate) enum PipeItem {
    /// Text read while `segment` markers had been passed on this pipe.
    Text { segment: u64, text: String },
    /// The pipe passed a marker (its count is in `PipeDecoder::markers`).
    Marker,
    /// The pipe passed a stream barrier (counted by `ordering.rs`).
    Barrier,
}

#[derive(Debug)]
pub(crate) struct PipeDecoder {
    scanner: MarkerScanner,
    utf8_tail: Vec<u8>,
    /// Markers passed so far.
    pub markers: u64,
}

impl PipeDecoder {
    pub fn new(marker_token: &str) -> Self {
        PipeDecoder {
            scanner: MarkerScanner::new(marker_token),
            utf8_tail: Vec::new(),
            markers: 0,
        }
    }

    /// Decodes bytes read from the pipe.
    pub fn feed(&mut self, bytes: &[u8], items: &mut Vec<PipeItem>) {
        let tail = &mut self.utf8_tail;
        let markers = &mut self.markers;
        self.scanner.feed(bytes, |piece| match piece {
            Piece::Data(data) => push_text(tail, *markers, data, false, items),
            Piece::Marker => {
                // A character cut off by the marker cannot be completed any more.
                push_text(tail, *markers, &[], true, items);
                *markers += 1;
                items.push(PipeItem::Marker);
            }
            Piece::Barrier => {
                push_text(tail, *markers, &[], true, items);
                items.push(PipeItem::Barrier);
            }
        });
    }

    /// Hands over, as text, a trailing fragment held back as a possible marker start: at the
    /// end of the stream (`complete`: an unfinished character is flushed too), or when no
    /// marker can be in flight (an unmarked message was released).
    pub fn release_held(&mut self, complete: bool, items: &mut Vec<PipeItem>) {
        let held = self.scanner.take_held();
        push_text(&mut self.utf8_tail, self.markers, &held, complete, items);
    }
}

fn push_text(
    tail: &mut Vec<u8>,
    segment: u64,
    bytes: &[u8],
    flush: bool,
    items: &mut Vec<PipeItem>,
) {
    let text = decode_utf8(tail, bytes, flush);
    if !text.is_empty() {
        items.push(PipeItem::Text { segment, text });
    }
}

/// Decodes `bytes` after the incomplete character kept in `tail`. An incomplete sequence at
/// the end is kept for the next call unless `flush`; invalid bytes become U+FFFD. One
/// validation pass and one copy: this runs on every chunk of output.
pub fn decode_utf8(tail: &mut Vec<u8>, bytes: &[u8], flush: bool) -> String {
    let joined;
    let input: &[u8] = if tail.is_empty() {
        bytes
    } else {
        tail.extend_from_slice(bytes);
        joined = std::mem::take(tail);
        &joined
    };
    let keep = if flush {
        0
    } else {
        incomplete_suffix_len(input)
    };
    let (body, rest) = input.split_at(input.len() - keep);
    tail.extend_from_slice(rest);
    String::from_utf8_lossy(body).into_owned()
}

/// Length of a UTF-8 sequence cut off at the end of `bytes` (0 when the end is complete).
fn incomplete_suffix_len(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: its lead byte is further back
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_reads_are_joined() {
        let text = "héllo → wörld 🐍";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut tail = Vec::new();
            let mut out = decode_utf8(&mut tail, &bytes[..split], false);
            out.push_str(&decode_utf8(&mut tail, &bytes[split..], false));
            assert_eq!(out, text, "split at {split}");
            assert!(tail.is_empty());
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut tail = Vec::new();
        assert_eq!(decode_utf8(&mut tail, b"a\xffb", false), "a\u{fffd}b");
        assert_eq!(decode_utf8(&mut tail, b"c\xe2\x82", false), "c");
        assert_eq!(decode_utf8(&mut tail, b"", true), "\u{fffd}");
    }
}
