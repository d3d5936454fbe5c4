//! Writes the seed corpora: a few valid inputs per target, built with the real encoders
//! (`hotspare_image::write_stream`, the codec's handshake, postcard), so that fuzzing starts
//! from inputs that reach deep into each decoder.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus -- fuzz/corpus`

use hotspare_image::format::encode_begin;
use hotspare_image::{write_stream, Begin, RangeEntry, Run, FORMAT_VERSION};
use hotspare_fuzz::{flags, put_chunk, ImageInput};
use hotspare_proto::codec::{ClientHandshake, Key};
use hotspare_proto::{Msg, StreamHeader};
use std::fs;
use std::path::Path;

const PAGE: u64 = 4096;
const ADDR: u64 = 0x10_0000_0000;
const LINEAGE_A: [u8; 16] = [0xa1; 16];
const LINEAGE_B: [u8; 16] = [0xb2; 16];

fn begin(lineage: [u8; 16], seq: u64, base_seq: u64, ranges: &[(u64, u64, bool)]) -> Begin {
    Begin {
        format_version: FORMAT_VERSION,
        lineage,
        term: 1,
        seq,
        base_seq,
        exe_id: [7; 32],
        page_size: PAGE as u32,
        ranges: ranges
            .iter()
            .map(|&(addr, len, complete)| RangeEntry {
                addr,
                len,
                complete,
            })
            .collect(),
        meta: b"meta".to_vec(),
    }
}

fn stream(b: &Begin, runs: &[Run<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    write_stream(&mut out, b, runs.iter().copied()).expect("to memory");
    out
}

/// A full checkpoint of two ranges: one page of data and zero pages in the first, all zero in
/// the second.
fn full(lineage: [u8; 16], seq: u64) -> Vec<u8> {
    let page = vec![0x5a; PAGE as usize];
    let b = begin(
        lineage,
        seq,
        0,
        &[(ADDR, 4 * PAGE, true), (ADDR + 16 * PAGE, 2 * PAGE, true)],
    );
    stream(
        &b,
        &[
            Run::Data(ADDR, &page),
            Run::Zero(ADDR + PAGE, 3 * PAGE),
            Run::Zero(ADDR + 16 * PAGE, 2 * PAGE),
        ],
    )
}

/// An incremental checkpoint on `base`: one changed page.
fn incremental(lineage: [u8; 16], seq: u64, base: u64) -> Vec<u8> {
    let page = vec![seq as u8; PAGE as usize];
    let b = begin(
        lineage,
        seq,
        base,
        &[(ADDR, 4 * PAGE, false), (ADDR + 16 * PAGE, 2 * PAGE, false)],
    );
    stream(&b, &[Run::Data(ADDR + 2 * PAGE, &page)])
}

fn manifest_of(lineage: [u8; 16], seq: u64) -> Vec<u8> {
    encode_begin(&begin(
        lineage,
        seq,
        0,
        &[(ADDR, 4 * PAGE, true), (ADDR + 16 * PAGE, 2 * PAGE, true)],
    ))
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("corpus directory");
    fs::write(d.join(name), bytes).expect("seed");
}

fn wire(dir: &Path) {
    let key = Key::from_bytes(b"hotspare fuzzing key");
    let (_, hello) = ClientHandshake::new(&key, [0x11; 32]);
    // Mode 0: a valid hello then a (wrong) proof, one byte at a time.
    let mut s = vec![0, 31];
    s.extend_from_slice(&[0; 31]);
    s.extend_from_slice(&hello);
    s.extend_from_slice(&[0x33; 32]);
    write(dir, "wire_decoder", "hello-bytewise", &s);
    // Mode 2: a spare's reply (wrong MAC), and a newer spare's version notice.
    let mut s = vec![2, 2, 10, 20];
    s.extend_from_slice(&[0x44; 64]);
    write(dir, "wire_decoder", "client-reply", &s);
    let mut s = vec![2, 0];
    s.extend_from_slice(b"HSRP");
    s.push(hotspare_proto::codec::VERSION + 1);
    write(dir, "wire_decoder", "client-version-notice", &s);
    // Mode 0: the previous version's hello.
    let mut s = vec![0, 0];
    s.extend_from_slice(&hello[..4]);
    s.push(hotspare_proto::codec::VERSION - 1);
    s.extend_from_slice(&hello[5..]);
    write(dir, "wire_decoder", "hello-old-version", &s);
    // Modes 3 and 4: every message kind, sealed.
    let msgs = [
        Msg::Hello {
            exe_id: [7; 32],
            pid: 42,
            lineage: LINEAGE_A,
            ack: hotspare_proto::AckLevel::Received,
        },
        Msg::Status {
            term: 3,
            seq: 9,
            applied: 8,
            since_grant_ms: 12,
            detection_us: 50_000,
        },
        Msg::StreamStart(StreamHeader {
            seq: 10,
            base_seq: 9,
        }),
        Msg::Chunk {
            seq: 10,
            bytes: vec![1, 2, 3, 4, 5],
        },
        Msg::EndStream { seq: 10 },
        Msg::Ack { seq: 10 },
        Msg::Nack {
            seq: 11,
            reason: "no".into(),
        },
        Msg::Heartbeat { id: 77, seq: 10 },
        Msg::HeartbeatAck { id: 77, seq: 10 },
        Msg::Fenced { term: 4 },
        Msg::Refused {
            reason: "lineage".into(),
        },
        Msg::StatusRequest,
        Msg::Stream {
            header: StreamHeader {
                seq: 12,
                base_seq: 11,
            },
            bytes: vec![6, 7, 8],
        },
        Msg::HandOver,
        Msg::HandedOver { seq: 12 },
    ];
    let mut bodies = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        // The envelope's body: the term (a varint), then the message.
        let body = postcard::to_allocvec(&(i as u64 * 1000, m)).expect("encode");
        bodies.extend_from_slice(&(body.len() as u16).to_le_bytes());
        bodies.extend_from_slice(&body);
    }
    let mut s = vec![3, 0];
    s.extend_from_slice(&bodies);
    write(dir, "wire_decoder", "sealed-all-kinds", &s);
    let mut s = vec![4, 3, 7, 1, 200];
    s.extend_from_slice(&bodies);
    write(dir, "wire_decoder", "sealed-flipped", &s);
    // Mode 1: a session, then bytes that are not a valid frame.
    let mut s = vec![1, 1, 3];
    s.extend_from_slice(&[0x22; 32]);
    s.extend_from_slice(&20u32.to_le_bytes());
    s.extend_from_slice(&[0; 52]);
    write(dir, "wire_decoder", "session-garbage", &s);
}

