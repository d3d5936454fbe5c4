//! The C ABI (`include/hotspare.h`). One process-wide library instance. Registrations that resume
//! needs (`hs_worker_register`, `hs_sigreg`) come before `hs_init`; `hs_init` starts fresh or,
//! with `HOTSPARE_RESUME` set, resumes and runs the workers itself (it does not return then).
//! Every function returns 0 or a positive value on success and a negative `HS_E*` code on
//! error; `hs_strerror(code)` names the code and `hs_last_error()` gives the full message.
//! No panic crosses the boundary.

#![allow(non_camel_case_types)] // C names, as in hotspare.h

use crate::error::Error;
use crate::{Builder, Config, HotSpare};
use std::alloc::Layout;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

/// Configuration, environment or TOML error; or a call out of order.
pub const HS_ECONFIG: c_int = -1;
/// The checkpoint heap's address range is taken.
pub const HS_EHEAPADDR: c_int = -2;
/// The checkpoint heap is full.
pub const HS_ENOMEM: c_int = -3;
/// Dirty tracking (kmod-shim) failed or refused a range.
pub const HS_ETRACK: c_int = -4;
/// The image directory or a checkpoint stream is bad.
pub const HS_EIMAGE: c_int = -5;
/// A fresh start found an existing image.
pub const HS_EEXISTS: c_int = -6;
/// A worker or signal handler of the image is not registered.
pub const HS_EUNKNOWN: c_int = -7;
/// Checkpoint metadata could not be encoded or decoded.
pub const HS_EMETA: c_int = -8;
/// A checkpoint failed.
pub const HS_ECPT: c_int = -9;
/// A system call failed.
pub const HS_EOS: c_int = -10;
/// A bad argument (NULL, not UTF-8, …).
pub const HS_EINVAL: c_int = -11;
/// Internal error (a panic was caught).
pub const HS_EINTERNAL: c_int = -12;

/// Every error code with its `hs_strerror` text (the header must list the same values).
pub const ERROR_CODES: [(c_int, &str, &CStr); 12] = [
    (
        HS_ECONFIG,
        "HS_ECONFIG",
        c"configuration error or call out of order",
    ),
    (
        HS_EHEAPADDR,
        "HS_EHEAPADDR",
        c"checkpoint heap address range is in use",
    ),
    (HS_ENOMEM, "HS_ENOMEM", c"checkpoint heap is full"),
    (
        HS_ETRACK,
        "HS_ETRACK",
        c"dirty-page tracking failed or refused a range",
    ),
    (
        HS_EIMAGE,
        "HS_EIMAGE",
        c"checkpoint image or stream is damaged, foreign or unusable",
    ),
    (
        HS_EEXISTS,
        "HS_EEXISTS",
        c"the image directory already holds an image",
    ),
    (
        HS_EUNKNOWN,
        "HS_EUNKNOWN",
        c"the image names a worker or signal handler that is not registered",
    ),
    (HS_EMETA, "HS_EMETA", c"checkpoint metadata is malformed"),
    (HS_ECPT, "HS_ECPT", c"a checkpoint failed"),
    (HS_EOS, "HS_EOS", c"a system call failed"),
    (HS_EINVAL, "HS_EINVAL", c"invalid argument"),
    (HS_EINTERNAL, "HS_EINTERNAL", c"internal error"),
];

/// `struct hs_cpt_stats`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct hs_cpt_stats {
    /// Sequence number.
    pub seq: u64,
    /// Caller stop time in nanoseconds.
    pub stopped_ns: u64,
    /// Pages captured.
    pub pages: u64,
    /// Bytes captured.
    pub bytes: u64,
    /// 1 if full.
    pub full: c_int,
    /// 1 = copy, 2 = fork.
    pub strategy: c_int,
}

/// `hs_worker_fn`.
pub type hs_worker_fn = extern "C" fn();
/// `hs_signal_fn`.
pub type hs_signal_fn = extern "C" fn(c_int);

