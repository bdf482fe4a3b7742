//! Output before result: the bookkeeping that delivers every byte an execution wrote to its
//! pipes before the message (`input`, `result`, `error`) that follows it. Pure: bytes and
//! messages in, text and released messages out; no I/O, no clock.
//!
//! The worker writes a marker to both pipes before each *marked* ordered message, so the k-th
//! marked message may be delivered once both pipes have passed k markers (or ended). Text is
//! numbered by the *segment* it was read in (markers passed on its pipe); the caller says
//! which segment belongs to the execution that runs (its *owner* segment), and text of other
//! segments waits as *stray* until its execution is known (see `docs/protocol.md`).

use std::collections::VecDeque;

use super::output::{PipeDecoder, PipeItem};
use crate::protocol::{Message, StreamName};

/// Stray text held per pipe before that pipe stops being read (the worker then blocks).
pub(crate) const STRAY_LIMIT: usize = 1024 * 1024;

/// A piece of output for the execution that owns it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Text {
    pub stream: StreamName,
    pub text: String,
}

#[derive(Debug)]
struct Pipe {
    stream: StreamName,
    decoder: PipeDecoder,
    eof: bool,
    /// Text whose owner is not known yet, with the segment it was read in.
    stray: VecDeque<(u64, String)>,
    stray_bytes: usize,
}

/// The ordering state of one worker's stdout and stderr and its ordered messages.
#[derive(Debug)]
pub(crate) struct OutputOrdering {
    pipes: [Pipe; 2],
    /// Markers announced so far: marked messages received.
    markers_expected: u64,
    /// Ordered messages received but not yet released, with the marker count both pipes
    /// must reach first (an unmarked message waits only for those before it).
    held: VecDeque<(u64, Message)>,
}

impl OutputOrdering {
    pub fn new(marker_token: &str) -> Self {
        let pipe = |stream| Pipe {
            stream,
            decoder: PipeDecoder::new(marker_token),
            eof: false,
            stray: VecDeque::new(),
            stray_bytes: 0,
        };
        OutputOrdering {
            pipes: [pipe(StreamName::Stdout), pipe(StreamName::Stderr)],
            markers_expected: 0,
            held: VecDeque::new(),
        }
    }

    /// The segment that text written from now on will be in, once every announced message
    /// has been released: what a new execution owns.
    pub fn next_segment(&self) -> u64 {
        self.markers_expected
    }

    /// Whether pipe `i` may be read: not ended, and its stray text under the limit.
    pub fn wants_input(&self, i: usize) -> bool {
        !self.pipes[i].eof && self.pipes[i].stray_bytes < STRAY_LIMIT
    }

    /// Bytes read from pipe `i`. Text of the `owner` segment goes to `out`, the rest is kept
    /// as stray. Returns whether a marker was passed (held messages may be releasable).
    pub fn feed(
        &mut self,
        i: usize,
        bytes: &[u8],
        owner: Option<u64>,
        out: &mut Vec<Text>,
    ) -> bool {
        let mut items = Vec::new();
        self.pipes[i].decoder.feed(bytes, &mut items);
        self.route(i, items, owner, out)
    }

    /// Pipe `i` has ended (or nothing more will be read from it: the worker exited). A
    /// fragment held as a possible marker start is plain text now.
    pub fn end(&mut self, i: usize, owner: Option<u64>, out: &mut Vec<Text>) {
        if self.pipes[i].eof {
            return;
        }
        self.pipes[i].eof = true;
        let mut items = Vec::new();
        self.pipes[i].decoder.release_held(true, &mut items);
        self.route(i, items, owner, out);
    }

    fn route(
        &mut self,
        i: usize,
        items: Vec<PipeItem>,
        owner: Option<u64>,
        out: &mut Vec<Text>,
    ) -> bool {
        let pipe = &mut self.pipes[i];
        let mut passed_marker = false;
        for item in items {
            match item {
                PipeItem::Text { segment, text } if owner == Some(segment) => out.push(Text {
                    stream: pipe.stream,
                    text,
                }),
                PipeItem::Text { segment, text } => {
                    pipe.stray_bytes += text.len();
                    pipe.stray.push_back((segment, text));
                }
                PipeItem::Marker => passed_marker = true,
            }
        }
        passed_marker
    }

    /// An ordered message from the worker; it waits in [`Self::release_next`] for its markers.
    pub fn hold(&mut self, msg: Message) {
        if is_marked(&msg) {
            self.markers_expected += 1;
        }
        self.held.push_back((self.markers_expected, msg));
    }

    /// The next held message whose markers both pipes have passed, with its marker count;
    /// text that must precede it goes to `out` first. Call until `None`: delivering a message
    /// may change the owner segment, so release one at a time.
    pub fn release_next(
        &mut self,
        owner: Option<u64>,
        out: &mut Vec<Text>,
    ) -> Option<(u64, Message)> {
        let (seq, _) = self.held.front()?;
        let seq = *seq;
        if !self.pipes.iter().all(|p| p.eof || p.decoder.markers >= seq) {
            return None;
        }
        let (_, msg) = self.held.pop_front()?;
        if !is_marked(&msg) {
            // No marker follows the text read so far, so a trailing fragment held as a
            // possible marker start is plain text: route it before this message.
            for i in 0..2 {
                let mut items = Vec::new();
                self.pipes[i].decoder.release_held(false, &mut items);
                self.route(i, items, owner, out);
            }
        }
        Some((seq, msg))
    }

