//! The wire protocol's pieces that touch the operating system: the key file, nonces from the
//! kernel, and a small blocking client for `hotspare status --spare`. The protocol itself —
//! handshake, envelope, messages — is sans-IO in `hotspare_proto::codec` and
//! `hotspare_proto::msg`, shared by both drivers and the simulator.

pub use hotspare_proto::codec::{Key, WireError, MAX_MESSAGE};
pub use hotspare_proto::msg::Msg;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// The key file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("key file {path}: {why}")]
pub struct KeyFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

/// Reads a key file: a regular file (not a symlink) owned by us, mode `0600` or stricter, at
/// least 16 bytes (surrounding whitespace is ignored). Opened with `O_NOFOLLOW` and checked on
/// the open descriptor, so the file checked is the file read.
pub fn load_key(path: &Path) -> Result<Key, KeyFileError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let err = |why: String| KeyFileError {
        path: path.display().to_string(),
        why,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                err("is a symbolic link; give the key file itself".into())
            } else {
                err(e.to_string())
            }
        })?;
    let meta = f.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(err("is not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(err(format!(
            "is owned by uid {}, not by us (uid {me})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!("mode is {mode:03o}, must be 600 (chmod 600)")));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
    let trimmed = bytes.trim_ascii();
    if trimmed.len() < 16 {
        return Err(err(format!(
            "holds {} bytes, at least 16 are needed",
            trimmed.len()
        )));
    }
    Ok(Key::from_bytes(trimmed))
}

/// 32 random bytes from the kernel.
pub fn nonce() -> std::io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// A blocking request for a spare's status (for `hotspare status --spare`): `(term, Status)`.
pub fn request_status(addr: &str, key: &Key) -> Result<(u64, Msg), Box<dyn std::error::Error>> {
    request(addr, key, &Msg::StatusRequest)
}

/// Asks a spare to take the primary role over (`hotspare switchover`): its answer,
/// `SwitchoverStarted` (the primary was asked to hand over) or `Refused`.
pub fn request_switchover(addr: &str, key: &Key) -> Result<(u64, Msg), Box<dyn std::error::Error>> {
    request(addr, key, &Msg::SwitchoverRequest)
}

/// One authenticated request to a spare and its first answer: `(term, answer)`.
fn request(addr: &str, key: &Key, msg: &Msg) -> Result<(u64, Msg), Box<dyn std::error::Error>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // The proof and the request are small writes in a row: with Nagle's algorithm the second
    // waited for the spare's delayed ACK of the first (~40 ms of every `hotspare switchover`).
    s.set_nodelay(true)?;
    let (mut hs, hello) = hotspare_proto::codec::ClientHandshake::new(key, nonce()?);
    s.write_all(&hello)?;
    let mut buf = [0u8; 4096];
    let (proof, mut session, rest) = loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            // Closed at our hello: another protocol version (its notice names it), or a
            // refusal; the same line the link logs.
            if let Some(e) = hs.closed() {
                return Err(e.into());
            }
            return Err("the spare closed the connection during the handshake".into());
        }
        if let Some(done) = hs.feed(&buf[..n])? {
            break done;
        }
    };
    // One write: the proof and the request in one segment.
    let mut out = proof;
    session.sealer.seal(0, msg, &mut out);
    s.write_all(&out)?;
    session.opener.push(&rest);
    loop {
        if let Some(m) = session.opener.next_msg()? {
            return Ok(m);
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err("the spare closed the connection".into());
        }
        session.opener.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotspare_proto::codec::{HELLO_LEN, VERSION, VERSION_NOTICE};
    use std::net::TcpListener;

    /// A "spare" that reads the whole hello, answers `answer` and closes.
    fn closing_spare(answer: Vec<u8>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut hello = vec![0; HELLO_LEN];
            s.read_exact(&mut hello).expect("the hello");
            s.write_all(&answer).expect("answer");
            hello
        });
        (addr, t)
    }

    /// Guards against `hotspare status --spare` / `switchover` saying only that the spare
    /// closed the connection when it named its version (the link logs the version line), or
    /// calling every silent close a version problem.
    #[test]
    fn a_request_reports_the_spares_version_notice_like_the_link() {
        let key = Key::from_bytes(b"a key of sixteen bytes or more");
        let mut notice = VERSION_NOTICE;
        notice[4] = VERSION + 1;
        let (addr, t) = closing_spare(notice.to_vec());
        let e = request_status(&addr, &key)
            .expect_err("refused")
            .to_string();
        assert_eq!(t.join().expect("spare")[..5], VERSION_NOTICE);
        let want = WireError::Version {
            peer: VERSION + 1,
            ours: VERSION,
        }
        .to_string();
        assert_eq!(e, want);
        assert!(e.contains("protocol version mismatch"), "{e}");
        // Silence at the hello: another version or a refusal, not said to be a version for sure.
        let (addr, t) = closing_spare(Vec::new());
        let e = request_switchover(&addr, &key)
            .expect_err("refused")
            .to_string();
        t.join().expect("spare");
        assert_eq!(e, WireError::HelloRefused.to_string());
        assert!(e.contains("refused the connection"), "{e}");
    }
}
