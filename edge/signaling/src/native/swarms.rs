//! Streams: who watches what (`join`, `leave`), who to ask for a segment (`have`, `peers`), and
//! the WebRTC offers, answers and ICE candidates relayed between them by peer id.

use super::{ConnId, Hub, State, wire};
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
}

struct Peer {
    conn: ConnId,
    rendition: Option<String>,
    /// Segments the peer said it holds, most recent last (bounded by `max_have`), and the same
    /// as a set.
    have: VecDeque<String>,
    have_set: HashSet<String>,
}

impl Hub {
    /// A stream message; false when `kind` is not one.
    pub(super) fn stream_message(&self, conn: ConnId, kind: &str, text: &str) -> bool {
        match kind {
            "join" => {
                if let Some(m) = self.parse::<wire::Join>(conn, kind, text) {
                    self.join(conn, m);
                }
            }
            "peers" => {
                if let Some(m) = self.parse::<wire::Peers>(conn, kind, text) {
                    let mut state = self.state.lock();
                    let Some(peer) = self.joined_as(&mut state, conn, &m.stream_id, kind) else {
                        return true;
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
                        return true;
                    }
                    self.peer_list(&mut state, conn, &m.stream_id, &peer, m.segment.as_deref());
                }
            }
            "have" => {
                if let Some(m) = self.parse::<wire::Have>(conn, kind, text) {
                    self.have(conn, m);
                }
            }
            "leave" => {
                if let Some(m) = self.parse::<wire::StreamOnly>(conn, kind, text) {
                    let mut state = self.state.lock();
                    if let Some(peer) = self.joined_as(&mut state, conn, &m.stream_id, kind) {
                        self.leave_stream(&mut state, &m.stream_id, &peer, conn);
                    }
                }
            }
            "offer" | "answer" | "ice" => {
                if let Some(m) = self.parse::<wire::Relay<'_>>(conn, kind, text) {
                    self.relay(conn, kind, m);
                }
            }
            _ => return false,
        }
        true
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

    fn join(&self, conn: ConnId, m: wire::Join) {
        let mut state = self.state.lock();
        let about = Some("join");
        if !wire::valid_id(&m.stream_id) {
            return self.refuse(&mut state, conn, "invalid_stream_id", "bad streamId", about);
        }
        if !wire::valid_id(&m.peer_id) {
            return self.refuse(&mut state, conn, "invalid_peer_id", "bad peerId", about);
        }
        if m.rendition.as_deref().is_some_and(|r| !wire::valid_id(r)) {
            return self.refuse(
                &mut state,
                conn,
                "invalid_rendition",
                "bad rendition",
                about,
            );
        }
        let Some(c) = state.conns.get(&conn) else {
            return;
        };
        match c.joined.get(&m.stream_id) {
            Some(peer) if *peer != m.peer_id => {
                let why = "this connection joined the stream with another peerId";
                return self.refuse(&mut state, conn, "already_joined", why, about);
            }
            Some(_) => {}
            None if c.memberships() >= self.cfg.max_per_connection => {
                let why = "too many streams and rooms on this connection";
                return self.refuse(&mut state, conn, "connection_full", why, about);
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
                return self.refuse(&mut state, conn, "peer_id_taken", why, about);
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
                    return self.refuse(&mut state, conn, "too_many_streams", "", about);
                }
                let swarm = state.swarms.entry(m.stream_id.clone()).or_default();
                if swarm.peers.len() >= self.cfg.max_swarm_peers {
                    return self.refuse(
                        &mut state,
                        conn,
                        "swarm_full",
                        "the stream is full",
                        about,
                    );
                }
                swarm.peers.insert(
                    m.peer_id.clone(),
                    Peer {
                        conn,
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
        self.peer_list(&mut state, conn, &m.stream_id, &m.peer_id, None);
    }

    /// Sends `conn` (peer `me` of `stream`) up to `max_peer_list` other peers, chosen at random:
    /// those of its own rendition first; with `segment`, only peers that hold it.
    fn peer_list(
        &self,
        state: &mut State,
        conn: ConnId,
        stream: &str,
        me: &str,
        segment: Option<&str>,
    ) {
        let text = {
            let Some(swarm) = state.swarms.get(stream) else {
                return;
            };
            let mine = swarm.peers.get(me).and_then(|p| p.rendition.as_deref());
            let candidates = swarm
                .peers
                .iter()
                .filter(|(id, p)| *id != me && segment.is_none_or(|s| p.have_set.contains(s)));
            let (same, other): (Vec<_>, Vec<_>) =
                candidates.partition(|(_, p)| mine.is_some() && p.rendition.as_deref() == mine);
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
                    .map(|(id, p)| wire::PeerEntry {
                        peer_id: id,
                        rendition: p.rendition.as_deref(),
                    })
                    .collect(),
            })
        };
        self.send(state, conn, text);
    }

    fn have(&self, conn: ConnId, m: wire::Have) {
        let mut state = self.state.lock();
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

    fn relay(&self, conn: ConnId, kind: &str, m: wire::Relay<'_>) {
        let mut state = self.state.lock();
        let about = Some(kind);
        let Some(from) = self.joined_as(&mut state, conn, &m.stream_id, kind) else {
            return;
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
            return self.refuse(&mut state, conn, "bad_message", why, about);
        }
        if m.to == from {
            return self.refuse(
                &mut state,
                conn,
                "no_peer",
                "cannot relay to oneself",
                about,
            );
        }
        let target = state
            .swarms
            .get(&m.stream_id)
            .and_then(|s| s.peers.get(&m.to))
            .map(|p| p.conn);
        let Some(target) = target else {
            return self.refuse(
                &mut state,
                conn,
                "no_peer",
                "no such peer in the stream",
                about,
            );
        };
        let text = wire::to_text(&wire::Relayed {
            kind,
            stream_id: &m.stream_id,
            from: &from,
            sdp,
            candidate,
        });
        self.metrics.relay(kind);
        self.send(&mut state, target, text);
    }

    /// Removes peer `peer` of `conn` from `stream`; an empty stream goes.
    pub(super) fn leave_stream(&self, state: &mut State, stream: &str, peer: &str, conn: ConnId) {
        if let Some(c) = state.conns.get_mut(&conn) {
            c.joined.remove(stream);
        }
        let Some(swarm) = state.swarms.get_mut(stream) else {
            return;
        };
        if swarm.peers.get(peer).is_some_and(|p| p.conn == conn) {
            swarm.peers.remove(peer);
        }
        if swarm.peers.is_empty() {
            state.swarms.remove(stream);
        }
        self.metrics.swarms.set(state.swarms.len() as i64);
    }
}
