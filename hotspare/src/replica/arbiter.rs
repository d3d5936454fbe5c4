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

/// Where the arbiter is and how this node uses it.
#[derive(Debug, Clone)]
pub struct ArbiterConfig {
    /// etcd client URLs (`http://10.0.0.1:2379`; a bare `host:port` gets `http://`).
    pub endpoints: Vec<String>,
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
}

/// An etcd client URL: a bare `host:port` gets `http://`.
pub fn endpoint_url(e: &str) -> String {
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
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
async fn first_ok(futs: Vec<TxnFuture>) -> Result<(usize, etcd_client::TxnResponse), String> {
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
                        Err(e) => last_err = e.to_string(),
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
        etcd_client::ConnectOptions::new()
            .with_connect_timeout(self.cfg.timeout)
            .with_timeout(self.cfg.timeout)
            .with_keep_alive(
                Duration::from_secs(1),
                self.cfg.timeout.max(Duration::from_millis(500)),
            )
            .with_require_leader(true)
    }

    async fn clients(&self) -> Result<&Clients, ArbiterError> {
        self.clients
            .get_or_try_init(|| async {
                let endpoints: Vec<String> =
                    self.cfg.endpoints.iter().map(|e| endpoint_url(e)).collect();
                let all = etcd_client::Client::connect(&endpoints, Some(self.options()))
                    .await
                    .map_err(failed)?;
                let mut members = Vec::new();
                for e in &endpoints {
                    members.push(
                        etcd_client::Client::connect([e], Some(self.options()))
                            .await
                            .map_err(failed)?,
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
        let (i, resp) = first_ok(futs).await.map_err(failed)?;
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
        c.txn(txn).await.map_err(failed)
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
