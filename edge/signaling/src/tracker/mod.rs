//! Swarms and connections of the WebTorrent tracker, and what each message does to them.
//!
//! One lock over the state; every send is a `try_send` into the connection's bounded outbox,
//! so nothing waits while it is held. A connection whose outbox is full is cut (its session
//! sees the outbox close) rather than slowing the others.
//!
//! With a [`Cluster`] the swarms span every node sharing its Redis ([`cluster`]): a change is
//! made here first, then written there, which answers with the counts of every node and
//! picks the offers' targets among every node's peers. While Redis is away the tracker serves
//! the peers of this node alone, and writes them back when it returns.

pub(crate) mod cluster;

use self::cluster::{Envelope, Join, Joined, Leave, LocalSwarm, View};
use crate::mailbox::{Mailbox, Outbox};
use crate::native::Cluster;
use crate::wire::{
    AnnounceReply, AnswerRelay, Event, Failure, Id, InOffer, Inbound, OfferRelay, ScrapeFile,
    ScrapeFlags, ScrapeReply, to_text,
};
use crate::{Engine, Metrics, ProtocolMetrics, TrackerConfig, Viewer};
use parking_lot::Mutex;
use rand::seq::IteratorRandom;
use serde_json::value::RawValue;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

/// A connection, as an engine knows it.
pub type ConnId = u64;

/// The tracker of one process, and of the cluster it is part of, if any.
pub struct Tracker {
    cfg: TrackerConfig,
    state: Mutex<State>,
    metrics: ProtocolMetrics,
    cluster: Option<Arc<Cluster>>,
    /// The first change number of this process (wall-clock µs): entries in Redis with the
    /// same node id and an older number are an earlier process's.
    boot: u64,
}

#[derive(Default)]
struct State {
    next_conn: ConnId,
    next_swarm: u64,
    /// Numbers every change of a swarm (and every announce of a peer: its token).
    next_seq: u64,
    /// Swarms this node's last peer left, with the change's number: the renewal writes this
    /// node out of them (a leave Redis never got, while it was away, is made good).
    left: HashMap<Id, u64>,
    conns: HashMap<ConnId, Conn>,
    swarms: HashMap<Id, Swarm>,
    /// Swarms by creation, for a scrape of every swarm (the reference's order) without a sort.
    by_creation: BTreeMap<u64, Id>,
}

struct Conn {
    mailbox: Mailbox,
    /// (info hash, peer id) this connection announced and has not stopped.
    announced: HashSet<(Id, Id)>,
}

struct Swarm {
    /// Creation order, for a scrape of every swarm.
    created: u64,
    /// The number of its last change.
    seq: u64,
    peers: HashMap<Id, Peer>,
    complete: usize,
    incomplete: usize,
}

struct Peer {
    conn: ConnId,
    complete: bool,
    /// The number of the announce that made it (its entry in Redis carries it).
    token: u64,
}

impl Swarm {
    fn view(&self) -> View {
        View {
            seq: self.seq,
            complete: self.complete,
            incomplete: self.incomplete,
        }
    }

    fn counts(&self) -> ScrapeFile {
        ScrapeFile {
            complete: self.complete,
            incomplete: self.incomplete,
            downloaded: self.complete,
        }
    }
}