fn spare(dir: &Path) {
    // Opcodes (see fuzz_targets/spare_core.rs): 0 open, 1 close c, 2 hello c t x, 3 start c t
    // s b, 4 chunk c t s n, 5 end c t s, 6 heartbeat c t id s, 7 checkpoint c t s b, 8 other
    // c t k.., 9 raw c t n bytes, 10 disk ok, 11 disk ok/fail f, 12 advance u16, 13 timer,
    // 14 drain disk / bogus completion, 15 timeout now.
    let head = |flags: u8| vec![flags, 1, 0, 5, 1, 5];
    // A primary of the image's lineage: heartbeats, two checkpoints, then silence → takeover.
    let mut s = head(4);
    s.extend_from_slice(&[0, 2, 0, 1, 0, 6, 0, 1, 1, 5]);
    s.extend_from_slice(&[
        7, 0, 1, 6, 5, 14, 6, 0, 1, 2, 6, 7, 0, 1, 7, 6, 10, 10, 10, 10, 10,
    ]);
    s.extend_from_slice(&[12, 0xff, 0x0f, 13, 14, 13, 14, 13]);
    write(dir, "spare_core", "checkpoints-then-takeover", &s);
    // A new lineage with accept_new_lineage: full checkpoint 1 replaces the image.
    let mut s = head(5);
    s.extend_from_slice(&[
        0, 2, 0, 1, 1, 6, 0, 1, 1, 0, 7, 0, 1, 1, 0, 14, 6, 0, 1, 2, 1,
    ]);
    s.extend_from_slice(&[1, 0, 12, 0xff, 0xff, 13, 14, 13, 14]);
    write(dir, "spare_core", "new-lineage-accepted", &s);
    // A newer term: SaveTerm fails, then a reconnect; an older term fenced.
    let mut s = head(4);
    s.extend_from_slice(&[
        0, 2, 0, 3, 0, 11, 0, 0, 2, 1, 3, 0, 14, 6, 1, 3, 1, 5, 0, 2, 2, 0, 0,
    ]);
    s.extend_from_slice(&[12, 0x10, 0x27, 15, 13, 14, 13]);
    write(dir, "spare_core", "terms", &s);
    // Chaos: unsolicited completions, raw messages.
    let mut s = head(6);
    s.extend_from_slice(&[
        0, 2, 0, 1, 0, 7, 0, 1, 6, 5, 14, 6, 3, 0, 1, 6, 1, 14, 0, 1, 0,
    ]);
    s.extend_from_slice(&[
        9, 0, 1, 3, 7, 1, 2, 8, 0, 1, 1, 4, 12, 0xff, 0xff, 13, 14, 0, 1, 1,
    ]);
    write(dir, "spare_core", "chaos", &s);
    // An empty image, two primaries racing.
    let mut s = vec![0, 0, 0, 0, 0, 0];
    s.extend_from_slice(&[
        0, 0, 2, 0, 1, 0, 2, 1, 1, 1, 7, 0, 1, 1, 0, 7, 1, 1, 1, 0, 10, 10,
    ]);
    s.extend_from_slice(&[10, 10, 10, 10, 6, 1, 1, 3, 1, 12, 0xff, 0xff, 13, 14, 13]);
    write(dir, "spare_core", "empty-image-two-primaries", &s);
}

