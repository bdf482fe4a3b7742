//! Framing of the protocol channels: tokio-util's `LengthDelimitedCodec` (4-byte big-endian
//! length, bounded by `max_frame_length`) with one JSON message per frame. Used through
//! `FramedRead`/`FramedWrite`, so a partial frame stays in the codec's buffer, never in a
//! future's locals: a read that loses a `select!` race cannot desynchronise the stream.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

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
    #[error("I/O error on the protocol channel: {0}")]
    Io(#[from] std::io::Error),
}

/// [`Message`]s as length-prefixed JSON frames.
#[derive(Debug)]
pub struct MessageCodec {
    frames: LengthDelimitedCodec,
    max_frame_len: usize,
    /// `frames` has taken a frame's length prefix off the buffer and waits for its body.
    in_body: bool,
}

impl MessageCodec {
    pub fn new(max_frame_len: usize) -> Self {
        MessageCodec {
            frames: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(max_frame_len)
                .new_codec(),
            max_frame_len,
            in_body: false,
        }
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        // The length is checked here first only so that the error names both sizes; the
        // library's own check ("frame size too big") would say neither.
        let at_head = !self.in_body && src.len() >= 4;
        if at_head {
            let len = u64::from((&src[..4]).get_u32());
            if len > self.max_frame_len as u64 {
                return Err(ProtocolError::FrameTooLarge {
                    len,
                    max: self.max_frame_len,
                });
            }
        }
        let Some(body) = self.frames.decode(src)? else {
            self.in_body |= at_head;
            return Ok(None);
        };
        self.in_body = false;
        serde_json::from_slice::<Message>(&body)
            .map(Some)
            .map_err(|source| ProtocolError::Malformed {
                source,
                preview: String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned(),
            })
    }

    /// A frame cut off by the worker's death is not an error of the protocol: the death is
    /// reported by its exit status, so the partial frame is dropped.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        let decoded = self.decode(src)?;
        if decoded.is_none() {
            src.clear();
        }
        Ok(decoded)
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = ProtocolError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.extend_from_slice(&[0; 4]);
        let mut writer = bytes::BufMut::writer(&mut *dst);
        if let Err(e) = serde_json::to_writer(&mut writer, &msg) {
            dst.truncate(start);
            return Err(ProtocolError::Encode(e));
        }
        // The body is serialised in place behind a length placeholder, which saves copying
        // it into a second buffer as `LengthDelimitedCodec::encode` would.
        let len = dst.len() - start - 4;
        let Ok(len32) = u32::try_from(len) else {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                len: len as u64,
                max: u32::MAX as usize,
            });
        };
        dst[start..start + 4].copy_from_slice(&len32.to_be_bytes());
        Ok(())
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
            let mut codec = MessageCodec::new(1024);
            let mut buf = BytesMut::from(&bytes[..split]);
            let first = codec.decode(&mut buf).unwrap();
            buf.extend_from_slice(&bytes[split..]);
            let all: Vec<_> = std::iter::from_fn(|| codec.decode(&mut buf).unwrap())
                .chain(first)
                .collect();
            assert_eq!(all.len(), 1, "split at {split}");
        }
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut codec = MessageCodec::new(10);
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::FrameTooLarge {
                len: 0x7fff_ffff,
                max: 10
            })
        ));

        let mut codec = MessageCodec::new(1024);
        let mut buf = BytesMut::from(&frame(b"hello")[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::Malformed { .. })
        ));

        let mut buf = BytesMut::from(&frame(br#"{"type":"no_such_type","id":"1"}"#)[..]);
        assert!(MessageCodec::new(1024).decode(&mut buf).is_err());
    }

    #[test]
    fn a_partial_frame_at_end_of_stream_is_dropped() {
        let mut codec = MessageCodec::new(1024);
        let mut buf = BytesMut::from(&frame(br#"{"type":"heartbeat","id":"x"}"#)[..7]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }
}