/// An announce once validated.
struct Announce<'a> {
    info_hash: Id,
    peer_id: Id,
    event: Event,
    left_zero: bool,
    offers: Vec<(Id, &'a RawValue)>,
    answer: Option<(Id, Id, &'a RawValue)>,
}

/// What an announce changed here.
enum Change {
    /// The peer is in the swarm: its token, and the swarm here.
    Joined { token: u64, view: View },
    /// A `stopped`: the peer left (if it was there).
    Left(Option<Leave>),
}

/// The counts an announce is answered with, and the offers' targets: (peer, node; `None`:
/// this one).
struct Outcome {
    complete: usize,
    incomplete: usize,
    targets: Vec<(Id, Option<String>)>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(cfg: TrackerConfig, metrics: &Metrics) -> Self {
        let boot = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(u64::MAX / 2);
        Self {
            cfg,
            state: Mutex::new(State {
                next_conn: boot,
                next_seq: boot,
                ..State::default()
            }),
            metrics: metrics.protocol("tracker"),
            cluster: None,
            boot,
        }
    }

    /// A tracker whose swarms span the nodes of `cluster` (the native protocol's: its tasks
    /// run while its hub lives, and renew this tracker's swarms too).
    pub fn clustered(cfg: TrackerConfig, metrics: &Metrics, cluster: Arc<Cluster>) -> Arc<Self> {
        let tracker = Arc::new(Self {
            cluster: Some(cluster.clone()),
            ..Self::new(cfg, metrics)
        });
        if !cluster.attach_tracker(Arc::downgrade(&tracker)) {
            tracing::warn!("a second tracker on one cluster: its relays are not delivered");
        }
        tracker
    }

    /// The cluster, while it is reachable.
    fn cluster_up(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref().filter(|c| c.is_up())
    }

    /// Registers a connection; its session sends what arrives in the returned outbox.
    pub fn connect(&self) -> (ConnId, Outbox) {
        let (mailbox, outbox) = Mailbox::new(self.cfg.outbox);
        let mut state = self.state.lock();
        state.next_conn += 1;
        let id = state.next_conn;
        state.conns.insert(
            id,
            Conn {
                mailbox,
                announced: HashSet::new(),
            },
        );
        self.metrics.connections.set(state.conns.len() as i64);
        (id, outbox)
    }

    /// Forgets a connection: a `stopped` in every swarm it announced in (no reply), on every
    /// node.
    pub async fn disconnect(&self, conn: ConnId) {
        let leaves = {
            let mut state = self.state.lock();
            self.forget(&mut state, conn)
        };
        if let Some(cluster) = &self.cluster
            && !leaves.is_empty()
            && cluster.tracker_leave(&leaves, self.boot).await.is_err()
        {
            // Written by the renewal once Redis answers (the entries expire meanwhile).
            self.metrics.cluster("unavailable");
        }
    }

    fn forget(&self, state: &mut State, conn: ConnId) -> Vec<Leave> {
        let Some(c) = state.conns.remove(&conn) else {
            return Vec::new();
        };
        let leaves = c
            .announced
            .into_iter()
            .filter_map(|(info_hash, peer_id)| stop(state, info_hash, peer_id, conn))
            .collect();
        self.metrics.connections.set(state.conns.len() as i64);
        self.metrics.swarms.set(state.swarms.len() as i64);
        leaves
    }

    /// What [`forget`](Self::forget) left to write to the cluster, from where nothing can
    /// wait for it.
    fn leave_later(&self, leaves: Vec<Leave>) {
        let Some(cluster) = self.cluster.clone().filter(|_| !leaves.is_empty()) else {
            return;
        };
        let (boot, metrics) = (self.boot, self.metrics.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if cluster.tracker_leave(&leaves, boot).await.is_err() {
                    metrics.cluster("unavailable");
                }
            });
        }
    }

    /// Counts something dropped or refused, by reason.
    pub fn count_drop(&self, reason: &str) {
        self.metrics.drop(reason);
    }

    /// Counts a relay from another node that could not be read.
    pub(crate) fn count_drop_cluster(&self, event: &str) {
        self.metrics.cluster(event);
    }

    /// Handles one text frame from `conn`.
    pub async fn handle(&self, conn: ConnId, text: &str) {
        let inbound: Inbound<'_> = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => return self.fail(conn, "invalid", None, &e.to_string(), None),
        };
        let action = match inbound
            .action
            .map(|a| serde_json::from_str::<&str>(a.get()))
        {
            Some(Ok("announce")) => "announce",
            Some(Ok("scrape")) => "scrape",
            Some(Ok(other)) => {
                let why = format!("invalid action in WS request: {other}");
                return self.fail(conn, "invalid", None, &why, None);
            }
            Some(Err(_)) => {
                let raw = inbound.action.map_or("", |a| a.get());
                let why = format!("invalid action in WS request: {raw}");
                return self.fail(conn, "invalid", None, &why, None);
            }
            None => {
                let why = "invalid action in WS request: undefined";
                return self.fail(conn, "invalid", None, why, None);
            }
        };
        self.metrics.message(action);
        match action {
            "announce" => match self.parse_announce(&inbound) {
                Ok(a) => self.announce(conn, a).await,
                Err((why, info_hash)) => {
                    let action = info_hash.map(|_| "announce");
                    self.fail(conn, "invalid", action, why, info_hash)
                }
            },
            _ => self.scrape(conn, &inbound).await,
        }
    }

    /// Answers `conn` with a failure reason, counted once as a drop for `counted_as`.
    fn fail(
        &self,
        conn: ConnId,
        counted_as: &str,
        action: Option<&'static str>,
        why: &str,
        info_hash: Option<Id>,
    ) {
        self.count_drop(counted_as);
        let text = to_text(&Failure {
            action,
            reason: why,
            info_hash,
        });
        let mut state = self.state.lock();
        self.send(&mut state, conn, text);
    }

    /// Checks an announce as the reference does (in its order, with its messages), and more:
    /// ids must be latin1, offers need an `offer_id` and an object. An error before the info
    /// hash is known is a bare failure; after it, it names the action and the hash.
    fn parse_announce<'a>(
        &self,
        m: &Inbound<'a>,
    ) -> Result<Announce<'a>, (&'static str, Option<Id>)> {
        let id_of = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).and_then(Id::parse);
        let info_hash = m
            .info_hash
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .and_then(|s| Id::parse(&s))
            .ok_or(("invalid info_hash", None))?;
        let peer_id = id_of(m.peer_id.as_ref()).ok_or(("invalid peer_id", None))?;
        let answer = match m.answer.filter(|a| truthy(a)) {
            None => None,
            Some(answer) => {
                let to = id_of(m.to_peer_id.as_ref())
                    .ok_or(("invalid `to_peer_id` (required with `answer`)", None))?;
                let offer_id =
                    id_of(m.offer_id.as_ref()).ok_or(("invalid offer_id", Some(info_hash)))?;
                Some((to, offer_id, answer))
            }
        };
        let event = Event::parse(m.event.as_ref()).ok_or(("invalid event", Some(info_hash)))?;
        let offers = match &m.offers {
            None => Vec::new(),
            Some(offers) => offers
                .iter()
                .map(|o: &InOffer<'a>| {
                    let id = id_of(o.offer_id.as_ref()).ok_or("invalid offer_id")?;
                    let offer = o
                        .offer
                        .filter(|r| r.get().starts_with('{'))
                        .ok_or("invalid offer")?;
                    Ok((id, offer))
                })
                .collect::<Result<Vec<_>, &'static str>>()
                .map_err(|why| (why, Some(info_hash)))?,
        };
        Ok(Announce {
            info_hash,
            peer_id,
            event,
            left_zero: left_is_zero(m.left),
            offers,
            answer,
        })
    }

    async fn announce(&self, conn: ConnId, a: Announce<'_>) {
        // Relayed texts depend on nothing the lock guards: built before taking it.
        let answer = a.answer.map(|(to, offer_id, answer)| {
            let text = to_text(&AnswerRelay {
                action: "announce",
                answer,
                offer_id,
                peer_id: a.peer_id,
                info_hash: a.info_hash,
            });
            (to, text)
        });
        let want = a.offers.len().min(self.cfg.max_offers);
        let offers: Vec<Arc<str>> = a.offers[..want]
            .iter()
            .map(|(offer_id, offer)| {
                to_text(&OfferRelay {
                    action: "announce",
                    offer,
                    offer_id: *offer_id,
                    peer_id: a.peer_id,
                    info_hash: a.info_hash,
                })
            })
            .collect();
        let cluster = self.cluster_up().cloned();
        let (change, local, answer) = {
            let mut state = self.state.lock();
            if !state.conns.contains_key(&conn) {
                // Cut meanwhile (its session has not seen it yet): it announces nothing any more.
                return;
            }
            let change = match self.apply(&mut state, conn, &a) {
                Ok(change) => change,
                Err((counted_as, why)) => {
                    drop(state);
                    return self.fail(conn, counted_as, Some("announce"), why, Some(a.info_hash));
                }
            };
            // The reference sends nothing back for an answer: to its peer here, or (with a
            // cluster) once the cluster accepted the announce: the sender's peer id may be
            // another node's.
            let answer = match (answer, &cluster) {
                (Some((to, text)), None) => {
                    if self
                        .answer_here(&mut state, a.info_hash, to, text)
                        .is_some()
                    {
                        // Not here, and the cluster is away.
                        self.count_drop("no_peer");
                    }
                    None
                }
                (answer, _) => answer,
            };
            let local = match (&cluster, a.answer.is_some()) {
                (None, false) => Some(self.local_outcome(&state, &a, offers.len())),
                _ => None,
            };
            (change, local, answer)
        };
        let outcome = match (local, &cluster) {
            (Some(local), _) => Some(local),
            (None, None) => None,
            (None, Some(cluster)) => {
                let want = if a.answer.is_some() { 0 } else { offers.len() };
                match self.write(cluster, conn, &a, &change, want).await {
                    Err(()) => return,
                    Ok(Some(outcome)) => Some(outcome),
                    // Redis did not answer: this node's counts and peers.
                    Ok(None) => {
                        let state = self.state.lock();
                        Some(self.local_outcome(&state, &a, offers.len()))
                    }
                }
            }
        };
        if let (Some((to, text)), Some(cluster)) = (answer, &cluster) {
            let text = {
                let mut state = self.state.lock();
                self.answer_here(&mut state, a.info_hash, to, text)
            };
            if let Some(text) = text {
                self.relay_answer(cluster, a.info_hash, to, text).await;
            }
        }
        if a.answer.is_some() {
            return;
        }
        let Some(outcome) = outcome else { return };
        self.reply(conn, &a, outcome, offers, cluster.as_deref())
            .await;
    }

    /// Sends an answer to peer `to` if it is here; else gives it back.
    fn answer_here(
        &self,
        state: &mut State,
        info_hash: Id,
        to: Id,
        text: Arc<str>,
    ) -> Option<Arc<str>> {
        let target = state
            .swarms
            .get(&info_hash)
            .and_then(|s| s.peers.get(&to))
            .map(|p| p.conn);
        match target {
            Some(target) => {
                self.metrics.relay("answer");
                self.send(state, target, text);
                None
            }
            None if self.cluster.is_some() => Some(text),
            None => {
                self.count_drop("no_peer");
                None
            }
        }
    }

    /// This node's counts of the swarm, and offers' targets among its peers here.
    fn local_outcome(&self, state: &State, a: &Announce<'_>, want: usize) -> Outcome {
        let Some(swarm) = state.swarms.get(&a.info_hash) else {
            return Outcome {
                complete: 0,
                incomplete: 0,
                targets: Vec::new(),
            };
        };
        let targets = if want == 0 {
            Vec::new()
        } else {
            swarm
                .peers
                .keys()
                .filter(|id| **id != a.peer_id)
                .copied()
                .choose_multiple(&mut rand::rng(), want)
                .into_iter()
                .map(|id| (id, None))
                .collect()
        };
        Outcome {
            complete: swarm.complete,
            incomplete: swarm.incomplete,
            targets,
        }
    }

    /// Writes `change` to the cluster: the swarm's counts on every node and the offers'
    /// targets; `Ok(None)` when Redis did not answer, `Err` when the cluster refused the
    /// announce (answered here, the change undone).
    async fn write(
        &self,
        cluster: &Cluster,
        conn: ConnId,
        a: &Announce<'_>,
        change: &Change,
        want: usize,
    ) -> Result<Option<Outcome>, ()> {
        let joined = match change {
            Change::Left(None) => {
                // Nothing of this node's changed: the counts as they are.
                let r = cluster
                    .tracker_scrape(Some(&[a.info_hash]), 1, self.boot)
                    .await;
                return Ok(r
                    .ok()
                    .and_then(|c| c.first().copied())
                    .map(|(_, c, i)| Outcome {
                        complete: c,
                        incomplete: i,
                        targets: Vec::new(),
                    }));
            }
            Change::Left(Some(leave)) => {
                let r = cluster
                    .tracker_leave(std::slice::from_ref(leave), self.boot)
                    .await;
                return Ok(r
                    .ok()
                    .and_then(|c| c.first().copied())
                    .map(|(c, i)| Outcome {
                        complete: c,
                        incomplete: i,
                        targets: Vec::new(),
                    }));
            }
            Change::Joined { token, view, .. } => {
                let join = Join {
                    info_hash: a.info_hash,
                    peer_id: a.peer_id,
                    token: *token,
                    view: *view,
                    want,
                };
                cluster
                    .tracker_announce(&join, self.boot, self.cfg.max_swarm_peers)
                    .await
            }
        };
        let refused = match joined {
            Ok(Joined::Counted {
                complete,
                incomplete,
                targets,
            }) => {
                let own = cluster.node();
                let targets = targets
                    .into_iter()
                    .map(|(peer, node)| (peer, (node != own).then_some(node)))
                    .collect();
                return Ok(Some(Outcome {
                    complete,
                    incomplete,
                    targets,
                }));
            }
            Ok(Joined::Taken) => ("peer_id_taken", "peer_id in use by another connection"),
            Ok(Joined::Full) => ("swarm_full", "swarm full"),
            Err(_) => {
                self.metrics.cluster("unavailable");
                return Ok(None);
            }
        };
        // Another node holds the peer id, or the swarm is full there: this announce did not
        // happen here either.
        let leave = {
            let mut state = self.state.lock();
            stop(&mut state, a.info_hash, a.peer_id, conn)
        };
        if let Some(leave) = leave {
            let _ = cluster.tracker_leave(&[leave], self.boot).await;
        }
        let (counted_as, why) = refused;
        self.fail(conn, counted_as, Some("announce"), why, Some(a.info_hash));
        Err(())
    }

    /// Answers an announce, then sends its offers to their targets: here, or to their nodes.
    async fn reply(
        &self,
        conn: ConnId,
        a: &Announce<'_>,
        outcome: Outcome,
        offers: Vec<Arc<str>>,
        cluster: Option<&Cluster>,
    ) {
        let reply = to_text(&AnnounceReply {
            complete: outcome.complete,
            incomplete: outcome.incomplete,
            action: "announce",
            interval: self.cfg.interval_secs,
            info_hash: a.info_hash,
        });
        let mut remote = Vec::new();
        {
            let mut state = self.state.lock();
            self.send(&mut state, conn, reply);
            for ((peer, node), text) in outcome.targets.into_iter().zip(offers) {
                if let Some(node) = node {
                    remote.push((peer, node, text));
                    continue;
                }
                let target = state
                    .swarms
                    .get(&a.info_hash)
                    .and_then(|s| s.peers.get(&peer))
                    .map(|p| p.conn);
                match target {
                    Some(target) => {
                        self.metrics.relay("offer");
                        self.send(&mut state, target, text);
                    }
                    None => self.count_drop("no_peer"),
                }
            }
        }
        let Some(cluster) = cluster.filter(|_| !remote.is_empty()) else {
            return;
        };
        let hash = a.info_hash.to_hex();
        let relays: Vec<(String, Envelope)> = remote
            .into_iter()
            .map(|(peer, node, text)| {
                let envelope = Envelope {
                    h: hash.clone(),
                    p: peer.to_hex(),
                    m: text.to_string(),
                };
                (node, envelope)
            })
            .collect();
        let sent = relays.len() as u64;
        match cluster.tracker_publish(&relays).await {
            Ok(received) => {
                self.metrics.relay_n("offer", received);
                self.metrics.cluster_n("relay_out", received);
                // A node that stopped listening since the sample.
                self.metrics
                    .drop_n("no_peer", sent.saturating_sub(received));
            }
            Err(_) => self.metrics.cluster("unavailable"),
        }
    }

    /// An answer for a peer that is not here: to the node that holds it.
    async fn relay_answer(&self, cluster: &Cluster, info_hash: Id, to: Id, text: Arc<str>) {
        let node = match cluster.tracker_locate(info_hash, to).await {
            Ok(Some(node)) => node,
            Ok(None) => return self.count_drop("no_peer"),
            Err(_) => {
                self.metrics.cluster("unavailable");
                return self.count_drop("no_peer");
            }
        };
        let envelope = Envelope {
            h: info_hash.to_hex(),
            p: to.to_hex(),
            m: text.to_string(),
        };
        match cluster.tracker_publish(&[(node, envelope)]).await {
            Ok(1..) => {
                self.metrics.relay("answer");
                self.metrics.cluster("relay_out");
            }
            Ok(0) => self.count_drop("no_peer"),
            Err(_) => {
                self.metrics.cluster("unavailable");
                self.count_drop("no_peer");
            }
        }
    }

    /// An offer or answer from another node for a peer of this one.
    pub(crate) fn deliver(&self, payload: &str) {
        let Some((info_hash, peer, text)) = serde_json::from_str::<Envelope>(payload)
            .ok()
            .and_then(|e| Some((Id::from_hex(&e.h)?, Id::from_hex(&e.p)?, e.m)))
        else {
            return self.metrics.cluster("bad_envelope");
        };
        let mut state = self.state.lock();
        let target = state
            .swarms
            .get(&info_hash)
            .and_then(|s| s.peers.get(&peer))
            .map(|p| p.conn);
        match target {
            Some(conn) => {
                self.metrics.cluster("relay_in");
                self.send(&mut state, conn, text.into());
            }
            None => self.metrics.cluster("relay_in_no_peer"),
        }
    }

    /// One step of the sweep of the cluster's swarm list (the swarms of dead nodes leave it).
    pub(crate) async fn sweep(&self, cluster: &Cluster) {
        match cluster.tracker_sweep(self.boot).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(swarms = n, "tracker: empty swarms swept"),
            Err(_) => self.metrics.cluster("unavailable"),
        }
    }

    /// Writes this node's swarms to the cluster again (the keep-alive's renewal); whether
    /// Redis answered.
    pub(crate) async fn renew(&self, cluster: &Cluster) -> bool {
        let (swarms, left): (Vec<LocalSwarm>, Vec<(Id, u64)>) = {
            let state = self.state.lock();
            let mut swarms: Vec<LocalSwarm> = state
                .swarms
                .iter()
                .map(|(info_hash, s)| LocalSwarm {
                    info_hash: *info_hash,
                    view: s.view(),
                    peers: s.peers.iter().map(|(id, p)| (*id, p.token)).collect(),
                })
                .collect();
            let left: Vec<(Id, u64)> = state.left.iter().map(|(id, seq)| (*id, *seq)).collect();
            swarms.extend(
                left.iter()
                    .filter(|(id, _)| !state.swarms.contains_key(id))
                    .map(|(id, seq)| LocalSwarm {
                        info_hash: *id,
                        view: View {
                            seq: *seq,
                            complete: 0,
                            incomplete: 0,
                        },
                        peers: Vec::new(),
                    }),
            );
            (swarms, left)
        };
        if swarms.is_empty() {
            return true;
        }
        let taken = match cluster.tracker_renew(&swarms, self.boot).await {
            Ok(taken) => taken,
            Err(_) => {
                self.metrics.cluster("unavailable");
                return false;
            }
        };
        let leaves = {
            let mut state = self.state.lock();
            for (id, seq) in left {
                if state.left.get(&id) == Some(&seq) {
                    state.left.remove(&id);
                }
            }
            // Another live node took these peer ids while this one could not reach Redis: the
            // id is one connection's across the cluster, the newest holder's.
            let mut leaves = Vec::new();
            for (info_hash, peer) in taken {
                let owner = state
                    .swarms
                    .get(&info_hash)
                    .and_then(|s| s.peers.get(&peer))
                    .map(|p| p.conn);
                if let Some(leave) = owner.and_then(|c| stop(&mut state, info_hash, peer, c)) {
                    self.count_drop("peer_id_taken");
                    leaves.push(leave);
                }
            }
            self.metrics.swarms.set(state.swarms.len() as i64);
            leaves
        };
        if !leaves.is_empty() {
            // Only this node's counts change: the entries are the other node's.
            let _ = cluster.tracker_leave(&leaves, self.boot).await;
        }
        true
    }

    /// Applies an announce to its swarm here; what changed, or why it was refused (the drop
    /// reason it counts as and the failure reason).
    fn apply(
        &self,
        state: &mut State,
        conn: ConnId,
        a: &Announce<'_>,
    ) -> Result<Change, (&'static str, &'static str)> {
        if a.event == Event::Stopped {
            // Only the connection that announced a peer id stops it (the reference lets anyone).
            let left = stop(state, a.info_hash, a.peer_id, conn);
            self.metrics.swarms.set(state.swarms.len() as i64);
            return Ok(Change::Left(left));
        }
        let owner = state
            .swarms
            .get(&a.info_hash)
            .and_then(|s| s.peers.get(&a.peer_id))
            .map(|p| p.conn);
        match owner {
            // A peer id belongs to the connection that announced it while that one is open:
            // anyone who saw it in a relay could otherwise take its offers and answers.
            Some(owner) if owner != conn => {
                return Err(("peer_id_taken", "peer_id in use by another connection"));
            }
            Some(_) => {}
            None => {
                let pairs = state.conns.get(&conn).map_or(0, |c| c.announced.len());
                if pairs >= self.cfg.max_per_connection {
                    return Err(("connection_full", "too many swarms on this connection"));
                }
            }
        }
        if !state.swarms.contains_key(&a.info_hash) {
            if state.swarms.len() >= self.cfg.max_swarms {
                return Err(("swarms", "too many swarms"));
            }
            let created = state.next_swarm;
            state.next_swarm += 1;
            state.swarms.insert(
                a.info_hash,
                Swarm {
                    created,
                    seq: 0,
                    peers: HashMap::new(),
                    complete: 0,
                    incomplete: 0,
                },
            );
            state.by_creation.insert(created, a.info_hash);
            self.metrics.swarms.set(state.swarms.len() as i64);
        }
        let seq = state.next_seq + 1;
        let swarm = state
            .swarms
            .get_mut(&a.info_hash)
            .expect("the swarm exists now");
        let token = match swarm.peers.get_mut(&a.peer_id) {
            Some(peer) => {
                // `completed`, or an update with nothing left: complete now (never back).
                let completes = a.event == Event::Completed || a.left_zero;
                if completes && !peer.complete {
                    peer.complete = true;
                    swarm.complete += 1;
                    swarm.incomplete -= 1;
                    swarm.seq = seq;
                }
                peer.token
            }
            None => {
                if swarm.peers.len() >= self.cfg.max_swarm_peers {
                    if swarm.peers.is_empty() {
                        let created = swarm.created;
                        state.swarms.remove(&a.info_hash);
                        state.by_creation.remove(&created);
                    }
                    return Err(("swarm_full", "swarm full"));
                }
                swarm.peers.insert(
                    a.peer_id,
                    Peer {
                        conn,
                        complete: a.left_zero,
                        token: seq,
                    },
                );
                if a.left_zero {
                    swarm.complete += 1;
                } else {
                    swarm.incomplete += 1;
                }
                swarm.seq = seq;
                seq
            }
        };
        let view = swarm.view();
        if view.seq == seq {
            state.next_seq = seq;
        }
        if let Some(c) = state.conns.get_mut(&conn) {
            c.announced.insert((a.info_hash, a.peer_id));
        }
        Ok(Change::Joined { token, view })
    }

    async fn scrape(&self, conn: ConnId, m: &Inbound<'_>) {
        let asked: Option<Vec<Id>> = match m.info_hash.map(|raw| raw.get()) {
            None | Some("null") => None,
            Some(raw) => {
                let hashes = match serde_json::from_str::<serde_json::Value>(raw) {
                    Ok(s @ serde_json::Value::String(_)) => vec![s],
                    Ok(serde_json::Value::Array(v)) => v,
                    _ => return self.fail(conn, "invalid", None, "invalid info_hash", None),
                };
                let mut ids = Vec::with_capacity(hashes.len().min(self.cfg.max_scrape));
                let mut seen = HashSet::with_capacity(ids.capacity());
                for s in hashes {
                    let Some(id) = s.as_str().and_then(Id::parse) else {
                        return self.fail(conn, "invalid", None, "invalid info_hash", None);
                    };
                    if ids.len() < self.cfg.max_scrape && seen.insert(id) {
                        ids.push(id);
                    }
                }
                Some(ids)
            }
        };
        let files = match self.cluster_up() {
            Some(cluster) => match cluster
                .tracker_scrape(asked.as_deref(), self.cfg.max_scrape, self.boot)
                .await
            {
                Ok(counts) => Some(
                    counts
                        .into_iter()
                        .map(|(id, complete, incomplete)| {
                            let file = ScrapeFile {
                                complete,
                                incomplete,
                                downloaded: complete,
                            };
                            (id, file)
                        })
                        .collect(),
                ),
                Err(_) => {
                    self.metrics.cluster("unavailable");
                    None
                }
            },
            None => None,
        };
        let files = files.unwrap_or_else(|| self.local_scrape(asked));
        let text = to_text(&ScrapeReply {
            action: "scrape",
            files,
            flags: ScrapeFlags {
                min_request_interval: self.cfg.interval_secs * 5,
            },
        });
        let mut state = self.state.lock();
        self.send(&mut state, conn, text);
    }

    /// The counts of the swarms `asked` (`None`: every swarm) here.
    fn local_scrape(&self, asked: Option<Vec<Id>>) -> Vec<(Id, ScrapeFile)> {
        let state = self.state.lock();
        match asked {
            Some(ids) => ids
                .into_iter()
                .map(|id| {
                    let counts = state.swarms.get(&id).map_or(
                        ScrapeFile {
                            complete: 0,
                            incomplete: 0,
                            downloaded: 0,
                        },
                        Swarm::counts,
                    );
                    (id, counts)
                })
                .collect(),
            None => state
                .by_creation
                .values()
                .take(self.cfg.max_scrape)
                .filter_map(|id| Some((*id, state.swarms.get(id)?.counts())))
                .collect(),
        }
    }

    /// Queues `text` for `conn`. A connection with `outbox` messages or `max_queued` bytes
    /// still queued is cut: forgotten at once (its peers leave their swarms) and its session
    /// told to stop, dropping what it had queued.
    fn send(&self, state: &mut State, conn: ConnId, text: Arc<str>) {
        let Some(c) = state.conns.get_mut(&conn) else {
            return;
        };
        if c.mailbox.push(text, self.cfg.max_queued) {
            self.metrics.sent.inc();
            return;
        }
        self.count_drop("slow");
        c.mailbox.cut();
        let leaves = self.forget(state, conn);
        self.leave_later(leaves);
    }

    /// Peers and swarms held (for health and tests).
    pub fn stats(&self) -> (usize, usize) {
        let state = self.state.lock();
        (
            state.swarms.len(),
            state.swarms.values().map(|s| s.peers.len()).sum(),
        )
    }
}

