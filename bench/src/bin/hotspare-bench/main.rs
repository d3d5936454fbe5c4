//! `hotspare-bench`: the library measured in process and end to end. `cpt` — the stop time of
//! `cpt()` per strategy and dirty fraction; `resume` — exec → worker-loop latency per state size;
//! `failover` — `demo` repeated; `demo` — a spare and a key/value service on loopback, loaded,
//! SIGKILLed, and what a client saw. One JSON object per line on stdout (`docs/performance.md`).

mod bench;
mod demo;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hotspare-bench",
    about = "Hot Spare benchmarks and the failover demo (JSON lines on stdout)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Bench(bench::Bench),
    /// Start a spare and a key/value service on loopback, load it, SIGKILL it, and report what a
    /// client saw (the project's main job).
    Demo {
        /// Seconds of load before the kill.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Internal: the key/value service of `demo`.
    #[command(hide = true)]
    DemoServer {
        /// Port to serve on.
        #[arg(long)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
    },
    /// Internal: a client of the demo service (the network-namespace test uses it).
    #[command(hide = true)]
    DemoClient {
        /// host:port of the service.
        addr: String,
        /// Write keys 0..N.
        #[arg(long)]
        set: Option<u64>,
        /// Wait for the service and check keys 0..N.
        #[arg(long)]
        check: Option<u64>,
    },
    /// Internal: the program `resume` starts and resumes.
    #[command(hide = true)]
    BenchChild {
        /// Bytes of state to fill before the first checkpoint.
        fill: String,
    },
}

fn main() -> ExitCode {
    let res: Result<()> = match Cli::parse().cmd {
        Cmd::Bench(b) => bench::run(b),
        Cmd::Demo { seconds } => demo::demo(seconds),
        Cmd::DemoServer { port, bind } => demo::server(&bind, port),
        Cmd::DemoClient { addr, set, check } => demo::client(&addr, set, check),
        Cmd::BenchChild { fill } => bench::child(&fill),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotspare-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
