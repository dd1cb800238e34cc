//! Streams: who watches what (`join`, `leave`), who to ask for a segment (`have`, `peers`), and
//! the WebRTC offers, answers and ICE candidates relayed between them by peer id.

use super::{After, ConnId, Hub, State, wire};
use rand::seq::IteratorRandom;
use std::collections::{HashMap, HashSet, VecDeque};

/// The peers of one stream.
#[derive(Default)]
pub(super) struct Swarm {
    peers: HashMap<String, Peer>,
}

impl Swarm {
    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    /// The connection of peer `peer`.
    pub(super) fn conn_of(&self, peer: &str) -> Option<ConnId> {
        self.peers.get(peer).map(|p| p.conn)
    }

    /// (peer id, rendition, join token) of every peer.
    pub(super) fn peers(&self) -> impl Iterator<Item = (&str, Option<String>, u64)> {
        self.peers
            .iter()
            .map(|(id, p)| (id.as_str(), p.rendition.clone(), p.token))
    }

    /// The connections of every peer.
    pub(super) fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.peers.values().map(|p| p.conn)
    }

    /// Whether peer `peer` is held, by the join `token`.
    pub(super) fn holds(&self, peer: &str, token: u64) -> bool {
        self.peers.get(peer).is_some_and(|p| p.token == token)
    }
}

struct Peer {
    conn: ConnId,
    /// This join of the peer id (its entry in the cluster is this join's, not a later one's).
    token: u64,
    rendition: Option<String>,
    /// Segments the peer said it holds, most recent last (bounded by `max_have`), and the same
    /// as a set.
    have: VecDeque<String>,
    have_set: HashSet<String>,
}

