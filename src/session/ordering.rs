//! Output before result: the bookkeeping that delivers every byte an execution wrote to its
//! pipes before the message (`input`, `result`, `error`) that follows it. Pure: bytes and
//! messages in, text and released messages out; no I/O, no clock.
//!
//! The worker writes a marker to both pipes before each *marked* ordered message, so the k-th
//! marked message may be delivered once both pipes have passed k markers (or ended). Text is
//! numbered by the *segment* it was read in (markers passed on its pipe); the caller says
//! which segment belongs to the execution that runs (its *owner* segment), and text of other
//! segments waits as *stray* until its execution is known (see `docs/protocol.md`).
//!
//! Stream barriers keep stdout and stderr in the order Python wrote them: the worker writes
//! one to both pipes each time its writes switch stream, so text read on one pipe past a
//! barrier the other pipe has not reached yet waits (*ahead*) until it does.

use std::collections::VecDeque;

use super::output::{PipeDecoder, PipeItem};
use crate::protocol::{Message, StreamName};

/// Stray text held per pipe before that pipe stops being read (the worker then blocks); also
/// the most text held per pipe for the other pipe to reach a barrier.
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
    /// Text whose owner is not known yet, with the segment it was read in and its place in
    /// the order of arrival (so both pipes' stray text is handed on in the order it came).
    stray: VecDeque<(u64, u64, String)>,
    stray_bytes: usize,
    /// Markers passed (as routed: the decoder's count runs ahead within a read).
    segment: u64,
    /// Stream barriers passed since the last marker.
    barriers: u64,
    /// Text read past a point the other pipe has not reached yet: its segment and barrier
    /// count.
    ahead: VecDeque<(u64, u64, String)>,
    ahead_bytes: usize,
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
    /// Numbers stray text in the order it is routed.
    arrivals: u64,
}

impl OutputOrdering {
    pub fn new(marker_token: &str) -> Self {
        let pipe = |stream| Pipe {
            stream,
            decoder: PipeDecoder::new(marker_token),
            eof: false,
            stray: VecDeque::new(),
            stray_bytes: 0,
            segment: 0,
            barriers: 0,
            ahead: VecDeque::new(),
            ahead_bytes: 0,
        };
        OutputOrdering {
            pipes: [pipe(StreamName::Stdout), pipe(StreamName::Stderr)],
            markers_expected: 0,
            held: VecDeque::new(),
            arrivals: 0,
        }
    }

    /// The segment that text written from now on will be in, once every announced message
    /// has been released: what a new execution owns.
    pub fn next_segment(&self) -> u64 {
        self.markers_expected
    }

    /// Whether pipe `i` may be read: not ended, and its stray text under the limit. (Ahead
    /// text never stops it: past the limit it is handed on, see `give_up_waiting`.)
    pub fn wants_input(&self, i: usize) -> bool {
        let pipe = &self.pipes[i];
        !pipe.eof && pipe.stray_bytes < STRAY_LIMIT
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
        let mut passed_marker = false;
        for item in items {
            match item {
                PipeItem::Text { segment, text } => {
                    let barriers = self.pipes[i].barriers;
                    let waits =
                        !self.pipes[i].ahead.is_empty() || !self.reached(1 - i, segment, barriers);
                    if waits {
                        let pipe = &mut self.pipes[i];
                        pipe.ahead_bytes += text.len();
                        pipe.ahead.push_back((segment, barriers, text));
                        if pipe.ahead_bytes >= STRAY_LIMIT {
                            self.give_up_waiting(i, owner, out);
                        }
                    } else {
                        self.deliver(i, segment, text, owner, out);
                    }
                }
                PipeItem::Barrier => {
                    self.pipes[i].barriers += 1;
                    self.release_ahead(1 - i, owner, out, false);
                }
                PipeItem::Marker => {
                    passed_marker = true;
                    let pipe = &mut self.pipes[i];
                    pipe.segment += 1;
                    pipe.barriers = 0;
                    // Everything written to this pipe before the marker is passed, whatever
                    // barriers it did not get.
                    self.release_ahead(1 - i, owner, out, false);
                }
            }
        }
        if self.pipes[i].eof {
            self.release_ahead(1 - i, owner, out, true);
        }
        passed_marker
    }