struct Pending {
    builder: Builder,
    signals: Vec<(c_int, String)>,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);
static HS: OnceLock<HotSpare> = OnceLock::new();

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

fn code(e: &Error) -> c_int {
    match e {
        Error::Config(_) => HS_ECONFIG,
        Error::HeapAddressTaken { .. } => HS_EHEAPADDR,
        Error::HeapFull { .. } => HS_ENOMEM,
        Error::Shim(_) => HS_ETRACK,
        Error::Image(_) => HS_EIMAGE,
        Error::ImageExists { .. } => HS_EEXISTS,
        Error::UnknownWorker(_) => HS_EUNKNOWN,
        Error::Metadata(_) => HS_EMETA,
        Error::BadMetadata(crate::meta::MetaError::UnknownSignalHandler(_)) => HS_EUNKNOWN,
        Error::BadMetadata(_) => HS_EMETA,
        Error::CheckpointFailed { .. } => HS_ECPT,
        Error::CodeMoved(_) | Error::NoRoot(_) => HS_EIMAGE,
        Error::Os { .. } => HS_EOS,
        Error::NotTaken { .. } => HS_EINVAL,
    }
}

fn set_last(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = c);
}

fn guard(f: impl FnOnce() -> Result<c_int, (c_int, String)>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(n)) => n,
        Ok(Err((c, msg))) => {
            set_last(msg);
            c
        }
        Err(_) => {
            set_last("internal error: a panic was caught at the C boundary".into());
            HS_EINTERNAL
        }
    }
}

fn lib(e: Error) -> (c_int, String) {
    (code(&e), e.to_string())
}

fn inval(msg: &str) -> (c_int, String) {
    (HS_EINVAL, msg.to_owned())
}

fn hs() -> Result<&'static HotSpare, (c_int, String)> {
    HS.get()
        .ok_or((HS_ECONFIG, "hs_init has not been called (or failed)".into()))
}

/// # Safety
/// `s` is NULL or a NUL-terminated string.
unsafe fn str_arg<'a>(s: *const c_char, what: &str) -> Result<&'a str, (c_int, String)> {
    if s.is_null() {
        return Err(inval(&format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| inval(&format!("{what} is not UTF-8")))
}

fn with_pending<R>(f: impl FnOnce(&mut Pending) -> R) -> Result<R, (c_int, String)> {
    if HS.get().is_some() {
        return Err((HS_ECONFIG, "must be called before hs_init".into()));
    }
    let mut p = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    if p.is_none() {
        let config = Config::load().map_err(lib)?;
        *p = Some(Pending {
            builder: Builder::new(config),
            signals: Vec::new(),
        });
    }
    Ok(f(p.as_mut().expect("just set")))
}

/// `int hs_worker_register(const char *name, hs_worker_fn fn)`: before `hs_init`.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn hs_worker_register(name: *const c_char, f: Option<hs_worker_fn>) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller promise.
        let name = unsafe { str_arg(name, "name") }?.to_owned();
        let f = f.ok_or_else(|| inval("worker function is NULL"))?;
        with_pending(|p| {
            let b = std::mem::replace(&mut p.builder, Builder::new(Config::default()));
            p.builder = b.worker(&name, move |_| f());
        })?;
        Ok(0)
    })
}

/// `int hs_sigreg(int signum, const char *name, hs_signal_fn fn)`: before `hs_init`; installed at
/// a fresh start and again on every resume.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn hs_sigreg(
    signum: c_int,
    name: *const c_char,
    f: Option<hs_signal_fn>,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller promise.
        let name = unsafe { str_arg(name, "name") }?.to_owned();
        let f = f.ok_or_else(|| inval("signal handler is NULL"))?;
        with_pending(|p| {
            let b = std::mem::replace(&mut p.builder, Builder::new(Config::default()));
            p.builder = b.signal_handler(&name, f);
            p.signals.push((signum, name));
        })?;
        Ok(0)
    })
}

