//! The Fork strategy's child: writes a whole checkpoint stream from the frozen copy of memory,
//! doing only async-signal-safe work.

use super::Piece;
use crate::image::format::{frame_header, End, FrameKind, PAGES_PER_FRAME};
use kmod_shim::{page_size, ChildJob};
use std::os::fd::{AsRawFd, OwnedFd};

/// The Fork strategy's child job: writes the whole checkpoint stream (BEGIN prepared by the
/// parent; PAGES and END encoded in the child, allocation-free) to the WAL file and `fsync`s it.
pub(crate) struct WriteStream {
    fd: Option<OwnedFd>,
    raw: i32,
    begin: Vec<u8>,
    runs: Vec<Piece>,
    seq: u64,
    /// The image directory's lock, inherited by the child: closed there first, so that a
    /// child that outlives a killed parent does not keep the directory locked (-1: none).
    lock_fd: i32,
}

impl WriteStream {
    pub(super) fn new(
        fd: OwnedFd,
        begin: Vec<u8>,
        runs: &[Piece],
        seq: u64,
        lock_fd: i32,
    ) -> WriteStream {
        WriteStream {
            raw: fd.as_raw_fd(),
            fd: Some(fd),
            begin,
            runs: runs.to_vec(),
            seq,
            lock_fd,
        }
    }
}

/// `write(2)` all of `parts` (a few iovecs), resuming after partial writes; async-signal-safe.
fn write_all_v(fd: i32, parts: &[&[u8]]) -> Result<(), i32> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 3];
        let mut n = 0;
        for (k, p) in parts[idx..].iter().enumerate().take(3) {
            let skip = if k == 0 { off } else { 0 };
            iov[k] = libc::iovec {
                iov_base: p[skip..].as_ptr() as *mut _,
                iov_len: p.len() - skip,
            };
            n += 1;
        }
        // SAFETY: the iovecs describe live, readable slices.
        let w = unsafe { libc::writev(fd, iov.as_ptr(), n) };
        if w < 0 {
            // SAFETY: reading this thread's errno.
            let e = unsafe { *libc::__errno_location() };
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        let mut w = w as usize;
        while idx < parts.len() && w >= parts[idx].len() - off {
            w -= parts[idx].len() - off;
            idx += 1;
            off = 0;
        }
        off += w;
    }
    Ok(())
}

// SAFETY: `run` reads memory, computes CRCs on the stack, and calls writev/fsync: all
// async-signal-safe; everything it needs was allocated by the parent before the fork.
unsafe impl ChildJob for WriteStream {
    fn run(&self) -> i32 {
        if self.lock_fd >= 0 {
            // SAFETY: close is async-signal-safe; the descriptor is this child's copy.
            unsafe { libc::close(self.lock_fd) };
        }
        let page = page_size();
        if let Err(e) = write_all_v(self.raw, &[&self.begin]) {
            return e.clamp(1, 255);
        }
        let mut end = End {
            seq: self.seq,
            ..End::default()
        };
        for &Piece { addr, len, zero } in &self.runs {
            if zero {
                let (a, l) = ((addr as u64).to_le_bytes(), (len as u64).to_le_bytes());
                let h = frame_header(FrameKind::Zero, &[&a, &l]);
                if let Err(e) = write_all_v(self.raw, &[&h, &a, &l]) {
                    return e.clamp(1, 255);
                }
                end.digest = crc32c::crc32c_append(crc32c::crc32c_append(end.digest, &a), &l);
                end.page_frames += 1;
                end.pages += (len / page) as u64;
                continue;
            }
            let mut at = 0;
            while at < len {
                let n = (len - at).min(PAGES_PER_FRAME * page);
                let a = ((addr + at) as u64).to_le_bytes();
                // SAFETY: the run lies in tracked memory, frozen in this child.
                let data = unsafe { std::slice::from_raw_parts((addr + at) as *const u8, n) };
                let h = frame_header(FrameKind::Pages, &[&a, data]);
                if let Err(e) = write_all_v(self.raw, &[&h, &a, data]) {
                    return e.clamp(1, 255);
                }
                end.digest = crc32c::crc32c_append(crc32c::crc32c_append(end.digest, &a), data);
                end.page_frames += 1;
                end.pages += (n / page) as u64;
                at += n;
            }
        }
        let e = end.encode();
        let h = frame_header(FrameKind::End, &[&e]);
        if let Err(err) = write_all_v(self.raw, &[&h, &e]) {
            return err.clamp(1, 255);
        }
        // SAFETY: fsync is async-signal-safe.
        if unsafe { libc::fsync(self.raw) } != 0 {
            // SAFETY: errno of this thread.
            return unsafe { *libc::__errno_location() }.clamp(1, 255);
        }
        0
    }

    fn after_fork_in_parent(&mut self) {
        self.fd = None;
    }
}