/// Removes `peer_id` from the swarm of `info_hash` if `only_conn` announced it (an empty swarm
/// goes); the leave, for the cluster.
fn stop(state: &mut State, info_hash: Id, peer_id: Id, only_conn: ConnId) -> Option<Leave> {
    let swarm = state.swarms.get_mut(&info_hash)?;
    let peer = swarm.peers.get(&peer_id)?;
    if peer.conn != only_conn {
        return None;
    }
    let (owner, token) = (peer.conn, peer.token);
    if peer.complete {
        swarm.complete -= 1;
    } else {
        swarm.incomplete -= 1;
    }
    swarm.peers.remove(&peer_id);
    state.next_seq += 1;
    swarm.seq = state.next_seq;
    let view = swarm.view();
    if swarm.peers.is_empty() {
        let created = swarm.created;
        state.swarms.remove(&info_hash);
        state.by_creation.remove(&created);
        if state.left.len() < LEFT_MAX {
            state.left.insert(info_hash, view.seq);
        }
    }
    if let Some(c) = state.conns.get_mut(&owner) {
        c.announced.remove(&(info_hash, peer_id));
    }
    Some(Leave {
        info_hash,
        peer_id,
        token,
        view,
    })
}

/// Swarms left remembered for the next renewal at most (beyond, their entries expire).
const LEFT_MAX: usize = 100_000;

