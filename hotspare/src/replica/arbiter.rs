//! The arbiter client: the requests of [`hotspare_proto::arbiter`] carried out against etcd,
//! on a thread of its own so that neither event loop ever waits for the network.
//!
//! ```text
//! event loop ── submit(id, Request) ──▶ arbiter thread (tokio current-thread, etcd-client)
//!     ▲                                   one task, one etcd transaction per request, ≤ timeout
//!     └── Waker ◀── (id, Outcome) ────────┘  every request answered exactly once, in any order
//! ```
//!
//! Requests run concurrently (one local task each): the primary keeps several renewals in
//! flight so that one slow answer does not cost its lease, and run one after the other each
//! would wait for the slow one before it.
//!
//! Each request is one etcd transaction, so one linearization point:
//!
//! | request | compare | then | else |
//! |---|---|---|---|
//! | `Register{rec, adopt}` | `create_revision(term) == 0` | put term = rec | get term; if its holder is `adopt`: a second txn, `mod_revision(term) ==` its version → put term = rec |
//! | `Renew{rev}` | `mod_revision(term) == rev` | put alive | get term |
//! | `Observe` | — | get term, get alive | — |
//! | `Claim{t, a, rec}` | `mod_revision(term) == t`, `mod_revision(alive) == a` | put term = rec | — |
//!
//! etcd compares a missing key's revisions as 0, which is what the core sends for "absent".
//! Requests go with `require_leader`, so a member cut off from its cluster's leader fails them
//! at once instead of holding them; a request that times out may still be applied later, which
//! the core allows for (`hotspare_proto::arbiter`, "An answer that never comes").
//!
//! **A member that does not answer at all** (cut off by a partition that drops its packets,
//! rather than killed) holds a request until the timeout: through a client that spreads requests
//! over the members, a third of the renewals would wait 200 ms for one, while the primary's
//! arbiter lease is 40 ms (and its few renewals in flight cover one lease). So `Renew` and
//! `Observe` go to the member that answered first last time and, if it has not answered within
//! 10 ms, to every member; the first answer wins (fault scenario s12b found this: a
//! one-way cut between the primary's and the spare's hosts, each running an etcd member, made
//! the primary lose its lease and exit although it reached the etcd majority). That is safe: a
//! renewal applied several times only changes the renewal key more often, which can only make a
//! claim fail, and its lease is anchored at the core's send time, before every copy was sent;
//! an observation is a read. `Claim` and `Register` are sent once, to the member that answered
//! first last time (through the spreading client before any did).

use hotspare_proto::arbiter::{Answer, ArbiterError, Outcome, Request, Rev, TermRecord};
use mio::Waker;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::mpsc as tokio_mpsc;

/// TLS to etcd: the CA that signed etcd's server certificate and, for etcd's
/// `--client-cert-auth`, this node's client certificate and key. The files are read once, when
/// the configuration is made ([`ArbiterTls::load`]); their paths are kept for the program a
/// spare starts (which reads them again, [`ArbiterConfig::program_env`]).
#[derive(Clone)]
pub struct ArbiterTls {
    /// The CA file (`HOTSPARE_ARBITER_CA`).
    pub ca_file: std::path::PathBuf,
    /// The client certificate and key files (`HOTSPARE_ARBITER_CERT`, `HOTSPARE_ARBITER_KEY`).
    pub identity_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ArbiterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The files' names, never the key.
        f.debug_struct("ArbiterTls")
            .field("ca_file", &self.ca_file)
            .field("identity_files", &self.identity_files)
            .finish_non_exhaustive()
    }
}

