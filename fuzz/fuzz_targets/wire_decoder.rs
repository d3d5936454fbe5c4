//! The wire codec against hostile bytes: the spare's handshake (`ServerHandshake::feed`), the
//! primary's (`ClientHandshake::feed`) and an established session's `Opener` (`push` +
//! `next_msg`), every byte stream cut at split points taken from the input. None may panic, buffer
//! more than it was given, or allocate beyond what the input can justify (run with
//! `-malloc_limit_mb=64`: a single allocation above that is a crash).
//!
//! Input: `mode | nsplits | splits[nsplits] | payload`, and by `mode % 5`:
//! 0. payload → a fresh `ServerHandshake` (mostly garbage hellos and proofs);
//! 1. a valid hello and proof built here (nonce from the payload), then the rest of the payload
//!    as session bytes → the spare's `Opener` (framing, length and MAC checks);
//! 2. payload → a fresh `ClientHandshake` (a hostile spare's reply), then what it says of the
//!    spare closing there (`closed`: a version notice, silence, or nothing to say);
//! 3. payload = `(len u16, body)*`: each body sealed here with the right MAC (the session key
//!    computed from the spec, not taken from the codec) → the `Opener` must never call a
//!    correctly sealed frame forged, and must decode or refuse each body cleanly; what it
//!    decodes must round-trip through `Sealer::seal`;
//! 4. as 3, then one byte of the sealed stream flipped (position from the payload): the
//!    opener must fail at that frame or later, never accept a changed frame as it was.

#![no_main]

use hmac::{Hmac, KeyInit, Mac};
use hotspare_fuzz::Bytes;
use hotspare_proto::codec::{
    ClientHandshake, Key, ServerHandshake, ServerStep, Session, WireError, HELLO_LEN, MAC_LEN,
    MAX_MESSAGE, MIN_BODY, VERSION,
};
use hotspare_proto::Msg;
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const KEY: &[u8] = b"hotspare fuzzing key";
const NS: [u8; 32] = [0x5a; 32];