/// `int hs_init(void)`: 0 after a fresh start. With `HOTSPARE_RESUME` set it resumes, runs the
/// workers and exits the process; it returns only on error.
#[no_mangle]
pub extern "C" fn hs_init() -> c_int {
    guard(|| {
        let pending = PENDING.lock().unwrap_or_else(|p| p.into_inner()).take();
        let pending = match pending {
            Some(p) => p,
            None => Pending {
                builder: Builder::new(Config::load().map_err(lib)?),
                signals: Vec::new(),
            },
        };
        let hs = pending.builder.open().map_err(lib)?;
        let resumed = hs.resumed().is_some();
        if !resumed {
            for (sig, name) in &pending.signals {
                hs.sigreg(*sig, name).map_err(lib)?;
            }
        }
        HS.set(hs)
            .map_err(|_| (HS_ECONFIG, "hs_init called twice".into()))?;
        if resumed {
            HS.get().expect("just set").run();
            std::process::exit(0);
        }
        Ok(0)
    })
}

/// `int hs_resumed(void)`: 1 in a resumed incarnation, 0 otherwise.
#[no_mangle]
pub extern "C" fn hs_resumed() -> c_int {
    guard(|| Ok(c_int::from(hs()?.resumed().is_some())))
}

/// `int hs_run(void)`: runs the registered workers; returns 0 when they have all returned.
#[no_mangle]
pub extern "C" fn hs_run() -> c_int {
    guard(|| {
        hs()?.run();
        Ok(0)
    })
}

/// `void *hs_alloc(size_t size)`: 16-byte aligned memory in the checkpoint heap, NULL if full.
#[no_mangle]
pub extern "C" fn hs_alloc(size: usize) -> *mut c_void {
    let r = catch_unwind(|| -> Option<*mut c_void> {
        use allocator_api2::alloc::Allocator;
        let hs = HS.get()?;
        let layout = Layout::from_size_align(size.checked_add(16)?, 16).ok()?;
        let p = hs
            .heap()
            .alloc()
            .allocate(layout)
            .ok()?
            .cast::<u8>()
            .as_ptr();
        // SAFETY: `p` has room for the 16-byte size header and `size` bytes after it.
        unsafe {
            p.cast::<usize>().write(size);
            Some(p.add(16).cast())
        }
    });
    r.ok().flatten().unwrap_or(std::ptr::null_mut())
}

/// `void hs_free(void *p)`: frees memory from `hs_alloc` (NULL is ignored).
///
/// # Safety
/// `p` is NULL or a live pointer returned by `hs_alloc`.
#[no_mangle]
pub unsafe extern "C" fn hs_free(p: *mut c_void) {
    use allocator_api2::alloc::Allocator;
    let (Some(hs), false) = (HS.get(), p.is_null()) else {
        return;
    };
    // SAFETY: `p` came from hs_alloc, which put the size 16 bytes before it.
    unsafe {
        let base = p.cast::<u8>().sub(16);
        let size = base.cast::<usize>().read();
        let layout = Layout::from_size_align_unchecked(size + 16, 16);
        hs.heap()
            .alloc()
            .deallocate(std::ptr::NonNull::new_unchecked(base), layout);
    }
}

/// `int hs_set_root(void *p)`: the object handed back by `hs_root` after resume.
#[no_mangle]
pub extern "C" fn hs_set_root(p: *mut c_void) -> c_int {
    guard(|| {
        hs()?.heap().set_root_ptr(p.cast());
        Ok(0)
    })
}

/// `void *hs_root(void)`: the root object, or NULL.
#[no_mangle]
pub extern "C" fn hs_root() -> *mut c_void {
    HS.get()
        .map_or(std::ptr::null_mut(), |hs| hs.heap().root_ptr().cast())
}

/// `int hs_register_range(void *addr, size_t len)`.
#[no_mangle]
pub extern "C" fn hs_register_range(addr: *mut c_void, len: usize) -> c_int {
    guard(|| {
        hs()?
            .register_range(addr as usize, len)
            .map(|()| 0)
            .map_err(lib)
    })
}