impl ArbiterTls {
    /// Reads the files: `ca` (PEM certificates), and `cert` with `key` (PEM) for a client
    /// certificate. `None` when none is given. Every mistake is one line naming the setting and
    /// the file: a file missing, unreadable or not PEM, a certificate without its key (or a key
    /// without its certificate), a client certificate without a CA.
    pub fn load(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Option<ArbiterTls>, String> {
        fn read(what: &str, p: &std::path::Path, pem: &str) -> Result<Vec<u8>, String> {
            let bytes = std::fs::read(p)
                .map_err(|e| format!("the arbiter's {what} {}: {e}", p.display()))?;
            let text = String::from_utf8_lossy(&bytes);
            if !(text.contains("-----BEGIN ") && text.contains(pem)) {
                return Err(format!(
                    "the arbiter's {what} {} holds no PEM {}",
                    p.display(),
                    pem.trim_end_matches("-----")
                ));
            }
            Ok(bytes)
        }
        let ca_name = "CA file (HOTSPARE_ARBITER_CA, --arbiter-ca, arbiter_ca)";
        let cert_name = "client certificate (HOTSPARE_ARBITER_CERT, --arbiter-cert, arbiter_cert)";
        let key_name = "client key (HOTSPARE_ARBITER_KEY, --arbiter-key, arbiter_key)";
        let identity_files = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c.to_path_buf(), k.to_path_buf())),
            (Some(_), None) => {
                return Err(format!("the arbiter's {cert_name} needs its {key_name}"))
            }
            (None, Some(_)) => {
                return Err(format!("the arbiter's {key_name} needs its {cert_name}"))
            }
        };
        let Some(ca_file) = ca else {
            if identity_files.is_some() {
                return Err(format!(
                    "the arbiter's client certificate needs a {ca_name}: TLS to etcd checks etcd's certificate against it"
                ));
            }
            return Ok(None);
        };
        let ca = read(ca_name, ca_file, "CERTIFICATE-----")?;
        let identity = match &identity_files {
            Some((c, k)) => Some((
                read(cert_name, c, "CERTIFICATE-----")?,
                read(key_name, k, "PRIVATE KEY-----")?,
            )),
            None => None,
        };
        Ok(Some(ArbiterTls {
            ca_file: ca_file.to_path_buf(),
            identity_files,
            ca,
            identity,
        }))
    }

    fn options(&self) -> etcd_client::TlsOptions {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        tls
    }
}

/// Where the arbiter is and how this node uses it.
#[derive(Debug, Clone)]
pub struct ArbiterConfig {
    /// etcd client URLs (`http://10.0.0.1:2379`, `https://…`; a bare `host:port` gets
    /// `https://` with [`ArbiterConfig::tls`], `http://` without).
    pub endpoints: Vec<String>,
    /// TLS to etcd (`HOTSPARE_ARBITER_CA`, `…_CERT`, `…_KEY`); none: plain http.
    pub tls: Option<ArbiterTls>,
    /// The service's name: its keys are `/hotspare/<service>/term` and `…/alive`.
    pub service: String,
    /// This node's name (the holder of a term it claims).
    pub node: String,
    /// A request not answered within this fails (its outcome unknown).
    pub timeout: Duration,
    /// The primary's arbiter lease `La` (capped below the term record's `W`).
    pub lease: Duration,
    /// `W`, written into a term record a primary creates.
    pub wait: Duration,
    /// The claim a resumed program takes over (`HOTSPARE_ARBITER_ADOPT`, set by the spare).
    pub adopt: Option<String>,
}

impl ArbiterConfig {
    fn key(&self, name: &str) -> String {
        format!("/hotspare/{}/{name}", self.service)
    }

    /// The term key (shown in logs and in the error of a fenced primary).
    pub fn term_key(&self) -> String {
        self.key("term")
    }

