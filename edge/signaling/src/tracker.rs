//! Swarms and connections of the WebTorrent tracker, and what each message does to them.
//!
//! One lock over the state; every send is a `try_send` into the connection's bounded outbox,
//! so nothing waits while it is held. A connection whose outbox is full is cut (its session
//! sees the outbox close) rather than slowing the others.

use crate::mailbox::{Mailbox, Outbox};
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

/// The tracker of one process (its swarms are local to it).
pub struct Tracker {
    cfg: TrackerConfig,
    state: Mutex<State>,
    metrics: ProtocolMetrics,
}

#[derive(Default)]
struct State {
    next_conn: ConnId,
    next_swarm: u64,
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
    peers: HashMap<Id, Peer>,
    complete: usize,
    incomplete: usize,
}

struct Peer {
    conn: ConnId,
    complete: bool,
}

impl Swarm {
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

impl Tracker {
    /// An empty tracker.
    pub fn new(cfg: TrackerConfig, metrics: &Metrics) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::default()),
            metrics: metrics.protocol("tracker"),
        }
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

    /// Forgets a connection: a `stopped` in every swarm it announced in (no reply).
    pub fn disconnect(&self, conn: ConnId) {
        let mut state = self.state.lock();
        self.forget(&mut state, conn);
    }

    fn forget(&self, state: &mut State, conn: ConnId) {
        let Some(c) = state.conns.remove(&conn) else {
            return;
        };
        for (info_hash, peer_id) in c.announced {
            stop(state, info_hash, peer_id, conn);
        }
        self.metrics.connections.set(state.conns.len() as i64);
        self.metrics.swarms.set(state.swarms.len() as i64);
    }

    /// Counts something dropped or refused, by reason.
    pub fn count_drop(&self, reason: &str) {
        self.metrics.drop(reason);
    }

    /// Handles one text frame from `conn`.
    pub fn handle(&self, conn: ConnId, text: &str) {
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
                Ok(a) => self.announce(conn, a),
                Err((why, info_hash)) => {
                    let action = info_hash.map(|_| "announce");
                    self.fail(conn, "invalid", action, why, info_hash)
                }
            },
            _ => self.scrape(conn, &inbound),
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

    fn announce(&self, conn: ConnId, a: Announce<'_>) {
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
        let mut state = self.state.lock();
        if !state.conns.contains_key(&conn) {
            // Cut meanwhile (its session has not seen it yet): it announces nothing any more.
            return;
        }
        let counts = match self.apply(&mut state, conn, &a) {
            Ok(counts) => counts,
            Err((counted_as, why)) => {
                drop(state);
                return self.fail(conn, counted_as, Some("announce"), why, Some(a.info_hash));
            }
        };
        if let Some((to, text)) = answer {
            // The reference sends nothing back for an answer.
            let target = state
                .swarms
                .get(&a.info_hash)
                .and_then(|s| s.peers.get(&to))
                .map(|p| p.conn);
            match target {
                Some(target) => {
                    self.metrics.relay("answer");
                    self.send(&mut state, target, text);
                }
                None => self.count_drop("no_peer"),
            }
            return;
        }
        let reply = to_text(&AnnounceReply {
            complete: counts.0,
            incomplete: counts.1,
            action: "announce",
            interval: self.cfg.interval_secs,
            info_hash: a.info_hash,
        });
        self.send(&mut state, conn, reply);
        if offers.is_empty() {
            return;
        }
        let targets: Vec<ConnId> = match state.swarms.get(&a.info_hash) {
            Some(swarm) => swarm
                .peers
                .iter()
                .filter(|(id, _)| **id != a.peer_id)
                .map(|(_, p)| p.conn)
                .choose_multiple(&mut rand::rng(), offers.len()),
            None => Vec::new(),
        };
        for (target, text) in targets.into_iter().zip(offers) {
            self.metrics.relay("offer");
            self.send(&mut state, target, text);
        }
    }

    /// Applies an announce to its swarm; the counts after it, or why it was refused (the drop
    /// reason it counts as and the failure reason).
    fn apply(
        &self,
        state: &mut State,
        conn: ConnId,
        a: &Announce<'_>,
    ) -> Result<(usize, usize), (&'static str, &'static str)> {
        if a.event == Event::Stopped {
            // Only the connection that announced a peer id stops it (the reference lets anyone).
            stop(state, a.info_hash, a.peer_id, conn);
            self.metrics.swarms.set(state.swarms.len() as i64);
            return Ok(state
                .swarms
                .get(&a.info_hash)
                .map_or((0, 0), |s| (s.complete, s.incomplete)));
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
                    peers: HashMap::new(),
                    complete: 0,
                    incomplete: 0,
                },
            );
            state.by_creation.insert(created, a.info_hash);
            self.metrics.swarms.set(state.swarms.len() as i64);
        }
        let swarm = state
            .swarms
            .get_mut(&a.info_hash)
            .expect("the swarm exists now");
        match swarm.peers.get_mut(&a.peer_id) {
            Some(peer) => {
                // `completed`, or an update with nothing left: complete now (never back).
                let completes = a.event == Event::Completed || a.left_zero;
                if completes && !peer.complete {
                    peer.complete = true;
                    swarm.complete += 1;
                    swarm.incomplete -= 1;
                }
            }
            None => {
                if swarm.peers.len() >= self.cfg.max_swarm_peers {
                    return Err(("swarm_full", "swarm full"));
                }
                swarm.peers.insert(
                    a.peer_id,
                    Peer {
                        conn,
                        complete: a.left_zero,
                    },
                );
                if a.left_zero {
                    swarm.complete += 1;
                } else {
                    swarm.incomplete += 1;
                }
            }
        }
        let counts = (swarm.complete, swarm.incomplete);
        if let Some(c) = state.conns.get_mut(&conn) {
            c.announced.insert((a.info_hash, a.peer_id));
        }
        Ok(counts)
    }

    fn scrape(&self, conn: ConnId, m: &Inbound<'_>) {
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
        let state = self.state.lock();
        let files: Vec<(Id, ScrapeFile)> = match asked {
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
        };
        drop(state);
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
        self.forget(state, conn);
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

/// Removes `peer_id` from the swarm of `info_hash` if `only_conn` announced it; an empty swarm
/// goes.
fn stop(state: &mut State, info_hash: Id, peer_id: Id, only_conn: ConnId) {
    let Some(swarm) = state.swarms.get_mut(&info_hash) else {
        return;
    };
    let Some(peer) = swarm.peers.get(&peer_id) else {
        return;
    };
    if peer.conn != only_conn {
        return;
    }
    let owner = peer.conn;
    if peer.complete {
        swarm.complete -= 1;
    } else {
        swarm.incomplete -= 1;
    }
    swarm.peers.remove(&peer_id);
    if swarm.peers.is_empty() {
        let created = swarm.created;
        state.swarms.remove(&info_hash);
        state.by_creation.remove(&created);
    }
    if let Some(c) = state.conns.get_mut(&owner) {
        c.announced.remove(&(info_hash, peer_id));
    }
}

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
        Tracker::handle(self, conn, text);
    }

    async fn close(&self, conn: ConnId) {
        self.disconnect(conn);
    }

    fn count_drop(&self, reason: &str) {
        Tracker::count_drop(self, reason);
    }
}
