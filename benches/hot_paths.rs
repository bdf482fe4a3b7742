//! Micro-benchmarks of the host's hot paths: frame encoding and decoding, marker scanning of
//! pipe output, and UTF-8 decoding of output chunks. `cargo bench --bench hot_paths`.

use bytes::BytesMut;
use pyrepl3::protocol::{
    Execute, MarkerScanner, Message, MessageCodec, Piece, ResultMsg, TransactionPolicy,
    DEFAULT_MAX_FRAME_LEN,
};
use pyrepl3::session::decode_utf8;
use tokio_util::codec::{Decoder, Encoder};

fn main() {
    divan::main();
}

fn result_frame() -> BytesMut {
    let msg = Message::Result(ResultMsg {
        id: "w123-456".into(),
        execution_id: "0b3f5a52-1a4f-4c1e-9c55-6f1f0f1e2d3c".into(),
        value: serde_json::json!(2),
        repr: Some("2".into()),
        execution_time: 0.000012,
        marked: false,
        transaction: None,
        worker_pid: None,
        cpu_time_before: None,
        data: None,
        metadata: None,
    });
    let mut buf = BytesMut::new();
    MessageCodec::new(DEFAULT_MAX_FRAME_LEN)
        .encode(msg, &mut buf)
        .unwrap();
    buf
}

#[divan::bench]
fn encode_execute(bencher: divan::Bencher) {
    let msg = Message::Execute(Execute {
        id: "0b3f5a52-1a4f-4c1e-9c55-6f1f0f1e2d3c".into(),
        code: "1+1".into(),
        seq: 1,
        transaction_id: None,
        transaction_policy: TransactionPolicy::CommitAlways,
        capture_source: false,
        internal: None,
        mode: Default::default(),
    });
    let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME_LEN);
    let mut buf = BytesMut::with_capacity(256);
    bencher.bench_local(|| {
        buf.clear();
        codec.encode(msg.clone(), &mut buf).unwrap();
        divan::black_box(buf.len())
    });
}

#[divan::bench]
fn decode_result_frame(bencher: divan::Bencher) {
    let frame = result_frame();
    let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME_LEN);
    let mut buf = BytesMut::with_capacity(frame.len());
    bencher.bench_local(|| {
        buf.extend_from_slice(&frame);
        divan::black_box(codec.decode(&mut buf).unwrap())
    });
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn lines_64k() -> Vec<u8> {
    (0..)
        .map(|i| format!("{i}\n"))
        .flat_map(String::into_bytes)
        .take(64 * 1024)
        .collect()
}

#[divan::bench]
fn scan_64k_of_output_without_marker(bencher: divan::Bencher) {
    let chunk = lines_64k();
    let mut scanner = MarkerScanner::new(TOKEN);
    bencher
        .counter(divan::counter::BytesCount::new(chunk.len()))
        .bench_local(|| {
            let mut n = 0;
            scanner.feed(&chunk, |piece| {
                if let Piece::Data(d) = piece {
                    n += d.len()
                }
            });
            divan::black_box(n)
        });
}

#[divan::bench]
fn scan_64k_of_output_ending_in_a_marker(bencher: divan::Bencher) {
    let mut scanner = MarkerScanner::new(TOKEN);
    let mut chunk = lines_64k();
    chunk.extend_from_slice(scanner.marker());
    bencher
        .counter(divan::counter::BytesCount::new(chunk.len()))
        .bench_local(|| {
            let mut markers = 0;
            scanner.feed(&chunk, |piece| {
                if matches!(piece, Piece::Marker) {
                    markers += 1
                }
            });
            divan::black_box(markers)
        });
}

#[divan::bench]
fn decode_utf8_64k(bencher: divan::Bencher) {
    let chunk: Vec<u8> = "héllo wörld → 🐍\n"
        .bytes()
        .cycle()
        .take(64 * 1024)
        .collect();
    let mut tail = Vec::new();
    bencher
        .counter(divan::counter::BytesCount::new(chunk.len()))
        .bench_local(|| divan::black_box(decode_utf8(&mut tail, &chunk, false).len()));
}
