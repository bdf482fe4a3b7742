//! The markers on the output pipes (see `docs/protocol.md`, "Output ordering"): the
//! end-of-execution marker and the stream barrier. Finds them in the byte stream read from a
//! pipe, however the reads split it, and hands back the data around them untouched.

use memchr::memmem;

/// One piece of a pipe's byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Data(&'a [u8]),
    /// `ESC "PYREPL3:" token ESC`: an ordered message follows (paired with it by count).
    Marker,
    /// `ESC "PYREPL3:" token GS`: Python-level writes switched between stdout and stderr;
    /// text after it on one pipe comes after the text before it on the other.
    Barrier,
}

/// The byte that ends a marker.
const MARKER_END: u8 = 0x1b;
/// The byte that ends a barrier (ASCII group separator).
const BARRIER_END: u8 = 0x1d;

/// Scans a pipe's bytes for the session's markers and barriers. Keeps back only a trailing
/// fragment that could be the start of one, until the next read decides it.
#[derive(Debug)]
pub struct MarkerScanner {
    /// The marker; the barrier is the same but for its last byte.
    marker: Vec<u8>,
    barrier: Vec<u8>,
    /// Finds what the two share: all but the last byte.
    finder: memmem::Finder<'static>,
    /// A suffix of earlier input that is a proper prefix of the marker.
    held: Vec<u8>,
    joined: Vec<u8>,
}

impl MarkerScanner {
    /// The marker for a token is `ESC "PYREPL3:" token ESC`, the barrier the same ending in
    /// `GS` instead.
    pub fn new(token: &str) -> Self {
        let mut prefix = Vec::with_capacity(token.len() + 10);
        prefix.extend_from_slice(b"\x1bPYREPL3:");
        prefix.extend_from_slice(token.as_bytes());
        let finder = memmem::Finder::new(&prefix).into_owned();
        let (mut marker, mut barrier) = (prefix.clone(), prefix);
        marker.push(MARKER_END);
        barrier.push(BARRIER_END);
        MarkerScanner {
            marker,
            barrier,
            finder,
            held: Vec::new(),
            joined: Vec::new(),
        }
    }

    pub fn marker(&self) -> &[u8] {
        &self.marker
    }

    pub fn barrier(&self) -> &[u8] {
        &self.barrier
    }

    /// Splits `chunk` (preceded by whatever was held back) into pieces, calling `sink` for
    /// each in stream order.
    pub fn feed(&mut self, chunk: &[u8], mut sink: impl FnMut(Piece<'_>)) {
        let input: &[u8] = if self.held.is_empty() {
            chunk
        } else {
            self.joined.clear();
            self.joined.extend_from_slice(&self.held);
            self.joined.extend_from_slice(chunk);
            self.held.clear();
            &self.joined
        };
        let prefix_len = self.marker.len() - 1;
        // `pos`: the first byte not handed on yet; `from`: where the next search starts (past
        // a prefix that turned out to be data).
        let (mut pos, mut from) = (0, 0);
        while let Some(found) = self.finder.find(&input[from..]).map(|f| from + f) {
            let piece = match input.get(found + prefix_len) {
                None => break, // the deciding byte is not read yet: held below
                Some(&MARKER_END) => Piece::Marker,
                Some(&BARRIER_END) => Piece::Barrier,
                Some(_) => {
                    from = found + 1;
                    continue;
                }
            };
            if found > pos {
                sink(Piece::Data(&input[pos..found]));
            }
            sink(piece);
            pos = found + prefix_len + 1;
            from = pos;
        }
        let rest = &input[pos..];
        let keep = partial_marker_suffix(rest, &self.marker);
        if rest.len() > keep {
            sink(Piece::Data(&rest[..rest.len() - keep]));
        }
        let tail = rest[rest.len() - keep..].to_vec();
        self.held = tail;
    }

    /// Bytes held back as a possible marker start; at end of stream they are plain data.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `data` that is a proper prefix of `marker` (and so of the
/// barrier: they differ only in their last byte).
fn partial_marker_suffix(data: &[u8], marker: &[u8]) -> usize {
    let first = marker[0];
    let window = data.len().min(marker.len() - 1);
    let tail_start = data.len() - window;
    // Longest first: the earliest position in the window that starts a marker prefix.
    for start in tail_start..data.len() {
        if data[start] == first && marker.starts_with(&data[start..]) {
            return data.len() - start;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `parts` and returns the pieces as ("data" concatenated between markers).
    fn scan(scanner: &mut MarkerScanner, parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut segments = vec![Vec::new()];
        for part in parts {
            scanner.feed(part, |piece| match piece {
                Piece::Data(d) => segments.last_mut().unwrap().extend_from_slice(d),
                Piece::Marker => segments.push(Vec::new()),
                Piece::Barrier => segments.push(b"|".to_vec()),
            });
        }
        let held = scanner.take_held();
        segments.last_mut().unwrap().extend_from_slice(&held);
        segments
    }

    #[test]
    fn markers_are_found_at_every_split_point() {
        let token = "0123456789abcdef0123456789abcdef";
        let marker = MarkerScanner::new(token).marker().to_vec();
        let mut stream = b"hello \x1b[31mred\x1b".to_vec();
        stream.extend_from_slice(&marker);
        stream.extend_from_slice(b"after\x1bPYREPL3:");
        stream.extend_from_slice(&marker);
        stream.extend_from_slice(b"tail\x1b");
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let mut s = MarkerScanner::new(token);
                let got = scan(&mut s, &[&stream[..a], &stream[a..b], &stream[b..]]);
                assert_eq!(
                    got,
                    vec![
                        b"hello \x1b[31mred\x1b".to_vec(),
                        b"after\x1bPYREPL3:".to_vec(),
                        b"tail\x1b".to_vec()
                    ],
                    "split at {a},{b}"
                );
            }
        }
    }

    #[test]
    fn barriers_are_found_at_every_split_point_and_other_endings_are_data() {
        let token = "0123456789abcdef0123456789abcdef";
        let scanner = MarkerScanner::new(token);
        let (marker, barrier) = (scanner.marker().to_vec(), scanner.barrier().to_vec());
        let not_one = [&marker[..marker.len() - 1], b"x"].concat();
        let mut stream = b"out".to_vec();
        stream.extend_from_slice(&barrier);
        stream.extend_from_slice(b"err");
        stream.extend_from_slice(&not_one);
        stream.extend_from_slice(&marker);
        stream.extend_from_slice(b"end");
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let mut s = MarkerScanner::new(token);
                let got = scan(&mut s, &[&stream[..a], &stream[a..b], &stream[b..]]);
                let middle = [b"|err".as_slice(), &not_one].concat();
                assert_eq!(
                    got,
                    vec![b"out".to_vec(), middle, b"end".to_vec()],
                    "split at {a},{b}"
                );
            }
        }
    }

    #[test]
    fn plain_data_is_passed_through_without_holding() {
        let mut s = MarkerScanner::new("abc");
        let mut out = Vec::new();
        s.feed(b"no escape here\n", |p| {
            if let Piece::Data(d) = p {
                out.extend_from_slice(d)
            }
        });
        assert_eq!(out, b"no escape here\n");
        assert!(s.take_held().is_empty());
    }
}
