//! `cptfork()`: learn the dirty set, then `fork()`; the child sees the memory frozen as it was
//! at the fork (copy-on-write) and works on it while the parent returns at once.
//!
//! # Rules for the child
//! The parent may have many threads; the child has one, and any lock another thread held at
//! the fork stays locked forever in the child (the allocator's, stdio's, the shim's own). So
//! the child may only do async-signal-safe work (`signal-safety(7)`): read memory, `write`,
//! `writev`, `close`, `_exit`. No allocation, no `println!`, no locks, no panics. Everything
//! the job needs (buffers, iovecs, fds) is prepared in the parent before the fork — that is what
//! the closure given to [`Shim::cptfork`] is for. A [`ChildJob`] runs behind an `extern "C"`
//! boundary, so a panic in the child aborts it instead of unwinding into the parent's code.
//!
//! The child does not inherit uffd-wp registration, and `/proc/self/pagemap` fds opened by the
//! parent still describe the *parent*: the child must not (and through this API cannot) query.

use crate::dirty::DirtySet;
use crate::error::{Error, Result};
use crate::Shim;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Work done in the `cptfork` child on the frozen image; its return value is the exit code.
///
/// # Safety
/// Implementors promise that `run` does only async-signal-safe work: no allocation, no locks,
/// no panics, no buffered I/O (see the module documentation).
pub unsafe trait ChildJob {
    /// Runs in the child. Returns the child's exit status (0 = success).
    fn run(&self) -> i32;

    /// Runs in the parent right after the fork, e.g. to close the parent's copy of the fd the
    /// child writes to (so that a reader sees end-of-file when the child is done).
    fn after_fork_in_parent(&mut self) {}
}

/// A job that ends the child at once: the snapshot is taken and dropped (used to measure the
/// parent-side cost of the fork itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitAtOnce;

// SAFETY: does nothing at all.
unsafe impl ChildJob for ExitAtOnce {
    fn run(&self) -> i32 {
        0
    }
}

/// Writes every dirty run of the frozen image to a pre-opened fd with `writev`.
///
/// The stream is a sequence of records `addr: u64 LE, len: u64 LE, len bytes`, ended by a
/// record with `len == 0` (so a reader can tell a complete dump from a cut one). It is the
/// shim's own minimal dump; the Hot Spare image format is defined by the `hotspare` crate.
/// On a failed write the child exits with the `errno` as its status. The job owns the fd; the
/// parent's copy is closed right after the fork.
#[derive(Debug)]
pub struct WriteDirtyPages {
    fd: Option<OwnedFd>,
    raw_fd: RawFd,
    _headers: Box<[[u8; 16]]>,
    iov: Box<[libc::iovec]>,
}

// SAFETY: the fields are only read in the child (raw pointers into `_headers`, which this value
// owns, and into the process's own tracked memory); no interior mutability.
unsafe impl Send for WriteDirtyPages {}

impl WriteDirtyPages {
    /// Prepares (in the parent) the iovecs for every run of `dirty`, to be written to `fd`.
    pub fn new(fd: OwnedFd, dirty: &DirtySet) -> WriteDirtyPages {
        let record = |addr: usize, len: usize| {
            let mut h = [0u8; 16];
            h[..8].copy_from_slice(&(addr as u64).to_le_bytes());
            h[8..].copy_from_slice(&(len as u64).to_le_bytes());
            h
        };
        let runs: Vec<(usize, usize)> = dirty.runs().collect();
        let headers: Box<[[u8; 16]]> = runs
            .iter()
            .map(|&(a, l)| record(a, l))
            .chain(std::iter::once(record(0, 0)))
            .collect();
        let mut iov = Vec::with_capacity(runs.len() * 2 + 1);
        for (h, &(addr, len)) in headers.iter().zip(&runs) {
            iov.push(libc::iovec {
                iov_base: h.as_ptr() as *mut _,
                iov_len: 16,
            });
            iov.push(libc::iovec {
                iov_base: addr as *mut _,
                iov_len: len,
            });
        }
        let end = &headers[runs.len()];
        iov.push(libc::iovec {
            iov_base: end.as_ptr() as *mut _,
            iov_len: 16,
        });
        WriteDirtyPages {
            raw_fd: fd.as_raw_fd(),
            fd: Some(fd),
            _headers: headers,
            iov: iov.into_boxed_slice(),
        }
    }

    /// Bytes the child will write.
    pub fn total_bytes(&self) -> usize {
        self.iov.iter().map(|v| v.iov_len).sum()
    }
}

// SAFETY: `run` uses only a stack array, `writev` and `errno`: async-signal-safe.
unsafe impl ChildJob for WriteDirtyPages {
    fn run(&self) -> i32 {
        const BATCH: usize = 64;
        let (mut idx, mut off) = (0usize, 0usize);
        while idx < self.iov.len() {
            let mut batch = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BATCH];
            let mut n = 0;
            for (k, v) in self.iov[idx..].iter().take(BATCH).enumerate() {
                let skip = if k == 0 { off } else { 0 };
                batch[k] = libc::iovec {
                    iov_base: (v.iov_base as usize + skip) as *mut _,
                    iov_len: v.iov_len - skip,
                };
                n += 1;
            }
            // SAFETY: `batch[..n]` describes readable memory: our headers and tracked pages.
            let w = unsafe { libc::writev(self.raw_fd, batch.as_ptr(), n as libc::c_int) };
            if w < 0 {
                // SAFETY: reading errno of this thread.
                let e = unsafe { *libc::__errno_location() };
                if e == libc::EINTR {
                    continue;
                }
                return e.clamp(1, 255);
            }
            let mut w = w as usize;
            while w > 0 {
                let left = self.iov[idx].iov_len - off;
                if w >= left {
                    w -= left;
                    idx += 1;
                    off = 0;
                } else {
                    off += w;
                    w = 0;
                }
            }
            while idx < self.iov.len() && self.iov[idx].iov_len == off {
                idx += 1;
                off = 0;
            }
        }
        0
    }

    fn after_fork_in_parent(&mut self) {
        self.fd = None;
    }
}

