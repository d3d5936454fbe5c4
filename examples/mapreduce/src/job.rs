//! The coordinator's job tables and what it does with a worker's request.
//!
//! Plain Rust: with Hot Spare the coordinator makes the checkpoint heap its global allocator, so
//! these `Vec`s live in checkpoint memory and survive a failover; in `--plain` mode they are
//! ordinary memory. No `Instant`: time stamps are wall-clock milliseconds since the Unix epoch,
//! which mean the same thing in the resumed process (an `Instant` would not).

use crate::Error;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Map tasks are not all done.
    Map,
    /// All map tasks are done; reduce tasks are not.
    Reduce,
    /// Every reduce task is done.
    Done,
}

/// Map or reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A map task (one per input file).
    Map,
    /// A reduce task (one per output partition).
    Reduce,
}

impl Kind {
    /// `map` or `reduce`, as printed and sent.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Map => "map",
            Kind::Reduce => "reduce",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "map" => Some(Kind::Map),
            "reduce" => Some(Kind::Reduce),
            _ => None,
        }
    }
}

/// The state of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Not handed out (or handed out and timed out).
    Idle,
    /// Handed out at `Task::assigned_ms`, not reported done yet.
    InProgress,
    /// Reported done.
    Done,
}

/// One row of a task table.
#[derive(Debug, Clone, Copy)]
pub struct Task {
    /// Its state.
    pub state: TaskState,
    /// When it was last handed out (wall clock, ms since the epoch).
    pub assigned_ms: u64,
    /// How many times it was handed out.
    pub assignments: u32,
}

/// The whole job: the input file list, the task tables, the phase and the counts.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where the job is.
    pub phase: Phase,
    /// Number of reduce tasks R.
    pub n_reduce: u32,
    /// A task handed out and not reported done within this many ms is handed out again.
    pub timeout_ms: u64,
    /// Input files (one map task each), as path bytes.
    pub files: Vec<Vec<u8>>,
    /// Map task table.
    pub maps: Vec<Task>,
    /// Reduce task table.
    pub reduces: Vec<Task>,
    /// Map tasks done.
    pub maps_done: u32,
    /// Reduce tasks done.
    pub reduces_done: u32,
    /// Tasks handed out again after their timeout.
    pub reissued: u32,
}

/// A worker's request, one line: `GET`, or `DONE map <i>` / `DONE reduce <r>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Give me a task.
    Get,
    /// I finished this task (its output files are in place).
    Done(Kind, u32),
}

impl Request {
    /// Parses a request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, Error> {
        let bad = || Error::Protocol(format!("bad request '{line}'"));
        let mut w = line.split_ascii_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("GET"), None, None, None) => Ok(Request::Get),
            (Some("DONE"), Some(k), Some(i), None) => Ok(Request::Done(
                Kind::parse(k).ok_or_else(bad)?,
                i.parse().map_err(|_| bad())?,
            )),
            _ => Err(bad()),
        }
    }

    /// The request line (with its newline).
    pub fn line(&self) -> String {
        match self {
            Request::Get => "GET\n".into(),
            Request::Done(k, i) => format!("DONE {} {i}\n", k.name()),
        }
    }
}

/// The coordinator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `MAP <i> <R> <path>`: count the words of `path` into `mr-<i>-<r>` for r < R.
    Map {
        /// Map task number.
        id: u32,
        /// Number of reduce partitions.
        n_reduce: u32,
        /// The input file.
        path: std::vec::Vec<u8>,
    },
    /// `REDUCE <r> <M>`: merge `mr-<m>-<r>` for m < M into `mr-out-<r>`.
    Reduce {
        /// Reduce task number.
        id: u32,
        /// Number of map tasks.
        n_map: u32,
    },
    /// `WAIT`: nothing to hand out now; ask again shortly.
    Wait,
    /// `EXIT`: the job is done.
    Exit,
    /// `OK`: report taken.
    Ok,
    /// `ERR <why>`: not done; try again.
    Err(String),
}