    /// Whether pipe `j` has passed the point `(segment, barriers)`: ended, past a later
    /// marker, or past as many barriers within that segment. (Barriers are counted from the
    /// last marker, so one that reached only one pipe, when a signal handler raised between
    /// the two writes, disorders at most the rest of that execution's output.)
    fn reached(&self, j: usize, segment: u64, barriers: u64) -> bool {
        let pipe = &self.pipes[j];
        pipe.eof || pipe.segment > segment || (pipe.segment == segment && pipe.barriers >= barriers)
    }

    /// Text of pipe `j` that waited for the other pipe to reach its place, now that it has
    /// (`all`: the other pipe ended).
    fn release_ahead(&mut self, j: usize, owner: Option<u64>, out: &mut Vec<Text>, all: bool) {
        while let Some((segment, barriers, _)) = self.pipes[j].ahead.front() {
            if !all && !self.reached(1 - j, *segment, *barriers) {
                break;
            }
            let Some((segment, _, text)) = self.pipes[j].ahead.pop_front() else {
                break;
            };
            self.pipes[j].ahead_bytes -= text.len();
            self.deliver(j, segment, text, owner, out);
        }
    }

    /// Pipe `i` holds STRAY_LIMIT of text for a barrier the other pipe has not passed: it
    /// never got it (see `reached`), or lags that far behind. Its text goes on unordered
    /// rather than blocking the worker, and a missing barrier is counted as passed.
    fn give_up_waiting(&mut self, i: usize, owner: Option<u64>, out: &mut Vec<Text>) {
        let (segment, barriers) = (self.pipes[i].segment, self.pipes[i].barriers);
        let other = &mut self.pipes[1 - i];
        if other.segment == segment {
            other.barriers = other.barriers.max(barriers);
        }
        self.release_ahead(i, owner, out, true);
    }