fn streams(dir: &Path) {
    let f = full(LINEAGE_A, 1);
    let i = incremental(LINEAGE_A, 2, 1);
    for (name, flags, bytes) in [
        ("full", 0u8, &f),
        ("incremental", 0, &i),
        ("full-fixing", 3, &f),
        ("incremental-fixing", 3, &i),
    ] {
        let mut s = vec![flags];
        s.extend_from_slice(bytes);
        write(dir, "stream_decoder", name, &s);
    }
    let mut s = vec![0];
    s.extend_from_slice(&manifest_of(LINEAGE_A, 3));
    write(dir, "stream_decoder", "manifest", &s);
    write(dir, "stream_decoder", "wire-delta", &wire_delta());
}

/// A wire stream (BASED + DELTA) on the `stream_decoder` target's base, made by the
/// primary's encoder: a full stream of the base pages teaches it what the spare holds.
fn wire_delta() -> Vec<u8> {
    use hotspare_image::delta::Shadow;
    use hotspare_fuzz::{wire_base_page, WIRE_BASE_ADDR, WIRE_BASE_PAGE, WIRE_BASE_PAGES};
    let page = WIRE_BASE_PAGE as usize;
    let mut mem = vec![0u8; WIRE_BASE_PAGES as usize * page];
    for (i, p) in mem.chunks_mut(page).enumerate() {
        wire_base_page(WIRE_BASE_ADDR + (i * page) as u64, p);
    }
    let begin = |seq, base_seq| Begin {
        format_version: FORMAT_VERSION,
        lineage: [0x11; 16],
        term: 1,
        seq,
        base_seq,
        exe_id: [7; 32],
        page_size: page as u32,
        ranges: vec![RangeEntry {
            addr: WIRE_BASE_ADDR,
            len: WIRE_BASE_PAGES * WIRE_BASE_PAGE,
            complete: base_seq == 0,
        }],
        meta: b"m".to_vec(),
    };
    let mut sh = Shadow::default();
    sh.encode(
        &mut Vec::new(),
        &begin(1, 0),
        [Run::Data(WIRE_BASE_ADDR, &mem)],
    );
    mem[100..172].fill(b'v');
    mem[3 * page + 7] ^= 1;
    let mut out = vec![0u8];
    sh.encode(
        &mut out,
        &begin(2, 1),
        [Run::Data(WIRE_BASE_ADDR, &mem[..4 * page])],
    );
    out
}

fn images(dir: &Path) {
    let fix = flags::FIX_CRC | flags::FIX_END;
    let cases: Vec<(&str, ImageInput)> = vec![
        (
            "empty-dir-full-wal",
            ImageInput {
                flags: fix,
                manifest: None,
                wals: vec![(1, 0, full(LINEAGE_A, 1))],
            },
        ),
        (
            "full-then-incremental",
            ImageInput {
                flags: fix | flags::REOPEN,
                manifest: None,
                wals: vec![
                    (1, 0, full(LINEAGE_A, 1)),
                    (2, 0, incremental(LINEAGE_A, 2, 1)),
                ],
            },
        ),
        (
            "manifest-then-incremental",
            ImageInput {
                flags: fix,
                manifest: Some(manifest_of(LINEAGE_A, 3)),
                wals: vec![
                    (4, 0, incremental(LINEAGE_A, 4, 3)),
                    (5, 0, incremental(LINEAGE_A, 5, 4)),
                ],
            },
        ),
        (
            "new-lineage-replaces",
            ImageInput {
                flags: fix | flags::REOPEN,
                manifest: Some(manifest_of(LINEAGE_A, 7)),
                wals: vec![(1, 0, full(LINEAGE_B, 1))],
            },
        ),
        (
            "torn-and-bad",
            ImageInput {
                flags: 0,
                manifest: Some(manifest_of(LINEAGE_A, 3)),
                wals: vec![
                    (4, 1, incremental(LINEAGE_A, 4, 3)),
                    (5, 2, incremental(LINEAGE_A, 5, 4)),
                    (6, 0, incremental(LINEAGE_A, 6, 2)),
                ],
            },
        ),
        (
            "applying-marker",
            ImageInput {
                flags: fix | flags::APPLYING,
                manifest: Some(manifest_of(LINEAGE_A, 3)),
                wals: vec![(4, 0, incremental(LINEAGE_A, 4, 3))],
            },
        ),
        (
            "no-data-files",
            ImageInput {
                flags: flags::NO_DATA,
                manifest: Some(manifest_of(LINEAGE_A, 3)),
                wals: vec![],
            },
        ),
    ];
    for (name, input) in cases {
        write(dir, "image_dir_recovery", name, &input.encode());
    }
    // Round trip of the layout itself.
    let mut raw = vec![0, 1];
    put_chunk(&mut raw, b"x");
    assert_eq!(ImageInput::parse(&raw).manifest.as_deref(), Some(&b"x"[..]));
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let dir = Path::new(&dir);
    wire(dir);
    spare(dir);
    streams(dir);
    images(dir);
    println!("seed corpora written under {}", dir.display());
}
