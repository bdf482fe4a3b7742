//! One output pipe as the actor sees it: reads, marker detection, UTF-8 decoding that never
//! splits a character across events, and the "stray" chunks whose execution is not known yet
//! (see `docs/protocol.md`, "Output ordering").

use std::collections::VecDeque;

use tokio::net::unix::pipe;

use crate::protocol::{MarkerScanner, Piece, StreamName};

/// A decoded piece of one pipe, in stream order.
#[derive(Debug)]
pub(crate) enum PipeItem {
    /// Text read while `segment` markers had been passed on this pipe.
    Text { segment: u64, text: String },
    /// The pipe passed a marker (its count is in `OutputPipe::markers`).
    Marker,
}

#[derive(Debug)]
pub(crate) struct OutputPipe {
    pub stream: StreamName,
    pub rx: pipe::Receiver,
    scanner: MarkerScanner,
    utf8_tail: Vec<u8>,
    /// Markers passed so far.
    pub markers: u64,
    pub eof: bool,
    /// Bytes read from the pipe so far.
    pub bytes_read: u64,
    /// Text whose owner is not known yet, with the segment it was read in.
    pub stray: VecDeque<(u64, String)>,
    pub stray_bytes: usize,
}

impl OutputPipe {
    pub fn new(stream: StreamName, rx: pipe::Receiver, marker_token: &str) -> Self {
        OutputPipe {
            stream,
            rx,
            scanner: MarkerScanner::new(marker_token),
            utf8_tail: Vec::new(),
            markers: 0,
            eof: false,
            bytes_read: 0,
            stray: VecDeque::new(),
            stray_bytes: 0,
        }
    }

    /// Reads once without blocking. Returns the decoded items, or `None` when nothing was
    /// available (readiness was stale). Sets `eof` at end of stream.
    pub fn read_available(&mut self, buf: &mut [u8], items: &mut Vec<PipeItem>) -> bool {
        match self.rx.try_read(buf) {
            Ok(0) => {
                self.finish(items);
                true
            }
            Ok(n) => {
                self.bytes_read += n as u64;
                self.feed(&buf[..n], items);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            Err(_) => {
                self.finish(items);
                true
            }
        }
    }

    /// Reads everything that is in the pipe now, without waiting: used after the worker
    /// exited, when what it wrote is complete.
    pub fn drain_now(&mut self, buf: &mut [u8], items: &mut Vec<PipeItem>) {
        while !self.eof && self.read_available(buf, items) {}
        // Whatever was held as a possible marker start is plain data now.
        let held = self.scanner.take_held();
        self.push_text(&held, true, items);
    }

    /// Hands over, as text, a trailing fragment held back as a possible marker start. Only
    /// for when no marker can be in flight (an unmarked message was released).
    pub fn release_held(&mut self, items: &mut Vec<PipeItem>) {
        let held = self.scanner.take_held();
        self.push_text(&held, false, items);
    }

    fn finish(&mut self, items: &mut Vec<PipeItem>) {
        self.eof = true;
        let held = self.scanner.take_held();
        self.push_text(&held, true, items);
    }

    fn feed(&mut self, bytes: &[u8], items: &mut Vec<PipeItem>) {
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
        });
    }

    fn push_text(&mut self, bytes: &[u8], flush: bool, items: &mut Vec<PipeItem>) {
        push_text(&mut self.utf8_tail, self.markers, bytes, flush, items);
    }

    pub fn push_stray(&mut self, segment: u64, text: String) {
        self.stray_bytes += text.len();
        self.stray.push_back((segment, text));
    }

    /// Removes and returns the stray text of segments up to and including `segment`.
    pub fn take_stray_through(&mut self, segment: u64) -> Vec<String> {
        let mut taken = Vec::new();
        while let Some((seg, _)) = self.stray.front() {
            if *seg > segment {
                break;
            }
            if let Some((_, text)) = self.stray.pop_front() {
                self.stray_bytes -= text.len();
                taken.push(text);
            }
        }
        taken
    }

    /// Removes all stray text.
    pub fn take_all_stray(&mut self) -> Vec<String> {
        self.take_stray_through(u64::MAX)
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