impl Hub {
    /// A stream message (`kind` is one); what the cluster still has to do for it.
    pub(super) fn stream_message(&self, conn: ConnId, kind: &str, text: &str) -> After {
        match kind {
            "join" => {
                if let Some(m) = self.parse::<wire::Join>(conn, kind, text) {
                    return self.join(conn, m);
                }
            }
            "peers" => {
                if let Some(m) = self.parse::<wire::Peers>(conn, kind, text) {
                    let mut state = self.lock();
                    let Some(peer) = self.joined_as(&mut state, conn, &m.stream_id, kind) else {
                        return After::Nothing;
                    };
                    if m.segment
                        .as_deref()
                        .is_some_and(|s| !wire::valid_segment(s))
                    {
                        self.refuse(
                            &mut state,
                            conn,
                            "invalid_segment",
                            "bad segment",
                            Some(kind),
                        );
                        return After::Nothing;
                    }
                    let segment = m.segment.as_deref();
                    self.peer_list(&mut state, conn, &m.stream_id, &peer, segment, &[]);
                }
            }
            "have" => {
                if let Some(m) = self.parse::<wire::Have>(conn, kind, text) {
                    self.have(conn, m);
                }
            }
            "leave" => {
                if let Some(m) = self.parse::<wire::StreamOnly>(conn, kind, text) {
                    let mut state = self.lock();
                    if let Some(peer) = self.joined_as(&mut state, conn, &m.stream_id, kind) {
                        self.leave_stream(&mut state, &m.stream_id, &peer, conn);
                    }
                }
            }
            _ => {
                if let Some(m) = self.parse::<wire::Relay<'_>>(conn, kind, text) {
                    return self.relay(conn, kind, m);
                }
            }
        }
        After::Nothing
    }

    /// The peer id `conn` joined `stream` with, or an error to it (`not_joined`).
    fn joined_as(
        &self,
        state: &mut State,
        conn: ConnId,
        stream: &str,
        kind: &str,
    ) -> Option<String> {
        let peer = state.conns.get(&conn)?.joined.get(stream).cloned();
        if peer.is_none() {
            self.refuse(
                state,
                conn,
                "not_joined",
                "join the stream first",
                Some(kind),
            );
        }
        peer
    }

    fn join(&self, conn: ConnId, m: wire::Join) -> After {
        let mut state = self.lock();
        let about = Some("join");
        if !wire::valid_id(&m.stream_id) {
            self.refuse(&mut state, conn, "invalid_stream_id", "bad streamId", about);
            return After::Nothing;
        }
        if !wire::valid_id(&m.peer_id) {
            self.refuse(&mut state, conn, "invalid_peer_id", "bad peerId", about);
            return After::Nothing;
        }
        if m.rendition.as_deref().is_some_and(|r| !wire::valid_id(r)) {
            self.refuse(
                &mut state,
                conn,
                "invalid_rendition",
                "bad rendition",
                about,
            );
            return After::Nothing;
        }
        let Some(c) = state.conns.get(&conn) else {
            return After::Nothing;
        };
        match c.joined.get(&m.stream_id) {
            Some(peer) if *peer != m.peer_id => {
                let why = "this connection joined the stream with another peerId";
                self.refuse(&mut state, conn, "already_joined", why, about);
                return After::Nothing;
            }
            Some(_) => {}
            None if c.memberships() >= self.cfg.max_per_connection => {
                let why = "too many streams and rooms on this connection";
                self.refuse(&mut state, conn, "connection_full", why, about);
                return After::Nothing;
            }
            None => {}
        }
        let owner = state
            .swarms
            .get(&m.stream_id)
            .and_then(|s| s.peers.get(&m.peer_id))
            .map(|p| p.conn);
        match owner {
            Some(owner) if owner != conn => {
                let why = "peerId in use by another connection";
                self.refuse(&mut state, conn, "peer_id_taken", why, about);
                return After::Nothing;
            }
            Some(_) => {
                // A join again: the rendition may change; the peer list is sent again.
                if let Some(p) = state
                    .swarms
                    .get_mut(&m.stream_id)
                    .and_then(|s| s.peers.get_mut(&m.peer_id))
                {
                    p.rendition = m.rendition;
                }
            }
            None => {
                if !state.swarms.contains_key(&m.stream_id)
                    && state.swarms.len() >= self.cfg.max_streams
                {
                    self.refuse(&mut state, conn, "too_many_streams", "", about);
                    return After::Nothing;
                }
                let swarm = state.swarms.entry(m.stream_id.clone()).or_default();
                if swarm.peers.len() >= self.cfg.max_swarm_peers {
                    self.refuse(&mut state, conn, "swarm_full", "the stream is full", about);
                    return After::Nothing;
                }
                state.next_token += 1;
                let token = state.next_token;
                count(&mut state, &m.stream_id, true);
                let swarm = state.swarms.entry(m.stream_id.clone()).or_default();
                swarm.peers.insert(
                    m.peer_id.clone(),
                    Peer {
                        conn,
                        token,
                        rendition: m.rendition,
                        have: VecDeque::new(),
                        have_set: HashSet::new(),
                    },
                );
                if let Some(c) = state.conns.get_mut(&conn) {
                    c.joined.insert(m.stream_id.clone(), m.peer_id.clone());
                }
                self.metrics.swarms.set(state.swarms.len() as i64);
            }
        }
        if self.cluster.is_some()
            && let Some(p) = state
                .swarms
                .get(&m.stream_id)
                .and_then(|s| s.peers.get(&m.peer_id))
        {
            return After::Join {
                stream: m.stream_id.clone(),
                peer: m.peer_id.clone(),
                rendition: p.rendition.clone(),
                token: p.token,
            };
        }
        self.peer_list(&mut state, conn, &m.stream_id, &m.peer_id, None, &[]);
        After::Nothing
    }

    /// Sends `conn` (peer `me` of `stream`) up to `max_peer_list` other peers, chosen at random
    /// among this node's and `remote` (other nodes'): those of its own rendition first; with
    /// `segment`, only this node's peers that hold it.
    pub(super) fn peer_list(
        &self,
        state: &mut State,
        conn: ConnId,
        stream: &str,
        me: &str,
        segment: Option<&str>,
        remote: &[(String, Option<String>)],
    ) {
        let text = {
            let Some(swarm) = state.swarms.get(stream) else {
                return;
            };
            let mine = swarm.peers.get(me).and_then(|p| p.rendition.as_deref());
            let local = swarm
                .peers
                .iter()
                .filter(|(id, p)| *id != me && segment.is_none_or(|s| p.have_set.contains(s)))
                .map(|(id, p)| (id.as_str(), p.rendition.as_deref()));
            let others = remote
                .iter()
                .filter(|(id, _)| id != me && !swarm.peers.contains_key(id))
                .map(|(id, r)| (id.as_str(), r.as_deref()));
            let (same, other): (Vec<_>, Vec<_>) = local
                .chain(others)
                .partition(|(_, r)| mine.is_some() && *r == mine);
            let max = self.cfg.max_peer_list;
            let mut rng = rand::rng();
            let mut chosen = same.into_iter().choose_multiple(&mut rng, max);
            let rest = max - chosen.len();
            chosen.extend(other.into_iter().choose_multiple(&mut rng, rest));
            wire::to_text(&wire::PeerList {
                kind: "peer-list",
                stream_id: stream,
                segment,
                peers: chosen
                    .into_iter()
                    .map(|(peer_id, rendition)| wire::PeerEntry { peer_id, rendition })
                    .collect(),
            })
        };
        self.send(state, conn, text);
    }

    fn have(&self, conn: ConnId, m: wire::Have) {
        let mut state = self.lock();
        let about = Some("have");
        let Some(peer) = self.joined_as(&mut state, conn, &m.stream_id, "have") else {
            return;
        };
        if m.segments.len() > 64 || !m.segments.iter().all(|s| wire::valid_segment(s)) {
            let why = "up to 64 segment names of 1 to 256 bytes";
            return self.refuse(&mut state, conn, "invalid_segment", why, about);
        }
        let max = self.cfg.max_have;
        let Some(p) = state
            .swarms
            .get_mut(&m.stream_id)
            .and_then(|s| s.peers.get_mut(&peer))
        else {
            return;
        };
        for segment in m.segments {
            if p.have_set.contains(&segment) {
                continue;
            }
            if p.have.len() >= max
                && let Some(old) = p.have.pop_front()
            {
                p.have_set.remove(&old);
            }
            p.have_set.insert(segment.clone());
            p.have.push_back(segment);
        }
    }

    fn relay(&self, conn: ConnId, kind: &str, m: wire::Relay<'_>) -> After {
        let mut state = self.lock();
        let about = Some(kind);
        let Some(from) = self.joined_as(&mut state, conn, &m.stream_id, kind) else {
            return After::Nothing;
        };
        let (sdp, candidate) = match kind {
            "ice" => (None, m.candidate),
            _ => (m.sdp, None),
        };
        if sdp.is_none() && candidate.is_none() {
            let why = if kind == "ice" {
                "`ice` needs a `candidate`"
            } else {
                "an offer or answer needs an `sdp`"
            };
            {
                self.refuse(&mut state, conn, "bad_message", why, about);
                return After::Nothing;
            }
        }
        if !wire::valid_id(&m.to) {
            self.refuse(&mut state, conn, "invalid_peer_id", "bad `to`", about);
            return After::Nothing;
        }
        if m.to == from {
            self.refuse(
                &mut state,
                conn,
                "no_peer",
                "cannot relay to oneself",
                about,
            );
            return After::Nothing;
        }
        let target = state
            .swarms
            .get(&m.stream_id)
            .and_then(|s| s.peers.get(&m.to))
            .map(|p| p.conn);
        let text = wire::to_text(&wire::Relayed {
            kind,
            stream_id: &m.stream_id,
            from: &from,
            sdp,
            candidate,
        });
        match target {
            Some(target) => {
                self.metrics.relay(kind);
                self.send(&mut state, target, text);
                After::Nothing
            }
            // Perhaps a peer of another node.
            None if self.cluster.is_some() => After::Relay {
                kind: kind.to_owned(),
                stream: m.stream_id,
                to: m.to,
                text,
            },
            None => {
                let why = "no such peer in the stream";
                self.refuse(&mut state, conn, "no_peer", why, about);
                After::Nothing
            }
        }
    }

    /// Removes peer `peer` of `conn` from `stream`, here and in the cluster; an empty stream
    /// goes.
    pub(super) fn leave_stream(&self, state: &mut State, stream: &str, peer: &str, conn: ConnId) {
        if let Some(token) = self.leave_here(state, stream, peer, conn)
            && let Some(cluster) = &self.cluster
        {
            let (cluster, stream, peer) = (cluster.clone(), stream.to_owned(), peer.to_owned());
            tokio::spawn(async move { cluster.leave(&stream, &peer, token).await });
        }
    }

    /// Removes peer `peer` of `conn` from `stream` on this node; its join token if it was
    /// there.
    pub(super) fn leave_here(
        &self,
        state: &mut State,
        stream: &str,
        peer: &str,
        conn: ConnId,
    ) -> Option<u64> {
        if let Some(c) = state.conns.get_mut(&conn) {
            c.joined.remove(stream);
        }
        let swarm = state.swarms.get_mut(stream)?;
        let was = swarm
            .peers
            .get(peer)
            .filter(|p| p.conn == conn)
            .map(|p| p.token);
        if was.is_some() {
            swarm.peers.remove(peer);
        }
        if swarm.peers.is_empty() {
            state.swarms.remove(stream);
        }
        if was.is_some() {
            count(state, stream, false);
        }
        self.metrics.swarms.set(state.swarms.len() as i64);
        was
    }
}

/// Counts a peer joined (or left) `stream`, for [`Hub::take_peer_counts`] when someone takes
/// them (`peer_counts`); streams beyond 10 000 in one period are not counted.
fn count(state: &mut State, stream: &str, joined: bool) {
    if !state.peer_counts || (!state.counts.contains_key(stream) && state.counts.len() >= 10_000) {
        return;
    }
    let entry = state.counts.entry(stream.to_owned()).or_default();
    if joined {
        entry.0 += 1;
    } else {
        entry.1 += 1;
    }
}