impl Reply {
    /// The reply line (with its newline).
    pub fn line(&self) -> std::vec::Vec<u8> {
        let mut v = match self {
            Reply::Map { id, n_reduce, .. } => format!("MAP {id} {n_reduce} ").into_bytes(),
            Reply::Reduce { id, n_map } => format!("REDUCE {id} {n_map}").into_bytes(),
            Reply::Wait => b"WAIT".to_vec(),
            Reply::Exit => b"EXIT".to_vec(),
            Reply::Ok => b"OK".to_vec(),
            Reply::Err(why) => format!("ERR {why}").into_bytes(),
        };
        if let Reply::Map { path, .. } = self {
            v.extend_from_slice(path);
        }
        v.push(b'\n');
        v
    }

    /// Parses a reply line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Reply, Error> {
        let bad = || Error::Protocol(format!("bad reply '{}'", String::from_utf8_lossy(line)));
        match line {
            b"WAIT" => return Ok(Reply::Wait),
            b"EXIT" => return Ok(Reply::Exit),
            b"OK" => return Ok(Reply::Ok),
            _ => {}
        }
        if let Some(why) = line.strip_prefix(b"ERR") {
            return Ok(Reply::Err(String::from_utf8_lossy(why).trim().into()));
        }
        // `MAP <i> <R> <path>` (the path is the rest of the line) or `REDUCE <r> <M>`.
        let mut w = line.splitn(4, |b| *b == b' ');
        let (word, a, b, rest) = (w.next(), w.next(), w.next(), w.next());
        let num = |f: Option<&[u8]>| -> Result<u32, Error> {
            std::str::from_utf8(f.ok_or_else(bad)?)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)
        };
        match (word, rest) {
            (Some(b"MAP"), Some(path)) => Ok(Reply::Map {
                id: num(a)?,
                n_reduce: num(b)?,
                path: path.to_vec(),
            }),
            (Some(b"REDUCE"), None) => Ok(Reply::Reduce {
                id: num(a)?,
                n_map: num(b)?,
            }),
            _ => Err(bad()),
        }
    }
}