/// Cuts `data` at the split sizes (each 1..=256; the last piece is the rest).
fn pieces<'a>(splits: &[u8], data: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for s in splits {
        if rest.is_empty() {
            break;
        }
        let n = (usize::from(*s) + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Pushes pieces into the opener and drains it after each; returns the messages opened and
/// the error that ended it, if any.
fn open_all(s: &mut Session, pieces: &[&[u8]]) -> (Vec<(u64, Msg)>, Option<WireError>) {
    let mut got = Vec::new();
    let mut pushed = 0usize;
    for p in pieces {
        s.opener.push(p);
        pushed += p.len();
        assert!(
            s.opener.buffered() <= pushed,
            "opener holds more than it was given"
        );
        loop {
            match s.opener.next_msg() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
    }
    (got, None)
}

/// Both ends of a session after a real handshake with primary nonce `np`: (primary, spare).
fn sessions(np: [u8; 32]) -> (Session, Session) {
    let key = Key::from_bytes(KEY);
    let (mut client, hello) = ClientHandshake::new(&key, np);
    let mut server = ServerHandshake::new(&key, NS);
    let ServerStep::Reply(reply) = server.feed(&hello).expect("valid hello") else {
        panic!("no reply to a whole hello")
    };
    let (proof, primary, _) = client.feed(&reply).expect("valid reply").expect("done");
    match server.feed(&proof).expect("valid proof") {
        ServerStep::Done(spare, rest) => {
            assert!(rest.is_empty());
            (primary, spare)
        }
        _ => panic!("handshake not done after the proof"),
    }
}

/// The envelope of `body` as the primary's sealer would make it for message `counter`,
/// computed from the codec's specification: `S = HMAC(K, "session" | np | ns)`,
/// `mac = HMAC(S, 'P' | counter | len | body)` truncated to its first 16 bytes.
fn seal_raw(np: &[u8; 32], counter: u64, body: &[u8], out: &mut Vec<u8>) {
    let mac = |k: &[u8], parts: &[&[u8]]| -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(k).expect("any key size");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    };
    let s = mac(KEY, &[b"session", np, &NS]);
    let len = (body.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(body);
    out.extend_from_slice(&mac(&s, &[b"P", &counter.to_le_bytes(), &len, body])[..16]);
}

fn sealed_frames(np: &[u8; 32], payload: &[u8]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut b = Bytes::new(payload);
    let (mut stream, mut frames) = (Vec::new(), Vec::new());
    let mut counter = 0;
    while !b.is_empty() {
        let n = usize::from(b.u16());
        let body = b.take(n);
        let start = stream.len();
        seal_raw(np, counter, body, &mut stream);
        counter += 1;
        frames.push((start, stream.len()));
    }
    (stream, frames)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8() % 5;
    let nsplits = usize::from(b.u8() % 32);
    let splits = b.take(nsplits).to_vec();
    let payload = b.rest();
    let key = Key::from_bytes(KEY);
    match mode {
        0 => {
            let mut hs = ServerHandshake::new(&key, NS);
            let mut fed = 0usize;
            let mut replied = false;
            let parts = pieces(&splits, payload);
            for (i, p) in parts.iter().enumerate() {
                fed += p.len();
                match hs.feed(p) {
                    Ok(ServerStep::More) => {
                        assert!(hs.buffered() <= fed);
                    }
                    Ok(ServerStep::Reply(r)) => {
                        assert!(!replied, "two replies");
                        assert!(fed >= HELLO_LEN, "reply before a whole hello");
                        assert_eq!(r.len(), 64);
                        replied = true;
                    }
                    Ok(ServerStep::Done(mut s, rest)) => {
                        // Only reachable by forging HMAC-SHA256: the fuzzer cannot. Still, the
                        // session must work on what follows.
                        let mut all: Vec<&[u8]> = vec![&rest];
                        all.extend_from_slice(&parts[i + 1..]);
                        let _ = open_all(&mut s, &all);
                        return;
                    }
                    Err(WireError::BadHello) => {
                        assert!(!replied && fed >= 4, "BadHello before 4 bytes");
                        return;
                    }
                    Err(WireError::Version { peer, ours }) => {
                        assert!(!replied && fed >= 5, "Version before 5 bytes");
                        assert!(ours == VERSION && peer != VERSION, "{peer} {ours}");
                        return;
                    }
                    Err(WireError::AuthFailed) => {
                        assert!(replied, "AuthFailed before the proof");
                        return;
                    }
                    Err(e) => panic!("unexpected handshake error {e:?}"),
                }
            }
        }
        1 => {
            let mut np = [0u8; 32];
            let n = payload.len().min(32);
            np[..n].copy_from_slice(&payload[..n]);
            let (_, mut s) = sessions(np);
            let parts = pieces(&splits, &payload[n..]);
            let (got, err) = open_all(&mut s, &parts);
            // Without the session key no frame can authenticate; a length in range with a
            // wrong MAC is BadMac, one out of range TooLarge.
            assert!(
                got.is_empty(),
                "a message the fuzzer could not have sealed: {got:?}"
            );
            if let Some(e) = err {
                assert!(
                    matches!(e, WireError::BadMac { counter: 0 } | WireError::TooLarge(_)),
                    "{e:?}"
                );
            }
        }
        2 => {
            let (mut c, _hello) = ClientHandshake::new(&key, [3; 32]);
            for p in pieces(&splits, payload) {
                match c.feed(p) {
                    Ok(None) => {}
                    Ok(Some(_)) => return, // a forged spare proof: impossible without the key
                    Err(e) => {
                        assert_eq!(e, WireError::AuthFailed);
                        return;
                    }
                }
            }
            // The spare closes here: what the primary would say is a version problem only for
            // nothing at all or a 5-byte notice of another version.
            match c.closed() {
                None => {}
                Some(WireError::HelloRefused) => assert!(payload.is_empty()),
                Some(WireError::Version { peer, ours }) => {
                    assert!(payload.len() == 5 && &payload[..4] == b"HSRP");
                    assert!(peer == payload[4] && peer != VERSION && ours == VERSION);
                }
                Some(e) => panic!("{e:?}"),
            }
        }
        _ => {
            let np = [0x11; 32];
            let (mut stream, frames) = sealed_frames(&np, payload);
            let flip = if mode == 4 && !stream.is_empty() {
                let pos = splits.iter().fold(0usize, |a, x| {
                    a.wrapping_mul(251).wrapping_add(usize::from(*x))
                }) % stream.len();
                stream[pos] ^= 1 << (pos % 8);
                Some(pos)
            } else {
                None
            };
            let (_, mut s) = sessions(np);
            let parts = pieces(&splits, &stream);
            let (got, err) = open_all(&mut s, &parts);
            // Which frame was damaged, if any.
            let damaged = flip.map(|p| frames.iter().position(|&(a, e)| p >= a && p < e));
            for (i, (term, m)) in got.iter().enumerate() {
                if let Some(Some(d)) = damaged {
                    assert!(
                        i < d,
                        "frame {i} opened although byte {flip:?} of frame {d} was flipped"
                    );
                }
                // What the opener accepted must be exactly what was sealed.
                let (start, end) = frames[i];
                let body = &stream[start + 4..end - MAC_LEN];
                let (t, _) = postcard::take_from_bytes::<u64>(body).expect("a term varint");
                assert_eq!(t, *term);
                // And what it decodes, our own sealer seals so that an opener reads it back.
                let (mut client, mut again) = sessions(np);
                let mut wire = Vec::new();
                client.sealer.seal(*term, m, &mut wire);
                again.opener.push(&wire);
                assert_eq!(again.opener.next_msg(), Ok(Some((*term, m.clone()))));
            }
            match err {
                None => {
                    if damaged.is_none() {
                        assert_eq!(got.len(), frames.len(), "sealed frames left unopened");
                    }
                }
                Some(WireError::BadMac { counter }) => {
                    assert_eq!(counter as usize, got.len());
                    assert!(
                        flip.is_some(),
                        "frame {counter}, sealed with the right key and counter, called forged"
                    );
                }
                Some(WireError::TooLarge(n)) => {
                    assert!(
                        !(MIN_BODY..=MAX_MESSAGE).contains(&n) || flip.is_some(),
                        "TooLarge({n})"
                    );
                }
                Some(WireError::Decode(_)) => {}
                Some(e) => panic!("{e:?}"),
            }
        }
    }
});
