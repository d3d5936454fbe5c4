//! The MapReduce coordinator. Its job tables (plain `Vec`s) live in the Hot Spare checkpoint heap,
//! its global allocator: SIGKILLed,
//! it is resumed by the spare (`hotspare-resume --exec mr-coordinator …`) with every task
//! state it acknowledged, listening again on the same address. `--plain` runs the same code
//! without Hot Spare.
//!
//! `mr-coordinator --listen ADDR --reduce R [--task-timeout-ms T] [--linger-ms L] [--plain] FILE…`
//! prints `ASSIGN <kind> <i>`, `FINISHED <kind> <i>` and, when every reduce task is done,
//! `DONE`; it then answers `EXIT` for `L` ms and exits 0.

use anyhow::Context;
use clap::Parser;
use examples_mapreduce::job::Job;
use examples_mapreduce::server::{self, Options};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "MapReduce word count coordinator (on Hot Spare unless --plain)")]
struct Args {
    /// Address to listen on for workers.
    #[arg(long)]
    listen: String,
    /// Number of reduce tasks.
    #[arg(long, default_value_t = 4)]
    reduce: u32,
    /// A task not reported done within this many ms is handed out again.
    #[arg(long, default_value_t = 10_000)]
    task_timeout_ms: u64,
    /// After DONE, keep answering EXIT to workers this many ms.
    #[arg(long, default_value_t = 1_000)]
    linger_ms: u64,
    /// Run without Hot Spare (ordinary memory; nothing survives a crash).
    #[arg(long)]
    plain: bool,
    /// Input files, one map task each.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

impl Args {
    fn options(&self) -> Options {
        Options {
            linger: Duration::from_millis(self.linger_ms),
            io_timeout: Duration::from_secs(5),
        }
    }

    fn file_bytes(&self) -> Vec<Vec<u8>> {
        self.files
            .iter()
            .map(|f| f.as_os_str().as_bytes().to_vec())
            .collect()
    }
}

#[global_allocator]
static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();

fn main() {
    let args = Args::parse();
    let r = if args.plain {
        plain(&args)
    } else {
        ha::main(&args)
    };
    if let Err(e) = r {
        eprintln!("mr-coordinator: {e:#}");
        std::process::exit(1);
    }
}

/// Without Hot Spare: the same tables in ordinary memory, the same loop.
fn plain(args: &Args) -> anyhow::Result<()> {
    let mut job = Job::new(&args.file_bytes(), args.reduce, args.task_timeout_ms)?;
    let listener =
        TcpListener::bind(&args.listen).with_context(|| format!("bind {}", args.listen))?;
    let mut out = std::io::stdout();
    server::serve(&listener, &mut job, None, &args.options(), &mut out)?;
    Ok(())
}

/// Everything that exists only because of Hot Spare.
mod ha {
    use super::Args;
    use anyhow::Context;
    use examples_mapreduce::job::Job;
    use examples_mapreduce::server;
    use hotspare::{Checkpointer, HotSpare, Mutex};
    use std::io::Write;
    use std::net::TcpListener;

    /// Fresh start: the job tables, copied into the checkpoint heap once it exists (`job` was
    /// built in ordinary memory, to refuse bad arguments before starting), become the root and
    /// the worker loop runs. Resume: the worker loop runs on the restored tables.
    pub fn main(args: &Args) -> anyhow::Result<()> {
        let job = Job::new(&args.file_bytes(), args.reduce, args.task_timeout_ms)?;
        let (listen, opts) = (args.listen.clone(), args.options());
        HotSpare::serve(
            "coordinator",
            move || Mutex::new(job.clone()),
            move |hs, job| {
                if let Err(e) = serve(hs, job, &listen, &opts) {
                    eprintln!("mr-coordinator: {e:#}");
                    std::process::exit(1);
                }
            },
        )?;
        Ok(())
    }

    fn serve(
        hs: &HotSpare,
        job: &Mutex<Job>,
        listen: &str,
        opts: &server::Options,
    ) -> anyhow::Result<()> {
        // The listener is registered with the library, so a resumed coordinator has it already.
        let listener = match hs.tcp_listener("mr") {
            Some(l) => l,
            None => {
                let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
                hs.add_tcp_listener("mr", l.try_clone()?)?;
                l
            }
        };
        let mut out = std::io::stdout();
        if let Some(r) = hs.resumed() {
            let _ = writeln!(out, "RESUMED {} {:?}", r.seq, r.restore_time);
        }
        // One thread serves, holding the tables: they are consistent whenever it checkpoints.
        let cp = Checkpointer::new(hs, |capture| capture());
        // Give the spare an image at once (not needed for safety: nothing is acknowledged
        // before a checkpoint of it is durable; a failure here is retried by the first reply).
        if let Err(e) = cp.commit_durable() {
            eprintln!("mr-coordinator: first checkpoint: {e}");
        }
        server::serve(&listener, &mut job.lock(), Some(&cp), opts, &mut out)?;
        let s = cp.statistics();
        let _ = writeln!(
            out,
            "CPTS {} stopped median {:.3} ms max {:.3} ms durable median {:.3} ms",
            s.checkpoints, s.stop_ms.median, s.stop_ms.max, s.durable_ms.median
        );
        Ok(())
    }
}
