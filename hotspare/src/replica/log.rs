//! Log lines from the replication threads, written by a thread of their own: an event loop
//! must never block on its stderr (a log pipe nobody drains) or die of it (a closed one —
//! `eprintln!` panics). Lines beyond a bounded backlog are dropped and counted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static LINES: OnceLock<SyncSender<Line>> = OnceLock::new();

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

/// One line, as its source said it; formatted (or handed to `tracing`) by the writer thread,
/// so that the thread that logs pays for a `String` and a channel send only.
struct Line {
    ts_ms: u64,
    component: String,
    service: Option<String>,
    msg: String,
    /// Lines dropped before this one (the backlog was full).
    dropped: u64,
}

fn sender() -> &'static SyncSender<Line> {
    LINES.get_or_init(|| {
        let (tx, rx) = sync_channel::<Line>(4096);
        let _ = std::thread::Builder::new()
            .name("hotspare-log".into())
            .spawn(move || {
                crate::global::library_thread();
                let mut err = std::io::stderr();
                for line in rx {
                    deliver(&line, tracing::dispatcher::has_been_set(), &mut err);
                    QUEUED.fetch_sub(1, Ordering::SeqCst);
                }
            });
        tx
    })
}

/// Writes one line: to the program's global `tracing` subscriber if it installed one
/// (`forward`; a program that logs with `tracing` gets the library's lines in its own pipeline,
/// as events of target `hotspare` with fields `component`, `service` and the message), else to
/// `out` as text or, with `HOTSPARE_LOG_FORMAT=json`, as one JSON object.
fn deliver(line: &Line, forward: bool, out: &mut impl Write) {
    if forward {
        if line.dropped > 0 {
            tracing::warn!(target: "hotspare", component = %line.component, dropped = line.dropped,
                "{} log lines dropped: the log writer is not keeping up", line.dropped);
        }
        match &line.service {
            Some(service) => tracing::info!(target: "hotspare", component = %line.component,
                service = %service, "{}", line.msg),
            None => tracing::info!(target: "hotspare", component = %line.component, "{}", line.msg),
        }
        return;
    }
    let mut text = String::new();
    let note = || {
        format!(
            "({} log lines dropped: stderr is not keeping up)",
            line.dropped
        )
    };
    if json() {
        let object = |msg: String| {
            let mut o = serde_json::json!({
                "ts_ms": line.ts_ms,
                "pid": std::process::id(),
                "component": line.component,
                "msg": msg,
            });
            if let Some(name) = &line.service {
                o["service"] = name.clone().into();
            }
            o
        };
        if line.dropped > 0 {
            let mut o = object(note());
            o["dropped"] = line.dropped.into();
            text.push_str(&o.to_string());
            text.push('\n');
        }
        // One object per line, for a log shipper: what the text line says, in fields.
        text.push_str(&object(line.msg.clone()).to_string());
        text.push('\n');
    } else {
        let prefix = match &line.service {
            Some(name) => format!("{}[{name}]", line.component),
            None => line.component.clone(),
        };
        if line.dropped > 0 {
            text.push_str(&format!("{prefix}: {}\n", note()));
        }
        if stamped() {
            text.push_str(&format!("{}.{:03} ", line.ts_ms / 1000, line.ts_ms % 1000));
        }
        text.push_str(&format!("{prefix}: {}\n", line.msg));
    }
    let _ = out.write_all(text.as_bytes());
}

/// Queues `prefix: msg` for stderr (or the program's `tracing` subscriber); never blocks.
pub(crate) fn line(prefix: &str, msg: impl std::fmt::Display) {
    let dropped = DROPPED.swap(0, Ordering::SeqCst);
    let line = Line {
        ts_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        component: prefix.to_string(),
        service: service(),
        msg: msg.to_string(),
        dropped,
    };
    QUEUED.fetch_add(1, Ordering::SeqCst);
    match sender().try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            QUEUED.fetch_sub(1, Ordering::SeqCst);
            DROPPED.fetch_add(1 + dropped, Ordering::SeqCst);
        }
    }
}

/// `HOTSPARE_LOG_TIME=1`: each line starts with the wall-clock time (seconds.milliseconds
/// since 1970), for timing a failover from the logs of both machines.
pub(crate) fn stamped() -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records each event as `target field=value …`.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, e: &tracing::Event<'_>) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!(" {}={:?}", f.name(), v));
                }
            }
            let mut v = Fields(format!(
                "{} {}",
                e.metadata().level(),
                e.metadata().target()
            ));
            e.record(&mut v);
            self.0.lock().unwrap().push(v.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn sample(service: Option<&str>, dropped: u64) -> Line {
        Line {
            ts_ms: 1_796_223_481_123,
            component: "hotspare-resume".into(),
            service: service.map(str::to_string),
            msg: "primary pid 4242 admitted".into(),
            dropped,
        }
    }

    #[test]
    fn lines_go_to_stderr_as_text_without_a_tracing_subscriber() {
        let mut out = Vec::new();
        deliver(&sample(Some("svc3"), 0), false, &mut out);
        deliver(&sample(None, 2), false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "hotspare-resume[svc3]: primary pid 4242 admitted\n\
             hotspare-resume: (2 log lines dropped: stderr is not keeping up)\n\
             hotspare-resume: primary pid 4242 admitted\n"
        );
    }

    #[test]
    fn lines_go_to_the_programs_tracing_subscriber_with_their_fields() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut out = Vec::new();
        tracing::subscriber::with_default(Capture(seen.clone()), || {
            deliver(&sample(Some("svc3"), 0), true, &mut out);
            deliver(&sample(None, 2), true, &mut out);
        });
        assert!(out.is_empty(), "written to stderr as well");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                "INFO hotspare message=primary pid 4242 admitted component=hotspare-resume service=svc3",
                "WARN hotspare message=2 log lines dropped: the log writer is not keeping up component=hotspare-resume dropped=2",
                "INFO hotspare message=primary pid 4242 admitted component=hotspare-resume",
            ]
        );
    }
}