/// `int hs_unregister_range(void *addr, size_t len)`.
#[no_mangle]
pub extern "C" fn hs_unregister_range(addr: *mut c_void, len: usize) -> c_int {
    guard(|| {
        hs()?
            .unregister_range(addr as usize, len)
            .map(|()| 0)
            .map_err(lib)
    })
}

/// `int hs_fd_register(const char *name, int fd, int kind, const char *path)`: hands a
/// duplicate of `fd` to the library (`HS_FD_FILE` needs `path`; `HS_FD_FILE_REFRESH` re-reads
/// the offset at each checkpoint). Returns 0.
///
/// # Safety
/// `name` is a NUL-terminated string; `path` is NULL or one.
#[no_mangle]
pub unsafe extern "C" fn hs_fd_register(
    name: *const c_char,
    fd: c_int,
    kind: c_int,
    path: *const c_char,
) -> c_int {
    guard(|| {
        use std::os::fd::{BorrowedFd, OwnedFd};
        // SAFETY: forwarded caller promise.
        let name = unsafe { str_arg(name, "name") }?;
        let hs = hs()?;
        if fd < 0 {
            return Err(inval("fd is negative"));
        }
        // SAFETY: the caller's fd stays open for the duration of this call; we duplicate it.
        let owned: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| (HS_EOS, format!("dup({fd}): {e}")))?;
        let r = match kind {
            1 | 2 => {
                // SAFETY: forwarded caller promise.
                let path = unsafe { str_arg(path, "path") }?;
                hs.add_file(name, owned.into(), path, kind == 2)
            }
            3 => hs.add_tcp_listener(name, owned.into()),
            4 => hs.add_unix_listener(name, owned.into()),
            5 => hs.add_connection(name, owned.into()),
            k => return Err(inval(&format!("unknown fd kind {k}"))),
        };
        r.map(|()| 0).map_err(lib)
    })
}

/// `int hs_fd_get(const char *name)`: a new descriptor for the registered (or, after resume,
/// restored) fd, which the caller owns; negative if there is none.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn hs_fd_get(name: *const c_char) -> c_int {
    guard(|| {
        use std::os::fd::IntoRawFd;
        // SAFETY: forwarded caller promise.
        let name = unsafe { str_arg(name, "name") }?;
        let f = hs()?
            .file(name)
            .ok_or_else(|| inval(&format!("no fd named '{name}'")))?;
        Ok(f.into_raw_fd())
    })
}

fn fill(out: *mut hs_cpt_stats, s: &crate::CptStats) {
    if out.is_null() {
        return;
    }
    let v = hs_cpt_stats {
        seq: s.seq,
        stopped_ns: s.stopped.as_nanos() as u64,
        pages: s.pages,
        bytes: s.bytes,
        full: c_int::from(s.full),
        strategy: if s.strategy == crate::Strategy::Fork {
            2
        } else {
            1
        },
    };
    // SAFETY: the caller passes NULL or a writable hs_cpt_stats.
    unsafe { out.write(v) };
}

/// `int hs_cpt(struct hs_cpt_stats *out)`: incremental checkpoint; `out` may be NULL.
#[no_mangle]
pub extern "C" fn hs_cpt(out: *mut hs_cpt_stats) -> c_int {
    guard(|| {
        let s = hs()?.cpt().map_err(lib)?;
        fill(out, &s);
        Ok(0)
    })
}

/// `int hs_cpt_full(struct hs_cpt_stats *out)`: full checkpoint.
#[no_mangle]
pub extern "C" fn hs_cpt_full(out: *mut hs_cpt_stats) -> c_int {
    guard(|| {
        let s = hs()?.cpt_full().map_err(lib)?;
        fill(out, &s);
        Ok(0)
    })
}