    /// The client URLs of the endpoints ([`endpoint_url`]).
    pub fn urls(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| endpoint_url(e, self.tls.is_some()))
            .collect()
    }

    /// Checks that the endpoints' schemes agree with the TLS settings: an `https://` endpoint
    /// needs a CA, and with one an `http://` endpoint would be plain text (etcd-client refuses
    /// it at every connection; here it is one line at start).
    pub fn check_schemes(&self) -> Result<(), String> {
        for e in &self.endpoints {
            let url = endpoint_url(e, self.tls.is_some());
            if let Some((scheme, _)) = url.split_once("://") {
                match (scheme, self.tls.is_some()) {
                    ("https", false) => {
                        return Err(format!(
                            "arbiter endpoint {e} is https:// but no CA is configured (HOTSPARE_ARBITER_CA, --arbiter-ca, arbiter_ca)"
                        ))
                    }
                    ("http", true) => {
                        return Err(format!(
                            "arbiter endpoint {e} is http:// but a CA is configured: use https:// (or host:port) for TLS"
                        ))
                    }
                    ("http" | "https", _) => {}
                    _ => return Err(format!("arbiter endpoint {e}: unknown scheme (http://, https://)")),
                }
            }
        }
        Ok(())
    }

    /// The options of a connection to etcd made from this configuration (its TLS, and
    /// `timeout` for connecting and for each request); the arbiter's own client adds its
    /// keep-alive and `require_leader`. Every client of etcd (the arbiter's, the fleet view's,
    /// `hotspare status --etcd`) is built with these.
    pub fn connect_options(&self, timeout: Duration) -> etcd_client::ConnectOptions {
        let o = etcd_client::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        match &self.tls {
            Some(tls) => o.with_tls(tls.options()),
            None => o,
        }
    }

    /// An etcd client's error, said so that an operator can act on it: a TLS refusal names
    /// what to fix (etcd-client reports it as a gRPC "transport error" with the TLS alert deep
    /// inside), anything else is the error with its causes.
    pub fn explain(&self, e: &etcd_client::Error) -> String {
        let full = chain(e);
        let tail = |needle: &str| {
            full.find(needle).map(|i| {
                full[i..]
                    .split(['"', ')', ','])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        };
        let identity = self.tls.as_ref().and_then(|t| t.identity_files.as_ref());
        let no_cert = "none is configured (HOTSPARE_ARBITER_CERT and HOTSPARE_ARBITER_KEY, --arbiter-cert/--arbiter-key, arbiter_cert/arbiter_key)";
        let bad_cert = |cert: &std::path::Path| {
            format!(
                "this node's client certificate {} must be signed by a CA etcd trusts (its --trusted-ca-file), be valid now, and be for client authentication",
                cert.display()
            )
        };
        if let Some(alert) = tail("received fatal alert: ") {
            if alert.contains("Certificate") {
                return match identity {
                    None => format!(
                        "etcd refused the TLS connection ({alert}): it asks for a client certificate and {no_cert}"
                    ),
                    Some((cert, _)) => format!(
                        "etcd refused this node's client certificate ({alert}): {}",
                        bad_cert(cert)
                    ),
                };
            }
            return format!("etcd refused the TLS connection ({alert}): {full}");
        }
        // With TLS 1.3 the server checks the client's certificate after the client finished
        // its handshake: the refusal may arrive as a closed connection instead of the alert.
        let closed = [
            "broken pipe",
            "connection reset",
            "Connection reset",
            "connection closed",
        ]
        .into_iter()
        .find(|c| full.contains(c));
        if let (Some(closed), Some(_)) = (closed, &self.tls) {
            return match identity {
                None => format!(
                    "etcd closed the TLS connection ({closed}): with --client-cert-auth it asks for a client certificate, and {no_cert}"
                ),
                Some((cert, _)) => format!(
                    "etcd closed the TLS connection ({closed}): with --client-cert-auth it may have refused this node's certificate; {}",
                    bad_cert(cert)
                ),
            };
        }
        if let (Some(why), Some(tls)) = (tail("invalid peer certificate: "), &self.tls) {
            return format!(
                "etcd's server certificate is not trusted: {why} (it must be signed by the CA in {}, HOTSPARE_ARBITER_CA, and name the endpoint's host or IP)",
                tls.ca_file.display()
            );
        }
        full
    }

    /// The arbiter's settings for a program a spare starts (or resumes) as its primary:
    /// `HOTSPARE_ARBITER`, `HOTSPARE_SERVICE`, `HOTSPARE_NODE` and the TLS files (the ones
    /// not configured are removed, `None`).
    pub fn program_env(&self) -> Vec<(&'static str, Option<std::ffi::OsString>)> {
        let tls = self.tls.as_ref();
        let identity = tls.and_then(|t| t.identity_files.as_ref());
        vec![
            ("HOTSPARE_ARBITER", Some(self.endpoints.join(",").into())),
            ("HOTSPARE_SERVICE", Some(self.service.clone().into())),
            ("HOTSPARE_NODE", Some(self.node.clone().into())),
            ("HOTSPARE_ARBITER_CA", tls.map(|t| t.ca_file.clone().into())),
            (
                "HOTSPARE_ARBITER_CERT",
                identity.map(|i| i.0.clone().into()),
            ),
            ("HOTSPARE_ARBITER_KEY", identity.map(|i| i.1.clone().into())),
        ]
    }
}

/// An etcd client URL: a bare `host:port` gets `https://` with TLS, `http://` without.
pub fn endpoint_url(e: &str, tls: bool) -> String {
    if e.contains("://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

/// An etcd client's error with its causes, in one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Observes the service's term key once, through the arbiter client itself (the same
/// connections, options and TLS as a primary's and a spare's): to check a configuration.
/// `Ok(None)` when no term key exists yet.
pub fn check(cfg: &ArbiterConfig) -> Result<Option<(Rev, TermRecord)>, String> {
    let mut poll = mio::Poll::new().map_err(|e| e.to_string())?;
    let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).map_err(|e| e.to_string())?);
    let client = ArbiterClient::start(cfg.clone(), waker).map_err(|e| e.to_string())?;
    client.submit(1, Request::Observe);
    let deadline = std::time::Instant::now() + cfg.timeout * 4 + Duration::from_secs(1);
    let mut events = mio::Events::with_capacity(4);
    loop {
        if let Some((_, outcome)) = client.try_recv() {
            return match outcome {
                Ok(Answer::Observed { term, .. }) => Ok(term),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            };
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err("the arbiter did not answer".into());
        }
        poll.poll(&mut events, Some(left))
            .map_err(|e| e.to_string())?;
    }
}

/// This host's name, for a node name nobody configured.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The handle an event loop holds.
#[derive(Debug)]
pub(crate) struct ArbiterClient {
    /// A tokio channel: the arbiter thread awaits it while its requests run.
    requests: tokio_mpsc::UnboundedSender<(u64, Request)>,
    answers: mpsc::Receiver<(u64, Outcome)>,
}

impl ArbiterClient {
    /// Starts the arbiter thread; `waker` wakes the event loop when an answer is ready.
    pub fn start(cfg: ArbiterConfig, waker: Arc<Waker>) -> std::io::Result<ArbiterClient> {
        let (req_tx, mut req_rx) = tokio_mpsc::unbounded_channel::<(u64, Request)>();
        let (ans_tx, ans_rx) = mpsc::channel::<(u64, Outcome)>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("hotspare-arbiter".into())
            .spawn(move || {
                crate::global::library_thread();
                let etcd = Rc::new(Etcd {
                    cfg,
                    clients: tokio::sync::OnceCell::new(),
                    answered: Cell::new(None),
                });
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    // Connected before the first request: a spare's first request is its
                    // claim, and a primary's first renewal comes when its spare falls silent,
                    // where a connection set-up would add to the failover time or cost the
                    // lease.
                    etcd.connect_all().await;
                    // Ends when the handle is dropped; the requests still running are dropped
                    // with the runtime (nobody is left to answer).
                    while let Some((id, req)) = req_rx.recv().await {
                        let (etcd, ans_tx, waker) = (etcd.clone(), ans_tx.clone(), waker.clone());
                        tokio::task::spawn_local(async move {
                            // In a task of its own, so that a panic in the client (caught by
                            // the runtime) still answers the request, as an error: an
                            // unanswered registration or claim would wait forever.
                            let run = tokio::task::spawn_local(async move { etcd.run(req).await });
                            let outcome = match run.await {
                                Ok(outcome) => outcome,
                                Err(e) => Err(failed(format!("the request failed: {e}"))),
                            };
                            if ans_tx.send((id, outcome)).is_ok() {
                                let _ = waker.wake();
                            }
                        });
                    }
                });
            })?;
        Ok(ArbiterClient {
            requests: req_tx,
            answers: ans_rx,
        })
    }

    /// Sends a request (answered through [`ArbiterClient::try_recv`], exactly once).
    pub fn submit(&self, id: u64, req: Request) {
        // The thread only ends with this handle; a send cannot fail before.
        let _ = self.requests.send((id, req));
    }

    /// An answer, if one is ready.
    pub fn try_recv(&self) -> Option<(u64, Outcome)> {
        self.answers.try_recv().ok()
    }
}

