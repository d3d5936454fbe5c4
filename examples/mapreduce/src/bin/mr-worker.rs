//! A MapReduce worker: asks the coordinator for a task, runs it, reports it done, until told to
//! exit. When the coordinator cannot be reached (it may be failing over to its spare) it retries
//! every 100 ms for `--give-up-ms`.
//!
//! `mr-worker --coordinator ADDR --dir WORKDIR [--task-delay-ms D]` prints `START <kind> <i>`
//! when it starts a task and `END <kind> <i>` once the coordinator took its report.

use anyhow::{bail, Context};
use clap::Parser;
use examples_mapreduce::job::{Kind, Reply, Request};
use examples_mapreduce::wordcount;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "MapReduce word count worker")]
struct Args {
    /// The coordinator's address.
    #[arg(long)]
    coordinator: String,
    /// Shared work directory for intermediate and output files.
    #[arg(long)]
    dir: PathBuf,
    /// Sleep this long in every task (to make a job slow enough to kill in the middle).
    #[arg(long, default_value_t = 0)]
    task_delay_ms: u64,
    /// Give up after the coordinator has been unreachable this long.
    #[arg(long, default_value_t = 30_000)]
    give_up_ms: u64,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("mr-worker: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let addr = args
        .coordinator
        .to_socket_addrs()
        .with_context(|| format!("resolve {}", args.coordinator))?
        .next()
        .context("coordinator address resolves to nothing")?;
    let c = Coordinator {
        addr,
        give_up: Duration::from_millis(args.give_up_ms),
    };
    let delay = Duration::from_millis(args.task_delay_ms);
    loop {
        let (kind, id, result) = match c.ask(&Request::Get)? {
            Reply::Map { id, n_reduce, path } => {
                say(format_args!("START map {id}"));
                std::thread::sleep(delay);
                let input = Path::new(std::ffi::OsStr::from_bytes(&path));
                (
                    Kind::Map,
                    id,
                    wordcount::map(&args.dir, id, n_reduce, input),
                )
            }
            Reply::Reduce { id, n_map } => {
                say(format_args!("START reduce {id}"));
                std::thread::sleep(delay);
                (Kind::Reduce, id, wordcount::reduce(&args.dir, id, n_map))
            }
            Reply::Wait | Reply::Err(_) | Reply::Ok => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Reply::Exit => return Ok(()),
        };
        if let Err(e) = result {
            // Not reported: the coordinator hands the task out again after its timeout.
            eprintln!("mr-worker: {} task {id}: {e}", kind.name());
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        // Report until the coordinator takes it (it answers only once the report is durable).
        loop {
            match c.ask(&Request::Done(kind, id))? {
                Reply::Ok | Reply::Exit => break,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        say(format_args!("END {} {id}", kind.name()));
    }
}

/// A progress line on stdout; a closed stdout does not stop the worker.
fn say(line: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The coordinator, one connection per request.
struct Coordinator {
    addr: SocketAddr,
    give_up: Duration,
}

impl Coordinator {
    /// Sends `req` and returns the reply, retrying while the coordinator is unreachable (up to
    /// `give_up`).
    fn ask(&self, req: &Request) -> anyhow::Result<Reply> {
        let t = Instant::now();
        loop {
            match self.once(req) {
                Ok(r) => return Ok(r),
                Err(e) if t.elapsed() >= self.give_up => {
                    bail!(
                        "coordinator {} unreachable for {:?}: {e:#}",
                        self.addr,
                        self.give_up
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn once(&self, req: &Request) -> anyhow::Result<Reply> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.line().as_bytes())?;
        let mut line = Vec::new();
        BufReader::new(&s).read_until(b'\n', &mut line)?;
        if line.pop() != Some(b'\n') {
            bail!("connection closed before a reply");
        }
        Ok(Reply::parse(&line)?)
    }
}
