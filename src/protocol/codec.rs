//! Frame decoding: a byte buffer that turns whatever the socket delivered into whole
//! messages. Partial frames stay in the buffer (never in a future's locals), so a read that
//! loses a `select!` race cannot desynchronise the stream.

use super::Message;

/// Default upper bound of one frame's JSON body (16 MiB).
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Everything that can be wrong with the bytes on the protocol channel.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: usize },
    #[error("frame is not a valid message: {source}; frame starts with {preview:?}")]
    Malformed {
        source: serde_json::Error,
        preview: String,
    },
    #[error("could not encode message: {0}")]
    Encode(serde_json::Error),
}

/// Accumulates bytes and yields complete messages.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`; compacted lazily to avoid memmove per frame.
    start: usize,
    max_frame_len: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_len: usize) -> Self {
        FrameDecoder {
            buf: Vec::with_capacity(8 * 1024),
            start: 0,
            max_frame_len,
        }
    }

    /// Appends bytes read from the channel.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Spare capacity to read into directly; call [`FrameDecoder::commit`] with the count read.
    pub fn spare(&mut self, at_least: usize) -> &mut [u8] {
        self.compact();
        let len = self.buf.len();
        self.buf.resize(len + at_least, 0);
        &mut self.buf[len..]
    }

    /// Keeps `n` bytes of the last [`FrameDecoder::spare`] slice and drops the rest.
    pub fn commit(&mut self, spare_len: usize, n: usize) {
        let new_len = self.buf.len() - spare_len + n;
        self.buf.truncate(new_len);
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Number of buffered bytes not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, `None` if more bytes are needed. An error is final: the
    /// stream cannot be trusted after it.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max_frame_len {
            return Err(ProtocolError::FrameTooLarge {
                len: len as u64,
                max: self.max_frame_len,
            });
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let body = &avail[4..4 + len];
        let parsed = serde_json::from_slice::<Message>(body).map_err(|source| {
            let shown = &body[..body.len().min(80)];
            ProtocolError::Malformed {
                source,
                preview: String::from_utf8_lossy(shown).into_owned(),
            }
        });
        self.start += 4 + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        parsed.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn a_frame_split_anywhere_decodes_once() {
        let body = br#"{"type":"heartbeat","id":"x"}"#;
        let bytes = frame(body);
        for split in 0..bytes.len() {
            let mut dec = FrameDecoder::new(1024);
            dec.extend(&bytes[..split]);
            let first = dec.next_message().unwrap();
            dec.extend(&bytes[split..]);
            let all: Vec<_> = std::iter::from_fn(|| dec.next_message().unwrap())
                .chain(first)
                .collect();
            assert_eq!(all.len(), 1, "split at {split}");
        }
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut dec = FrameDecoder::new(10);
        dec.extend(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            dec.next_message(),
            Err(ProtocolError::FrameTooLarge { .. })
        ));

        let mut dec = FrameDecoder::new(1024);
        dec.extend(&frame(b"hello"));
        assert!(matches!(
            dec.next_message(),
            Err(ProtocolError::Malformed { .. })
        ));

        let mut dec = FrameDecoder::new(1024);
        dec.extend(&frame(br#"{"type":"no_such_type","id":"1"}"#));
        assert!(dec.next_message().is_err());
    }
}
