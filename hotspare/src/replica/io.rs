//! Small pieces both drivers use: a non-blocking write buffer and the status file.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes sealed for a peer and not yet taken by its non-blocking socket.
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    buf: Vec<u8>,
    sent: usize,
}

impl OutBuf {
    /// The buffer, to append to.
    pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes not yet written.
    pub(crate) fn unsent(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Forgets what was not written (the connection broke).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.sent = 0;
    }

    /// Writes as much as `w` takes without blocking; `Err` if the connection broke.
    pub(crate) fn flush(&mut self, w: &mut impl Write) -> std::io::Result<()> {
        while self.sent < self.buf.len() {
            match w.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.buf.len() {
            self.clear();
        }
        Ok(())
    }
}

/// Replaces a status file (`0600`) whole, so a reader never sees half of it. Best effort:
/// status is for people, and a full disk must not stop replication.
pub(crate) fn write_status_file(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let w = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if w.is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Rewrites `path` from `snapshot` every 100 ms on a thread of its own: file creation and rename
/// can block behind `fsync`s, and neither event loop may wait for them. Ends once the writer
/// is the snapshot's last owner (its event loop has ended: after a takeover in a fleet daemon
/// the program this daemon started writes the same file).
pub(crate) fn start_status_writer(path: PathBuf, snapshot: Arc<Mutex<String>>) {
    let _ = std::thread::Builder::new()
        .name("hotspare-status".into())
        .spawn(move || {
            crate::global::library_thread();
            while Arc::strong_count(&snapshot) > 1 {
                let text = snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if !text.is_empty() {
                    write_status_file(&path, &text);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
}