/// What a request changed, for the coordinator to make durable and print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing changed.
    None,
    /// A task was handed out (`again`: after a timeout).
    Assigned(Kind, u32, bool),
    /// A task was reported done; `all`: it was the last reduce task.
    Finished(Kind, u32, bool),
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Job {
    /// A new job over `files` with `n_reduce` reduce tasks.
    pub fn new(files: &[Vec<u8>], n_reduce: u32, timeout_ms: u64) -> Result<Job, Error> {
        if files.is_empty() || n_reduce == 0 {
            return Err(Error::Usage(
                "need at least one input file and one reduce task".into(),
            ));
        }
        let idle = Task {
            state: TaskState::Idle,
            assigned_ms: 0,
            assignments: 0,
        };
        if files.iter().any(|f| f.contains(&b'\n')) {
            return Err(Error::Usage(
                "input file names must not contain newlines".into(),
            ));
        }
        Ok(Job {
            phase: Phase::Map,
            n_reduce,
            timeout_ms,
            maps: vec![idle; files.len()],
            reduces: vec![idle; n_reduce as usize],
            files: files.to_vec(),
            maps_done: 0,
            reduces_done: 0,
            reissued: 0,
        })
    }

    /// Answers one request at wall-clock time `now_ms`, updating the tables.
    pub fn handle(&mut self, req: Request, now_ms: u64) -> (Reply, Event) {
        match req {
            Request::Get => self.assign(now_ms),
            Request::Done(kind, id) => self.finish(kind, id),
        }
    }

    fn assign(&mut self, now_ms: u64) -> (Reply, Event) {
        let (kind, table) = match self.phase {
            Phase::Map => (Kind::Map, &mut self.maps),
            Phase::Reduce => (Kind::Reduce, &mut self.reduces),
            Phase::Done => return (Reply::Exit, Event::None),
        };
        let timeout = self.timeout_ms;
        let pick = table
            .iter()
            .position(|t| t.state == TaskState::Idle)
            .map(|i| (i, false))
            .or_else(|| {
                table
                    .iter()
                    .position(|t| {
                        t.state == TaskState::InProgress
                            && now_ms.saturating_sub(t.assigned_ms) >= timeout
                    })
                    .map(|i| (i, true))
            });
        let Some((i, again)) = pick else {
            return (Reply::Wait, Event::None);
        };
        let t = &mut table[i];
        t.state = TaskState::InProgress;
        t.assigned_ms = now_ms;
        t.assignments += 1;
        self.reissued += u32::from(again);
        let id = i as u32;
        let reply = match kind {
            Kind::Map => Reply::Map {
                id,
                n_reduce: self.n_reduce,
                path: self.files[i].to_vec(),
            },
            Kind::Reduce => Reply::Reduce {
                id,
                n_map: self.maps.len() as u32,
            },
        };
        (reply, Event::Assigned(kind, id, again))
    }

    fn finish(&mut self, kind: Kind, id: u32) -> (Reply, Event) {
        let table = match kind {
            Kind::Map => &mut self.maps,
            Kind::Reduce => &mut self.reduces,
        };
        let Some(t) = table.get_mut(id as usize) else {
            return (
                Reply::Err(format!("no {} task {id}", kind.name())),
                Event::None,
            );
        };
        if t.state == TaskState::Done {
            // A duplicate report (a re-executed task, or a retry after a lost reply): its
            // output was written by rename, identical to the first one's.
            return (Reply::Ok, Event::None);
        }
        // Accepted from whoever ran it, even after a timeout or a failover lost the assignment:
        // every execution of a task writes the same files.
        t.state = TaskState::Done;
        let all = match kind {
            Kind::Map => {
                self.maps_done += 1;
                if self.maps_done as usize == self.maps.len() {
                    self.phase = Phase::Reduce;
                }
                false
            }
            Kind::Reduce => {
                self.reduces_done += 1;
                let all = self.reduces_done == self.n_reduce;
                if all {
                    self.phase = Phase::Done;
                }
                all
            }
        };
        (Reply::Ok, Event::Finished(kind, id, all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_through_its_phases_and_reissues_timed_out_tasks() {
        let files = vec![b"a".to_vec(), b"b c".to_vec()];
        let mut j = Job::new(&files, 1, 100).unwrap();
        let (r, e) = j.handle(Request::Get, 1000);
        assert_eq!(r.line(), b"MAP 0 1 a\n");
        assert_eq!(e, Event::Assigned(Kind::Map, 0, false));
        assert_eq!(
            Reply::parse(b"MAP 1 1 b c").unwrap().line(),
            b"MAP 1 1 b c\n"
        );
        assert!(matches!(
            j.handle(Request::Get, 1000).0,
            Reply::Map { id: 1, .. }
        ));
        assert_eq!(j.handle(Request::Get, 1050).0, Reply::Wait);
        // Task 0 timed out: handed out again.
        assert_eq!(
            j.handle(Request::Get, 1100).1,
            Event::Assigned(Kind::Map, 0, true)
        );
        assert_eq!(j.handle(Request::Done(Kind::Map, 0), 1100).0, Reply::Ok);
        assert_eq!(j.handle(Request::Done(Kind::Map, 0), 1100).1, Event::None);
        j.handle(Request::Done(Kind::Map, 1), 1100);
        assert_eq!(j.phase, Phase::Reduce);
        assert_eq!(
            j.handle(Request::Get, 1200).0,
            Reply::Reduce { id: 0, n_map: 2 }
        );
        assert_eq!(
            j.handle(Request::Done(Kind::Reduce, 0), 1200).1,
            Event::Finished(Kind::Reduce, 0, true)
        );
        assert_eq!(j.handle(Request::Get, 1200).0, Reply::Exit);
        assert_eq!(
            Request::parse("DONE reduce 3").unwrap(),
            Request::Done(Kind::Reduce, 3)
        );
        assert!(Request::parse("DONE x 3").is_err());
        for r in [
            Reply::Wait,
            Reply::Exit,
            Reply::Ok,
            Reply::Reduce { id: 2, n_map: 5 },
        ] {
            let l = r.line();
            assert_eq!(Reply::parse(&l[..l.len() - 1]).unwrap(), r);
        }
    }
}