/// Shared by the requests running on the arbiter thread (one task each).
struct Etcd {
    cfg: ArbiterConfig,
    /// Made when first needed; requests that need them meanwhile wait for that same attempt,
    /// and one that fails leaves it to the next request.
    clients: tokio::sync::OnceCell<Clients>,
    /// The member that answered a request sent to all first, last time.
    answered: Cell<Option<usize>>,
}

struct Clients {
    /// Over all members (requests spread among them).
    all: etcd_client::Client,
    /// One per member, in the order of the endpoints.
    members: Vec<etcd_client::Client>,
}

/// How long the member that answered last has to answer a renewal or an observation before the
/// others are asked too: a quarter of the default arbiter lease (40 ms), so that the renewal
/// that follows still fits in it.
const HEDGE_AFTER: Duration = Duration::from_millis(10);

/// A transaction's future on one member.
type TxnFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<etcd_client::TxnResponse, etcd_client::Error>>>,
>;

/// The first of `futs` to finish with `Ok`, and its index; or, if every one fails, the error of
/// the last to fail. The others are dropped (a request they sent may still be applied).
async fn first_ok(
    futs: Vec<TxnFuture>,
    explain: impl Fn(&etcd_client::Error) -> String,
) -> Result<(usize, etcd_client::TxnResponse), String> {
    use std::task::Poll;
    let mut futs: Vec<Option<TxnFuture>> = futs.into_iter().map(Some).collect();
    let mut last_err = String::from("no etcd member to ask");
    std::future::poll_fn(move |cx| {
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                if let Poll::Ready(r) = f.as_mut().poll(cx) {
                    *slot = None;
                    match r {
                        Ok(resp) => return Poll::Ready(Ok((i, resp))),
                        Err(e) => last_err = explain(&e),
                    }
                }
            }
        }
        if futs.iter().all(Option::is_none) {
            return Poll::Ready(Err(std::mem::take(&mut last_err)));
        }
        Poll::Pending
    })
    .await
}