/// JavaScript truthiness of a JSON value (`answer` counts only when truthy).
fn truthy(raw: &RawValue) -> bool {
    !matches!(raw.get(), "null" | "false" | "0" | "\"\"" | "-0")
}

/// `Number(left) === 0` in JavaScript (a missing or non-numeric `left` is not 0).
fn left_is_zero(left: Option<&RawValue>) -> bool {
    let Some(raw) = left else {
        return false;
    };
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Null) | Ok(serde_json::Value::Bool(false)) => true,
        Ok(serde_json::Value::Number(n)) => n.as_f64() == Some(0.0),
        Ok(serde_json::Value::String(s)) => {
            let t = s.trim();
            t.is_empty() || t.parse::<f64>().is_ok_and(|v| v == 0.0)
        }
        _ => false,
    }
}

#[async_trait::async_trait]
impl Engine for Tracker {
    fn open(&self, _viewer: &Viewer) -> (ConnId, Outbox) {
        self.connect()
    }

    async fn handle(&self, conn: ConnId, text: &str) {
        Tracker::handle(self, conn, text).await;
    }

    async fn close(&self, conn: ConnId) {
        self.disconnect(conn).await;
    }

    fn count_drop(&self, reason: &str) {
        Tracker::count_drop(self, reason);
    }
}