    /// Stray text of segments up to and including `segment`, stdout's first: output written
    /// before the execution that now owns it was known (between executions, or before an
    /// `input()` whose answer continues the code).
    pub fn take_stray_through(&mut self, segment: u64, out: &mut Vec<Text>) {
        for pipe in &mut self.pipes {
            while let Some((seg, _)) = pipe.stray.front() {
                if *seg > segment {
                    break;
                }
                if let Some((_, text)) = pipe.stray.pop_front() {
                    pipe.stray_bytes -= text.len();
                    out.push(Text {
                        stream: pipe.stream,
                        text,
                    });
                }
            }
        }
    }

    /// All stray text, stdout's first.
    pub fn take_all_stray(&mut self) -> Vec<Text> {
        let mut out = Vec::new();
        self.take_stray_through(u64::MAX, &mut out);
        out
    }
}

/// Whether an ordered message was preceded by markers (older agents always marked).
fn is_marked(msg: &Message) -> bool {
    match msg {
        Message::Input(m) => m.marked,
        Message::Result(m) => m.marked,
        Message::Error(m) => m.marked,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MarkerScanner, ResultMsg};

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn marker() -> Vec<u8> {
        MarkerScanner::new(TOKEN).marker().to_vec()
    }

    fn result(marked: bool) -> Message {
        Message::Result(ResultMsg {
            id: "r".into(),
            execution_id: "e1".into(),
            value: serde_json::Value::Null,
            repr: None,
            execution_time: 0.0,
            marked,
            transaction: None,
            worker_pid: None,
            cpu_time_before: None,
        })
    }

    fn texts(out: &[Text]) -> Vec<(StreamName, &str)> {
        out.iter().map(|t| (t.stream, t.text.as_str())).collect()
    }

    #[test]
    fn a_marked_result_waits_for_the_marker_on_both_pipes() {
        let mut o = OutputOrdering::new(TOKEN);
        let owner = Some(o.next_segment());
        let mut out = Vec::new();
        o.feed(0, b"a\n", owner, &mut out);
        o.hold(result(true));
        assert!(o.release_next(owner, &mut out).is_none(), "no marker yet");
        let mut bytes = b"b\n".to_vec();
        bytes.extend(marker());
        assert!(o.feed(0, &bytes, owner, &mut out));
        assert!(
            o.release_next(owner, &mut out).is_none(),
            "stderr has not passed it"
        );
        let mut err = b"e\n".to_vec();
        err.extend(marker());
        o.feed(1, &err, owner, &mut out);
        assert_eq!(
            texts(&out),
            [
                (StreamName::Stdout, "a\n"),
                (StreamName::Stdout, "b\n"),
                (StreamName::Stderr, "e\n")
            ]
        );
        assert_eq!(o.release_next(owner, &mut out).map(|(seq, _)| seq), Some(1));
        assert_eq!(o.next_segment(), 1);
    }

    #[test]
    fn text_after_the_marker_is_stray_until_its_owner_is_known() {
        let mut o = OutputOrdering::new(TOKEN);
        let mut out = Vec::new();
        let mut bytes = marker();
        bytes.extend(b"late\n");
        o.hold(result(true));
        o.feed(0, &bytes, Some(0), &mut out);
        o.feed(1, &marker(), Some(0), &mut out);
        assert!(out.is_empty());
        assert!(o.release_next(Some(0), &mut out).is_some());
        o.take_stray_through(o.next_segment(), &mut out);
        assert_eq!(texts(&out), [(StreamName::Stdout, "late\n")]);
    }

    #[test]
    fn an_unmarked_message_releases_a_held_partial_marker_as_text() {
        let mut o = OutputOrdering::new(TOKEN);
        let mut out = Vec::new();
        // The marker's first bytes could start a marker, so the scanner holds them back.
        let prefix = &marker()[..3];
        o.feed(0, prefix, Some(0), &mut out);
        assert!(out.is_empty());
        o.hold(result(false));
        assert!(o.release_next(Some(0), &mut out).is_some());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text.as_bytes(), prefix);
    }

    #[test]
    fn an_ended_pipe_no_longer_holds_messages_back() {
        let mut o = OutputOrdering::new(TOKEN);
        let mut out = Vec::new();
        o.hold(result(true));
        o.end(0, Some(0), &mut out);
        assert!(o.release_next(Some(0), &mut out).is_none());
        o.end(1, Some(0), &mut out);
        assert!(o.release_next(Some(0), &mut out).is_some());
        assert!(!o.wants_input(0) && !o.wants_input(1));
    }

    #[test]
    fn stray_text_over_the_limit_stops_reading_that_pipe() {
        let mut o = OutputOrdering::new(TOKEN);
        let mut out = Vec::new();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..(STRAY_LIMIT / chunk.len()) {
            assert!(o.wants_input(1));
            o.feed(1, &chunk, None, &mut out);
        }
        assert!(!o.wants_input(1) && o.wants_input(0));
        assert_eq!(o.take_all_stray().len(), STRAY_LIMIT / chunk.len());
        assert!(o.wants_input(1));
    }
}
