//! Log lines from the replication threads, written by a thread of their own: an event loop
//! must never block on its stderr (a log pipe nobody drains) or die of it (a closed one —
//! `eprintln!` panics). Lines beyond a bounded backlog are dropped and counted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static LINES: OnceLock<SyncSender<String>> = OnceLock::new();

std::thread_local! {
    /// The service this thread works for, in a daemon that serves several (`[name]` after the
    /// prefix of each line); set on the service's threads by the fleet supervisor.
    static SERVICE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Names the service this thread's lines are about (see [`line`]).
pub(crate) fn set_service(name: Option<String>) {
    SERVICE.with(|s| *s.borrow_mut() = name);
}

/// The service this thread works for, to pass on to the threads it starts.
pub(crate) fn service() -> Option<String> {
    SERVICE.with(|s| s.borrow().clone())
}
static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);

fn sender() -> &'static SyncSender<String> {
    LINES.get_or_init(|| {
        let (tx, rx) = sync_channel::<String>(4096);
        let _ = std::thread::Builder::new()
            .name("hotspare-log".into())
            .spawn(move || {
                crate::global::library_thread();
                let mut err = std::io::stderr();
                for line in rx {
                    let _ = err.write_all(line.as_bytes());
                    QUEUED.fetch_sub(1, Ordering::SeqCst);
                }
            });
        tx
    })
}

/// Queues `prefix: msg` for stderr; never blocks.
pub(crate) fn line(prefix: &str, msg: impl std::fmt::Display) {
    let dropped = DROPPED.swap(0, Ordering::SeqCst);
    let mut text = String::new();
    let ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    };
    if dropped > 0 {
        let note = format!("({dropped} log lines dropped: stderr is not keeping up)");
        if json() {
            let o = serde_json::json!({
                "ts_ms": ms() as u64,
                "pid": std::process::id(),
                "component": prefix,
                "msg": note,
                "dropped": dropped,
            });
            text.push_str(&o.to_string());
            text.push('\n');
        } else {
            text.push_str(&format!("{prefix}: {note}\n"));
        }
    }
    if json() {
        // One object per line, for a log shipper: what the text line says, in fields.
        let mut o = serde_json::json!({
            "ts_ms": ms() as u64,
            "pid": std::process::id(),
            "component": prefix,
            "msg": msg.to_string(),
        });
        if let Some(name) = service() {
            o["service"] = name.into();
        }
        text.push_str(&o.to_string());
        text.push('\n');
    } else {
        if stamped() {
            let ms = ms();
            text.push_str(&format!("{}.{:03} ", ms / 1000, ms % 1000));
        }
        match service() {
            Some(name) => text.push_str(&format!("{prefix}[{name}]: {msg}\n")),
            None => text.push_str(&format!("{prefix}: {msg}\n")),
        }
    }
    QUEUED.fetch_add(1, Ordering::SeqCst);
    match sender().try_send(text) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            QUEUED.fetch_sub(1, Ordering::SeqCst);
            DROPPED.fetch_add(1 + dropped, Ordering::SeqCst);
        }
    }
}

/// `HOTSPARE_LOG_TIME=1`: each line starts with the wall-clock time (seconds.milliseconds
/// since 1970), for timing a failover from the logs of both machines.
fn stamped() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HOTSPARE_LOG_TIME").is_some_and(|v| v == "1"))
}

/// `HOTSPARE_LOG_FORMAT=json`: each line a JSON object (`ts_ms`, `pid`, `component`,
/// `service` in a fleet daemon, `msg`) instead of text.
fn json() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HOTSPARE_LOG_FORMAT").is_some_and(|v| v == "json"))
}

/// Waits (at most `limit`) for queued lines to be written — before `exec` or `exit`.
pub(crate) fn flush(limit: Duration) {
    let t = Instant::now();
    while QUEUED.load(Ordering::SeqCst) > 0 && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
}