fn failed(e: impl std::fmt::Display) -> ArbiterError {
    ArbiterError::Failed(e.to_string())
}

fn decode(kv: &etcd_client::KeyValue) -> Result<(Rev, TermRecord), ArbiterError> {
    let rec: TermRecord = serde_json::from_slice(kv.value()).map_err(|e| {
        failed(format!(
            "the term key holds no term record ({e}): {:?}",
            String::from_utf8_lossy(kv.value())
        ))
    })?;
    Ok((kv.mod_revision(), rec))
}

fn first_get(resp: &etcd_client::TxnResponse, i: usize) -> Option<etcd_client::KeyValue> {
    match resp.op_responses().into_iter().nth(i) {
        Some(etcd_client::TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
        _ => None,
    }
}

impl Etcd {
    async fn run(&self, req: Request) -> Outcome {
        let timeout = self.cfg.timeout;
        match tokio::time::timeout(timeout, self.txn(req)).await {
            Ok(r) => r,
            Err(_) => Err(ArbiterError::Timeout(timeout.as_millis() as u64)),
        }
    }

    /// The options of every connection to etcd.
    fn options(&self) -> etcd_client::ConnectOptions {
        self.cfg
            .connect_options(self.cfg.timeout)
            .with_keep_alive(
                Duration::from_secs(1),
                self.cfg.timeout.max(Duration::from_millis(500)),
            )
            .with_require_leader(true)
    }

    async fn clients(&self) -> Result<&Clients, ArbiterError> {
        self.clients
            .get_or_try_init(|| async {
                let endpoints = self.cfg.urls();
                let all = etcd_client::Client::connect(&endpoints, Some(self.options()))
                    .await
                    .map_err(|e| failed(self.cfg.explain(&e)))?;
                let mut members = Vec::new();
                for e in &endpoints {
                    members.push(
                        etcd_client::Client::connect([e], Some(self.options()))
                            .await
                            .map_err(|e| failed(self.cfg.explain(&e)))?,
                    );
                }
                Ok(Clients { all, members })
            })
            .await
    }

    /// Makes the clients and a connection to every member that answers (a read of the term
    /// key on each, one after the other, each bounded by the timeout).
    async fn connect_all(&self) {
        let Ok(clients) = self.clients().await else {
            return;
        };
        let read = etcd_client::Txn::new()
            .and_then(vec![etcd_client::TxnOp::get(self.cfg.key("term"), None)]);
        for m in &clients.members {
            let mut m = m.clone();
            let _ = tokio::time::timeout(self.cfg.timeout, m.txn(read.clone())).await;
        }
    }

    /// `txn` sent to every member: the first answer, and which member gave it. The member that
    /// answered first last time is asked at once and the others only if it has not answered
    /// within [`HEDGE_AFTER`] (so that a healthy cluster sees one transaction per request, not
    /// one per member); with no such member yet, all at once.
    async fn send_to_all(
        &self,
        txn: etcd_client::Txn,
    ) -> Result<etcd_client::TxnResponse, ArbiterError> {
        let clients = self.clients().await?;
        let first = self.answered.get();
        let futs: Vec<TxnFuture> = clients
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (mut m, txn) = (m.clone(), txn.clone());
                let wait = first.is_some_and(|f| f != i);
                Box::pin(async move {
                    if wait {
                        tokio::time::sleep(HEDGE_AFTER).await;
                    }
                    m.txn(txn).await
                }) as TxnFuture
            })
            .collect();
        let (i, resp) = first_ok(futs, |e| self.cfg.explain(e))
            .await
            .map_err(failed)?;
        self.answered.set(Some(i));
        Ok(resp)
    }

    /// `txn` sent once: to the member that answered first last time, if any did.
    async fn send_to_one(
        &self,
        txn: etcd_client::Txn,
    ) -> Result<etcd_client::TxnResponse, ArbiterError> {
        let clients = self.clients().await?;
        let mut c = match self.answered.get().and_then(|i| clients.members.get(i)) {
            Some(m) => m.clone(),
            None => clients.all.clone(),
        };
        c.txn(txn).await.map_err(|e| failed(self.cfg.explain(&e)))
    }

    async fn txn(&self, req: Request) -> Outcome {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let (term_key, alive_key) = (self.cfg.key("term"), self.cfg.key("alive"));
        let encode = |r: &TermRecord| serde_json::to_vec(r).map_err(failed);
        match req {
            Request::Register { record: rec, adopt } => {
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        term_key.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(term_key.clone(), encode(&rec)?, None)])
                    .or_else(vec![TxnOp::get(term_key.clone(), None)]);
                let resp = self.send_to_one(txn).await?;
                if resp.succeeded() {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    return Ok(Answer::Registered {
                        term_rev: rev,
                        record: rec,
                    });
                }
                let kv = first_get(&resp, 0)
                    .ok_or_else(|| failed("the term key vanished during registration"))?;
                let (held_rev, held) = decode(&kv)?;
                if adopt.as_ref() != Some(&held.holder) || held.term != rec.term {
                    return Ok(Answer::Registered {
                        term_rev: held_rev,
                        record: held,
                    });
                }
                // The claim of the spare that resumed us: ours now, with its W.
                let mine = TermRecord {
                    wait_us: held.wait_us,
                    ..rec
                };
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        term_key.clone(),
                        CompareOp::Equal,
                        held_rev,
                    )])
                    .and_then(vec![TxnOp::put(term_key, encode(&mine)?, None)]);
                let resp = self.send_to_one(txn).await?;
                if resp.succeeded() {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    return Ok(Answer::Registered {
                        term_rev: rev,
                        record: mine,
                    });
                }
                // It moved meanwhile (a newer claim): report what is there now.
                Err(failed(
                    "the term key changed while this program took it over",
                ))
            }
            Request::Renew { term_rev } => {
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        term_key.clone(),
                        CompareOp::Equal,
                        term_rev,
                    )])
                    .and_then(vec![TxnOp::put(alive_key, self.cfg.node.clone(), None)])
                    .or_else(vec![TxnOp::get(term_key, None)]);
                let resp = self.send_to_all(txn).await?;
                if resp.succeeded() {
                    return Ok(Answer::Renewed);
                }
                let record = match first_get(&resp, 0) {
                    Some(kv) => Some(decode(&kv)?.1),
                    None => None,
                };
                Ok(Answer::NotRenewed { record })
            }
            Request::Observe => {
                let txn = Txn::new().and_then(vec![
                    TxnOp::get(term_key, None),
                    TxnOp::get(alive_key, None),
                ]);
                let resp = self.send_to_all(txn).await?;
                let term = match first_get(&resp, 0) {
                    Some(kv) => Some(decode(&kv)?),
                    None => None,
                };
                let alive_rev = first_get(&resp, 1).map_or(0, |kv| kv.mod_revision());
                Ok(Answer::Observed { term, alive_rev })
            }
            Request::Claim {
                term_rev,
                alive_rev,
                record,
            } => {
                let txn = Txn::new()
                    .when(vec![
                        Compare::mod_revision(term_key.clone(), CompareOp::Equal, term_rev),
                        Compare::mod_revision(alive_key, CompareOp::Equal, alive_rev),
                    ])
                    .and_then(vec![TxnOp::put(term_key, encode(&record)?, None)]);
                let resp = self.send_to_one(txn).await?;
                Ok(if resp.succeeded() {
                    Answer::Claimed
                } else {
                    Answer::NotClaimed
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_follow_the_tls_settings() {
        assert_eq!(endpoint_url("10.0.0.1:2379", false), "http://10.0.0.1:2379");
        assert_eq!(endpoint_url("10.0.0.1:2379", true), "https://10.0.0.1:2379");
        assert_eq!(endpoint_url("https://e:2379", true), "https://e:2379");
        assert_eq!(endpoint_url("http://e:2379", false), "http://e:2379");
    }

    /// A spare hands the program it starts the TLS files' paths, and removes the variables it
    /// has no value for (so a stale one in its own environment does not reach the program).
    #[test]
    fn program_env_carries_the_tls_files() {
        let dir = tempfile::tempdir().unwrap();
        let pem = |n: &str, kind: &str| {
            let p = dir.path().join(n);
            std::fs::write(
                &p,
                format!("-----BEGIN {kind}-----\nAA==\n-----END {kind}-----\n"),
            )
            .unwrap();
            p
        };
        let (ca, cert, key) = (
            pem("ca.pem", "CERTIFICATE"),
            pem("c.pem", "CERTIFICATE"),
            pem("c.key", "PRIVATE KEY"),
        );
        let tls = ArbiterTls::load(Some(&ca), Some(&cert), Some(&key))
            .unwrap()
            .unwrap();
        assert!(
            !format!("{tls:?}").contains("AA=="),
            "no key material in Debug"
        );
        let mut cfg = ArbiterConfig {
            endpoints: vec!["e1:2379".into(), "e2:2379".into()],
            tls: Some(tls),
            service: "s".into(),
            node: "n".into(),
            timeout: Duration::from_millis(200),
            lease: Duration::from_millis(40),
            wait: Duration::from_millis(45),
            adopt: None,
        };
        let env: std::collections::HashMap<_, _> = cfg.program_env().into_iter().collect();
        assert_eq!(env["HOTSPARE_ARBITER"], Some("e1:2379,e2:2379".into()));
        assert_eq!(env["HOTSPARE_ARBITER_CA"], Some(ca.clone().into()));
        assert_eq!(env["HOTSPARE_ARBITER_CERT"], Some(cert.into()));
        assert_eq!(env["HOTSPARE_ARBITER_KEY"], Some(key.into()));
        assert_eq!(cfg.urls()[0], "https://e1:2379");
        cfg.tls = ArbiterTls::load(Some(&ca), None, None).unwrap();
        let env: std::collections::HashMap<_, _> = cfg.program_env().into_iter().collect();
        assert_eq!(env["HOTSPARE_ARBITER_CERT"], None);
        cfg.tls = None;
        assert_eq!(cfg.urls()[0], "http://e1:2379");
        let env: std::collections::HashMap<_, _> = cfg.program_env().into_iter().collect();
        assert_eq!(env["HOTSPARE_ARBITER_CA"], None);
    }
}