/// `int hs_wait_durable(uint64_t seq)`: waits until checkpoint `seq` is durable (`HS_ECPT`: it
/// failed); `HS_EINVAL` at once for a `seq` beyond the newest checkpoint taken.
#[no_mangle]
pub extern "C" fn hs_wait_durable(seq: u64) -> c_int {
    guard(|| hs()?.wait_durable(seq).map(|()| 0).map_err(lib))
}

/// `int hs_commit(uint64_t *ticket)`: output commit — captures everything done so far and
/// returns at once; `*ticket` (may be NULL) is released by `hs_ticket_state` / `hs_wait_durable`.
///
/// # Safety
/// `ticket` is NULL or points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn hs_commit(ticket: *mut u64) -> c_int {
    guard(|| {
        let t = hs()?.commit().map_err(lib)?;
        if !ticket.is_null() {
            // SAFETY: the caller passes NULL or a writable uint64_t.
            unsafe { ticket.write(t.seq()) };
        }
        Ok(0)
    })
}

/// `int hs_try_commit(uint64_t *ticket)`: [`HotSpare::try_commit`] — 1 and `*ticket` (may be
/// NULL) if a checkpoint was taken, 0 if the pipeline is full (nothing captured: ask again once
/// `hs_commit_fd` is readable), never waiting; for an event loop holding locks.
///
/// # Safety
/// `ticket` is NULL or points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn hs_try_commit(ticket: *mut u64) -> c_int {
    guard(|| match hs()?.try_commit().map_err(lib)? {
        Some(t) => {
            if !ticket.is_null() {
                // SAFETY: the caller passes NULL or a writable uint64_t.
                unsafe { ticket.write(t.seq()) };
            }
            Ok(1)
        }
        None => Ok(0),
    })
}

/// `int hs_ticket_state(uint64_t ticket)`: 1 durable, 0 pending, `HS_ECPT` failed (never blocks).
#[no_mangle]
pub extern "C" fn hs_ticket_state(ticket: u64) -> c_int {
    guard(|| {
        let h = hs()?;
        match h.ticket_state(crate::Ticket::from_seq(ticket)) {
            crate::TicketState::Durable => Ok(1),
            crate::TicketState::Pending => Ok(0),
            crate::TicketState::Failed(why) => Err((HS_ECPT, why)),
        }
    })
}

/// `int hs_commit_fd(void)`: a new descriptor (eventfd, non-blocking) readable whenever a
/// checkpoint ends, for `poll`/`epoll`; read 8 bytes from it to clear it, then ask
/// `hs_ticket_state`. It stays open for the life of the process.
#[no_mangle]
pub extern "C" fn hs_commit_fd() -> c_int {
    static KEPT: Mutex<Vec<crate::CommitNotifier>> = Mutex::new(Vec::new());
    guard(|| {
        let n = hs()?.commit_notifier().map_err(lib)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&n);
        KEPT.lock().unwrap_or_else(|p| p.into_inner()).push(n);
        Ok(fd)
    })
}

/// `const char *hs_strerror(int code)`: a static description of an `HS_E*` code.
#[no_mangle]
pub extern "C" fn hs_strerror(code: c_int) -> *const c_char {
    ERROR_CODES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or(c"unknown error code".as_ptr(), |(_, _, m)| m.as_ptr())
}

/// `const char *hs_last_error(void)`: the full message of this thread's last error.
#[no_mangle]
pub extern "C" fn hs_last_error() -> *const c_char {
    LAST.with(|l| l.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::ERROR_CODES;

    /// `hotspare.h` defines exactly the library's error codes, each with its value.
    #[test]
    fn header_error_codes_match_the_library() {
        let h = include_str!("../include/hotspare.h");
        for (code, name, _) in ERROR_CODES {
            let line = format!("#define {name} {code}");
            assert!(
                h.lines().any(|l| l.trim() == line),
                "hotspare.h lacks `{line}`"
            );
        }
        let defined = h.lines().filter(|l| l.starts_with("#define HS_E")).count();
        assert_eq!(
            defined,
            ERROR_CODES.len(),
            "hotspare.h defines codes the library does not know"
        );
    }
}