    /// Text in its order: to `out` when the running execution owns it, else kept as stray.
    fn deliver(
        &mut self,
        i: usize,
        segment: u64,
        text: String,
        owner: Option<u64>,
        out: &mut Vec<Text>,
    ) {
        let pipe = &mut self.pipes[i];
        if owner == Some(segment) {
            out.push(Text {
                stream: pipe.stream,
                text,
            });
        } else {
            self.arrivals += 1;
            pipe.stray_bytes += text.len();
            pipe.stray.push_back((segment, self.arrivals, text));
        }
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

    /// Stray text of segments up to and including `segment`, in the order it was read:
    /// output written before the execution that now owns it was known (between executions,
    /// or before an `input()` whose answer continues the code).
    pub fn take_stray_through(&mut self, segment: u64, out: &mut Vec<Text>) {
        loop {
            // The earlier arrival of the two pipes' first eligible entries.
            let next = (0..2)
                .filter_map(|i| match self.pipes[i].stray.front() {
                    Some((seg, arrival, _)) if *seg <= segment => Some((*arrival, i)),
                    _ => None,
                })
                .min();
            let Some((_, i)) = next else { break };
            let pipe = &mut self.pipes[i];
            if let Some((_, _, text)) = pipe.stray.pop_front() {
                pipe.stray_bytes -= text.len();
                out.push(Text {
                    stream: pipe.stream,
                    text,
                });
            }
        }
    }

    /// All stray text, in the order it was read.
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
        Message::Display(m) => m.marked,
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

    fn barrier() -> Vec<u8> {
        MarkerScanner::new(TOKEN).barrier().to_vec()
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
            data: None,
            metadata: None,
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
    fn text_past_a_barrier_waits_for_the_other_pipe_to_reach_it() {
        // Python wrote: out "a", err "b", out "c" (a barrier at each switch), then a result.
        let mut o = OutputOrdering::new(TOKEN);
        let owner = Some(o.next_segment());
        let mut out = Vec::new();
        let err = [barrier(), b"b\n".to_vec(), barrier(), marker()].concat();
        o.feed(1, &err, owner, &mut out);
        assert!(
            out.is_empty(),
            "stderr's text waits for stdout's first barrier"
        );
        o.hold(result(true));
        let stdout = [
            b"a\n".to_vec(),
            barrier(),
            barrier(),
            b"c\n".to_vec(),
            marker(),
        ];
        o.feed(0, &stdout.concat(), owner, &mut out);
        assert!(o.release_next(owner, &mut out).is_some());
        assert_eq!(
            texts(&out),
            [
                (StreamName::Stdout, "a\n"),
                (StreamName::Stderr, "b\n"),
                (StreamName::Stdout, "c\n")
            ]
        );
    }

    #[test]
    fn a_barrier_missing_on_one_pipe_holds_text_only_to_the_next_marker() {
        // A signal handler raised between the two barrier writes: stderr never got it.
        let mut o = OutputOrdering::new(TOKEN);
        let mut out = Vec::new();
        o.feed(
            0,
            &[barrier(), b"after\n".to_vec()].concat(),
            Some(0),
            &mut out,
        );
        o.feed(1, b"err\n", Some(0), &mut out);
        assert_eq!(texts(&out), [(StreamName::Stderr, "err\n")]);
        o.hold(result(true));
        o.feed(0, &marker(), Some(0), &mut out);
        o.feed(1, &marker(), Some(0), &mut out);
        assert_eq!(out.len(), 2, "stderr's marker releases it: {out:?}");
        assert!(o.release_next(Some(0), &mut out).is_some());
        // The next execution is not affected.
        out.clear();
        o.feed(0, b"next\n", Some(1), &mut out);
        assert_eq!(texts(&out), [(StreamName::Stdout, "next\n")]);
    }

    #[test]
    fn held_text_past_the_limit_goes_on_and_the_pipe_is_still_read() {
        let mut o = OutputOrdering::new(TOKEN);
        let mut out = Vec::new();
        o.feed(1, &barrier(), Some(0), &mut out);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..(STRAY_LIMIT / chunk.len()) - 1 {
            o.feed(1, &chunk, Some(0), &mut out);
        }
        assert!(out.is_empty() && o.wants_input(1));
        o.feed(1, &chunk, Some(0), &mut out);
        assert_eq!(
            out.len(),
            STRAY_LIMIT / chunk.len(),
            "handed on at the limit"
        );
        // The missing barrier counts as passed: later text flows at once.
        o.feed(1, b"later", Some(0), &mut out);
        assert_eq!(out.len(), STRAY_LIMIT / chunk.len() + 1);
        // And a pipe that ends releases what the other held.
        let mut o = OutputOrdering::new(TOKEN);
        out.clear();
        o.feed(
            1,
            &[barrier(), b"held".to_vec()].concat(),
            Some(0),
            &mut out,
        );
        assert!(out.is_empty());
        o.end(0, Some(0), &mut out);
        assert_eq!(texts(&out), [(StreamName::Stderr, "held")]);
    }

    #[test]
    fn stray_text_of_both_pipes_is_handed_on_in_the_order_it_was_read() {
        let mut o = OutputOrdering::new(TOKEN);
        let mut out = Vec::new();
        o.feed(1, b"1", None, &mut out);
        o.feed(0, b"2", None, &mut out);
        o.feed(1, b"3", None, &mut out);
        assert_eq!(
            texts(&o.take_all_stray()),
            [
                (StreamName::Stderr, "1"),
                (StreamName::Stdout, "2"),
                (StreamName::Stderr, "3")
            ]
        );
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
