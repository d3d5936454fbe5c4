//! `hotspare-bench demo`: a key/value service with its table in the checkpoint heap, a spare on
//! loopback, load, a SIGKILL of the primary, and a report of what the client saw.
//!
//! The service (`hotspare-bench demo-server`) answers one line per request: `SET k v` → `OK <seq>`
//! (sent only once the checkpoint holding the write is durable on the spare: nothing
//! acknowledged can be lost), `GET k` → `VAL v` | `NIL`, `COUNT` → `COUNT n`, `STATS` → JSON.

use anyhow::{bail, Context, Result};
use hotspare::{HeapAlloc, HotSpare, Mutex, StableHasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Bytes = allocator_api2::vec::Vec<u8, HeapAlloc>;
type Table = hashbrown::HashMap<Bytes, Bytes, StableHasher, HeapAlloc>;

struct Store {
    table: Table,
}

/// Checkpoint statistics of this incarnation (ordinary memory: not part of the state).
static STATS: std::sync::Mutex<Vec<(f64, u64)>> = std::sync::Mutex::new(Vec::new());

fn bytes_in(hs: &HotSpare, b: &[u8]) -> Bytes {
    let mut v = Bytes::new_in(hs.heap().alloc());
    v.extend_from_slice(b);
    v
}

fn serve(hs: &HotSpare, stream: TcpStream) -> std::io::Result<()> {
    let store = hs.heap().root::<Mutex<Store>>().expect("root");
    let mut out = stream.try_clone()?;
    let _ = stream.set_nodelay(true);
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let mut w = line.splitn(3, ' ');
        let reply = match (w.next(), w.next(), w.next()) {
            (Some("SET"), Some(k), Some(v)) => {
                let (k, v) = (bytes_in(hs, k.as_bytes()), bytes_in(hs, v.as_bytes()));
                store.lock().table.insert(k, v);
                match hs.cpt().and_then(|st| hs.wait_durable(st.seq).map(|()| st)) {
                    Ok(st) => {
                        STATS
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((st.stopped.as_secs_f64() * 1e3, st.bytes));
                        format!("OK {}", st.seq)
                    }
                    Err(e) => format!("ERR {e}"),
                }
            }
            (Some("GET"), Some(k), None) => {
                let k = bytes_in(hs, k.as_bytes());
                match store.lock().table.get(&k) {
                    Some(v) => format!("VAL {}", String::from_utf8_lossy(v)),
                    None => "NIL".into(),
                }
            }
            (Some("COUNT"), None, None) => format!("COUNT {}", store.lock().table.len()),
            (Some("STATS"), None, None) => {
                let mut s = STATS.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let bytes: u64 = s.iter().map(|x| x.1).sum();
                s.sort_by(|a, b| a.0.total_cmp(&b.0));
                let pick = |q: f64| {
                    s.get(((s.len() as f64 * q) as usize).min(s.len().saturating_sub(1)))
                        .map_or(0.0, |x| x.0)
                };
                format!(
                    "STATS {{\"checkpoints\":{},\"bytes\":{bytes},\"wire_bytes\":{},\"stop_ms_median\":{:.3},\"stop_ms_p99\":{:.3}}}",
                    s.len(),
                    hs.wire_bytes().unwrap_or(0),
                    pick(0.5),
                    pick(0.99)
                )
            }
            _ => "ERR bad request".into(),
        };
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn server_worker(hs: &HotSpare) {
    if let Some(r) = hs.resumed() {
        eprintln!(
            "demo-server: RESUMED checkpoint {} restore_ms={:.3}",
            r.seq,
            r.restore_time.as_secs_f64() * 1e3
        );
    }
    let listener = hs.tcp_listener("kv").expect("listener");
    for s in listener.incoming() {
        match s {
            Ok(s) => {
                let hs = hs.clone();
                std::thread::spawn(move || serve(&hs, s));
            }
            Err(e) => eprintln!("demo-server: accept: {e}"),
        }
    }
}

/// `hotspare-bench demo-server --port P [--bind ADDR]`: the service (fresh, or resumed by the spare).
pub fn server(bind: &str, port: u16) -> Result<()> {
    let Some(hs) = HotSpare::builder()?
        .worker("kv", server_worker)
        .start()?
        .fresh_or_run()
    else {
        return Ok(());
    };
    let mut table =
        Table::with_capacity_and_hasher_in(1, StableHasher::default(), hs.heap().alloc());
    // HOTSPARE_DEMO_PRELOAD=N: start with N keys (72-byte pairs) to measure failover at scale.
    let preload: u64 = std::env::var("HOTSPARE_DEMO_PRELOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for i in 0..preload {
        let (k, v) = (
            format!("pk{i:014}"),
            format!("{:056}", i * 2_654_435_761 % 1_000_000_007),
        );
        table.insert(bytes_in(&hs, k.as_bytes()), bytes_in(&hs, v.as_bytes()));
    }
    hs.heap().set_root(Mutex::new(Store { table }))?;
    let listener = TcpListener::bind((bind, port))?;
    hs.add_tcp_listener("kv", listener.try_clone()?)?;
    if preload > 0 {
        let st = hs.cpt()?;
        hs.wait_durable(st.seq)?;
        eprintln!(
            "demo-server: {preload} keys preloaded, first checkpoint ({} MiB) durable",
            st.bytes >> 20
        );
    }
    drop(listener);
    hs.run();
    Ok(())
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16, within: Duration) -> Result<()> {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > within {
            bail!("nothing listens on port {port} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// `hotspare-bench demo-client ADDR --set N` writes keys 0..N (each acknowledged); `--check N` waits
/// (retrying connections for up to 30 s) until the service answers and checks that keys 0..N
/// are all there, printing how long it took to get an answer.
pub fn client(addr: &str, set: Option<u64>, check: Option<u64>) -> Result<()> {
    let connect = || -> std::io::Result<Client> {
        let s = TcpStream::connect_timeout(
            &addr.parse().map_err(std::io::Error::other)?,
            Duration::from_millis(200),
        )?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    };
    if let Some(n) = set {
        let mut c = connect()?;
        for i in 0..n {
            let r = c.ask(&format!("SET key{i} value{i}"))?;
            if !r.starts_with("OK ") {
                bail!("SET key{i}: {r}");
            }
        }
        println!("ACKED {n}");
    }
    if let Some(n) = check {
        let t = Instant::now();
        let mut c = loop {
            if let Ok(mut c) = connect() {
                if c.ask("COUNT").is_ok() {
                    break c;
                }
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("no answer from {addr} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let waited = t.elapsed().as_millis();
        let mut lost = 0;
        for i in 0..n {
            if c.ask(&format!("GET key{i}"))? != format!("VAL value{i}") {
                lost += 1;
            }
        }
        println!("ANSWERED after {waited} ms, LOST {lost} of {n}");
    }
    Ok(())
}

struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }
    fn ask(&mut self, req: &str) -> std::io::Result<String> {
        self.w.write_all(format!("{req}\n").as_bytes())?;
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim_end().to_owned())
    }
}

/// A number field of a flat JSON object (the STATS line).
fn json_u64(line: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    line.find(&pat)
        .and_then(|i| {
            line[i + pat.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn grab(log: &Path, prefix: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let i = text.find(prefix)? + prefix.len();
    text[i..]
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .parse()
        .ok()
}

/// What one demo run measured.
pub struct Report {
    /// Writes acknowledged before the kill.
    pub acked: usize,
    /// Load duration in seconds.
    pub seconds: f64,
    /// The service's STATS line (JSON).
    pub stats: String,
    /// Bytes put on the wire by the checkpoints of the load phase (excluding a preload's).
    pub wire_bytes_load: u64,
    /// Detection time from the spare's log, ms.
    pub detection_ms: Option<f64>,
    /// Restore time of the resumed program, ms.
    pub restore_ms: Option<f64>,
    /// Kill → first answer of the resumed service, ms.
    pub downtime_ms: f64,
    /// Acknowledged keys missing after the failover.
    pub lost: usize,
    /// The spare's log.
    pub spare_log: String,
}

/// `hotspare-bench demo`: everything on loopback, cleaned up at the end.
pub fn demo(seconds: f64) -> Result<()> {
    let r = run(seconds)?;
    println!(
        "  writes acknowledged   {} in {:.1} s (each durable on the spare before the reply)",
        r.acked, r.seconds
    );
    println!("  checkpoints           {}", r.stats);
    println!("  primary killed        SIGKILL after the last acknowledged write");
    println!(
        "  detection             {} ms (spare: 5 missed heartbeats of 10 ms)",
        r.detection_ms.map_or("?".into(), |d| format!("{d:.0}"))
    );
    println!(
        "  restore               {} ms (resumed program: image mapped, workers called)",
        r.restore_ms.map_or("?".into(), |d| format!("{d:.1}"))
    );
    println!(
        "  downtime seen         {:.1} ms from the kill to the first answer of the resumed service",
        r.downtime_ms
    );
    println!(
        "  keys lost             {} of {} acknowledged",
        r.lost, r.acked
    );
    if std::env::var_os("HOTSPARE_DEMO_VERBOSE").is_some() {
        print!("{}", r.spare_log);
    }
    if r.lost > 0 {
        bail!("{} acknowledged writes were lost", r.lost);
    }
    println!("hotspare-bench demo: OK (everything it started is stopped and removed)");
    Ok(())
}

/// One demo run, without printing the report.
pub fn run(seconds: f64) -> Result<Report> {
    run_with(seconds, 0)
}

/// One run with `preload` keys in the table before the load starts.
pub fn run_with(seconds: f64, preload: u64) -> Result<Report> {
    let exe = std::env::current_exe()?;
    let spare_bin = exe.with_file_name("hotspare-resume");
    if !spare_bin.exists() {
        bail!(
            "{} is missing: build the workspace (cargo build --release --workspace)",
            spare_bin.display()
        );
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("hotspare-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_demo(&exe, &spare_bin, &dir, seconds, preload);
    if result.is_err() {
        // Keep the logs of a failed run (the processes are gone by now, so they are complete).
        for f in ["spare.log", "primary.log"] {
            let _ = std::fs::copy(
                dir.join(f),
                std::env::temp_dir().join(format!("hotspare-demo-failed-{f}")),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_demo(
    exe: &Path,
    spare_bin: &Path,
    dir: &Path,
    seconds: f64,
    preload: u64,
) -> Result<Report> {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("key");
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    std::fs::write(
        &key,
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let (spare_port, kv_port) = (free_port()?, free_port()?);
    let heap = format!("{}M", 64 + preload * 400 / (1 << 20));
    let preload_s = preload.to_string();
    let env = [
        ("HOTSPARE_HEAP_SIZE", heap.as_str()),
        ("HOTSPARE_STRATEGY", "auto"),
        ("HOTSPARE_DEMO_PRELOAD", preload_s.as_str()),
    ];
    eprintln!(
        "hotspare-bench demo: spare on 127.0.0.1:{spare_port}, key/value service on 127.0.0.1:{kv_port}"
    );
    let _spare = Proc(
        Command::new(spare_bin)
            .args(["--listen", &format!("127.0.0.1:{spare_port}"), "--key-file"])
            .arg(&key)
            .arg("--image-dir")
            .arg(dir.join("spare"))
            .arg("--exec")
            .arg(exe)
            .args(["demo-server", "--port", &kv_port.to_string()])
            .envs(env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("spare.log"))?)
            .spawn()
            .context("starting hotspare-resume")?,
    );
    wait_port(spare_port, Duration::from_secs(10))?;
    let primary = Proc(
        Command::new(exe)
            .args(["demo-server", "--port", &kv_port.to_string()])
            .envs(env)
            .env("HOTSPARE_IMAGE_DIR", dir.join("spool"))
            .env("HOTSPARE_SPARE", format!("127.0.0.1:{spare_port}"))
            .env("HOTSPARE_KEY_FILE", &key)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("primary.log"))?)
            .spawn()
            .context("starting the primary")?,
    );
    wait_port(kv_port, Duration::from_secs(300))?;
    // Load: one client, SET then GET, each SET acknowledged only once durable on the spare.
    let mut c = Client::connect(kv_port)?;
    c.ask("COUNT")?; // answered once the service runs (after a preload's first checkpoint)
    let wire_before = json_u64(&c.ask("STATS")?, "wire_bytes");
    let mut acked: Vec<(String, String)> = Vec::new();
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        let (k, v) = (format!("key{i}"), format!("value{}", i * 7919 % 1_000_003));
        let r = c.ask(&format!("SET {k} {v}"))?;
        if !r.starts_with("OK ") {
            let logs = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            bail!(
                "SET {k}: {r}\nspare log:\n{}primary log:\n{}",
                logs("spare.log"),
                logs("primary.log")
            );
        }
        acked.push((k, v));
        i += 1;
    }
    let stats = c.ask("STATS")?;
    let wire_load = json_u64(&stats, "wire_bytes") - wire_before;
    // Downtime counts from the SIGKILL itself (reaping a large process takes a while, and the
    // spare's silence clock starts at the kill, not at the reaping).
    let killed = Instant::now();
    drop(primary); // SIGKILL, then wait for it
                   // The client retries until the service answers again (now the resumed program).
    let mut c = loop {
        if let Ok(mut c) = Client::connect(kv_port) {
            if c.ask("COUNT").is_ok() {
                break c;
            }
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!(
                "the service did not come back within 30 s; spare log:\n{}",
                std::fs::read_to_string(dir.join("spare.log"))?
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let back = killed.elapsed().as_secs_f64() * 1e3;
    let mut lost = 0;
    for (k, v) in &acked {
        if c.ask(&format!("GET {k}"))? != format!("VAL {v}") {
            lost += 1;
        }
    }
    let spare_log = dir.join("spare.log");
    Ok(Report {
        acked: acked.len(),
        seconds,
        stats: stats.trim_start_matches("STATS ").to_owned(),
        wire_bytes_load: wire_load,
        detection_ms: grab(&spare_log, "primary silent for "),
        restore_ms: grab(&spare_log, "restore_ms="),
        downtime_ms: back,
        lost,
        spare_log: std::fs::read_to_string(&spare_log).unwrap_or_default(),
    })
}