/// How a `cptfork` child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOutcome {
    /// Exited with this status (0: the job succeeded).
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl ChildOutcome {
    /// Whether the job succeeded.
    pub fn is_success(self) -> bool {
        self == ChildOutcome::Exited(0)
    }
}

/// A running `cptfork` child and what it was given. Dropping it waits for the child, so no
/// zombie is left behind.
#[derive(Debug)]
pub struct Snapshot<J> {
    pid: libc::pid_t,
    dirty: DirtySet,
    job: J,
    reaped: bool,
}

impl<J> Snapshot<J> {
    /// The child's pid.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }
    /// The dirty set learned at the fork (what the child works on).
    pub fn dirty(&self) -> &DirtySet {
        &self.dirty
    }
    /// The job the child runs (the parent's copy).
    pub fn job(&self) -> &J {
        &self.job
    }
    /// Waits for the child and says how it ended.
    pub fn wait(mut self) -> Result<ChildOutcome> {
        self.reap()
    }

    fn reap(&mut self) -> Result<ChildOutcome> {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child; `status` is a valid out-pointer.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if rc == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.reaped = true;
                return Err(Error::Fork(e));
            }
        }
        self.reaped = true;
        Ok(if libc::WIFEXITED(status) {
            ChildOutcome::Exited(libc::WEXITSTATUS(status))
        } else {
            ChildOutcome::Signaled(libc::WTERMSIG(status))
        })
    }
}

impl<J> Drop for Snapshot<J> {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.reap();
        }
    }
}

extern "C" {
    /// glibc's fork without `pthread_atfork` handlers (POSIX 2024 `_Fork`).
    fn _Fork() -> libc::pid_t;
}

extern "C" fn child_main<J: ChildJob>(job: &J) -> ! {
    let code = job.run();
    // SAFETY: _exit is async-signal-safe and skips every destructor and atexit handler.
    unsafe { libc::_exit(code) }
}

impl Shim {
    /// `cptfork()`: QUERY, let `prepare` build the child's job from the dirty set (in the
    /// parent, where allocation is allowed), then fork. The child runs the job on the memory as
    /// it was at the fork and exits; the parent returns at once and may write freely.
    ///
    /// Call it at a point where the tracked memory is consistent (e.g. holding the lock that
    /// writers take): the pages the child sees are those of the moment of the fork.
    pub fn cptfork<J: ChildJob>(
        &mut self,
        prepare: impl FnOnce(&DirtySet) -> J,
    ) -> Result<Snapshot<J>> {
        let dirty = self.query()?;
        let job = prepare(&dirty);
        self.fork_with(dirty, job)
    }

    /// The fork half of [`Shim::cptfork`], for callers that did the QUERY themselves (and
    /// decided what to capture from its answer): forks and runs `job` in the child. `dirty` is
    /// only handed back in the [`Snapshot`]. Doing a second QUERY here instead would lose the
    /// pages written between the two.
    pub fn fork_with<J: ChildJob>(&mut self, dirty: DirtySet, mut job: J) -> Result<Snapshot<J>> {
        self.not_in_child()?;
        // `_Fork`, not `fork`: glibc's `fork` runs the `pthread_atfork` handlers and takes its
        // own locks (stdio's list, NSS, malloc's) first, and the caller may hold locks that a
        // thread blocked in one of those needs — the checkpoint heap's allocator locks, held
        // through a capture, when the heap is the program's `malloc` (`libhotspare_malloc.so`:
        // a thread in `getline` holds a FILE lock and waits in `realloc`; one in `fflush(NULL)`
        // holds the list and waits for that FILE; the capture waits for the list). The child
        // needs none of what those handlers prepare: it only runs the job and `_exit`s.
        // SAFETY: the child runs only `child_main`, i.e. the async-signal-safe job promised by
        // the `ChildJob` contract, and ends with `_exit`; `_Fork` (glibc 2.34+) is fork(2)
        // without the handlers.
        let pid = unsafe { _Fork() };
        match pid {
            -1 => Err(Error::Fork(std::io::Error::last_os_error())),
            0 => child_main(&job),
            pid => {
                job.after_fork_in_parent();
                Ok(Snapshot {
                    pid,
                    dirty,
                    job,
                    reaped: false,
                })
            }
        }
    }

    /// The C ABI's `cptfork`: harvest into the pending set and fork. The child keeps the
    /// pending set (its QUERY drains it); the parent's is cleared, its next epoch starting now.
    pub(crate) fn fork_raw(&mut self) -> Result<libc::pid_t> {
        self.harvest()?;
        // SAFETY: the caller (C) is told in cpt.h that its child may do only
        // async-signal-safe work; on our side the child only returns.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(Error::Fork(std::io::Error::last_os_error())),
            0 => Ok(0),
            pid => {
                self.clear_pending();
                Ok(pid)
            }
        }
    }
}
