//! Watch rooms on the hub: members watch one URL together; the host's play/pause/seek/set-url
//! change the room's state, which the server keeps and sends to every online member with its
//! time.
//!
//! A room lives in one home: this process's memory without a cluster, Redis with one (every
//! node reads, changes and writes it back with a compare-and-set, and the write publishes the
//! new state to every node, which sends it to its own members). The rules are [`room`]'s,
//! the same for both.

use super::room::{self, At, Change, Live, Op, Refusal, Room};
use super::{ConnId, Hub, State, cluster, wire};
use tokio::time::Instant;

/// Longest JWT subject a room member may have (bytes).
const MAX_SUB: usize = 256;

/// What a room change ended in, for the member that asked.
enum Outcome {
    Changed(Change),
    Unchanged,
    Refused(Refusal),
    Unavailable,
}

impl Hub {
    /// A room message (`kind` is one of the room types).
    pub(super) async fn room_message(&self, conn: ConnId, kind: &'static str, text: &str) {
        match kind {
            "join-room" => {
                if let Some(m) = self.parse::<wire::JoinRoom>(conn, kind, text) {
                    self.join_room(conn, m).await;
                }
            }
            "leave-room" | "sync" => {
                let Some(m) = self.parse::<wire::RoomOnly>(conn, kind, text) else {
                    return;
                };
                let Some(user) = self.member_as(conn, &m.room_id, kind) else {
                    return;
                };
                if kind == "sync" {
                    return self.sync_room(conn, &m.room_id).await;
                }
                let op = Op::Leave {
                    user,
                    at: self.at(conn),
                };
                // Out of the room once the room says so: a leave that could not be written
                // leaves the connection a member, free to leave again.
                let left = self.try_room_op(Some(conn), &m.room_id, op, kind).await;
                if left.is_ok()
                    && let Some(c) = self.lock().conns.get_mut(&conn)
                {
                    c.rooms.remove(&m.room_id);
                }
            }
            _ => {
                let Some(m) = self.parse::<wire::Control>(conn, kind, text) else {
                    return;
                };
                let Some(user) = self.member_as(conn, &m.room_id, kind) else {
                    return;
                };
                let op = Op::Control {
                    kind,
                    user,
                    at: self.at(conn),
                    position: m.position,
                    url: m.url,
                };
                self.room_op(Some(conn), &m.room_id, op, kind).await;
            }
        }
    }

    /// Where `conn` is, as a room member sees it.
    fn at(&self, conn: ConnId) -> At {
        At {
            node: self.node_id().to_owned(),
            conn,
        }
    }

    /// The time rooms are kept in (ms): the wall clock when rooms span nodes, else a monotonic
    /// clock started at the wall clock's time (grace periods follow tokio's clock).
    pub(super) fn room_clock(&self) -> u64 {
        if self.cluster.is_some() {
            return super::server_time();
        }
        let (wall, mono) = self.epoch;
        wall.saturating_add(
            u64::try_from(Instant::now().saturating_duration_since(mono).as_millis())
                .unwrap_or(u64::MAX),
        )
    }

    /// The user id `conn` is in `room` as, or an error to it (`not_in_room`).
    fn member_as(&self, conn: ConnId, room: &str, kind: &str) -> Option<String> {
        let mut state = self.lock();
        let user = state.conns.get(&conn)?.rooms.get(room).cloned();
        if user.is_none() {
            let why = "join the room first";
            self.refuse(&mut state, conn, "not_in_room", why, Some(kind));
        }
        user
    }

    /// Who `conn` joins `m.room_id` as (user, authenticated, already in the room as that
    /// user), checked: `Err(())` when it was refused.
    fn joining_as(&self, conn: ConnId, m: &wire::JoinRoom) -> Result<(String, bool, bool), ()> {
        let mut state = self.lock();
        let about = Some("join-room");
        let no = |state: &mut State, code, why| {
            self.refuse(state, conn, code, why, about);
            Err(())
        };
        if !wire::valid_id(&m.room_id) {
            return no(&mut state, "invalid_room_id", "bad roomId");
        }
        if m.url.as_deref().is_some_and(|u| !wire::valid_url(u)) {
            return no(&mut state, "invalid_url", "bad url");
        }
        let Some(c) = state.conns.get(&conn) else {
            return Err(());
        };
        // The JWT's subject is who the viewer is; a message cannot claim someone else.
        let authenticated = c.sub.is_some();
        let user = match (&c.sub, &m.user_id) {
            (Some(sub), Some(claimed)) if claimed != sub => {
                return no(
                    &mut state,
                    "user_mismatch",
                    "userId differs from the token's subject",
                );
            }
            // A subject is the identity provider's (`urn:…`, `auth0|…`): only its size is
            // bounded here, as it is in every member list written and sent.
            (Some(sub), _) if sub.len() > MAX_SUB => {
                return no(
                    &mut state,
                    "invalid_user_id",
                    "the token's subject is too long",
                );
            }
            (Some(sub), _) => sub.clone(),
            (None, Some(user)) if wire::valid_id(user) => user.clone(),
            (None, Some(_)) => return no(&mut state, "invalid_user_id", "bad userId"),
            (None, None) => {
                let why = "a userId is needed without a token subject";
                return no(&mut state, "invalid_user_id", why);
            }
        };
        match c.rooms.get(&m.room_id) {
            Some(u) if *u == user => Ok((user, authenticated, true)),
            Some(_) => no(
                &mut state,
                "already_in_room",
                "this connection is in the room as another user",
            ),
            None if c.memberships() >= self.cfg.max_per_connection => no(
                &mut state,
                "connection_full",
                "too many streams and rooms on this connection",
            ),
            None => Ok((user, authenticated, false)),
        }
    }

    async fn join_room(&self, conn: ConnId, m: wire::JoinRoom) {
        let Ok((user, authenticated, already)) = self.joining_as(conn, &m) else {
            return;
        };
        if already {
            return self.sync_room(conn, &m.room_id).await;
        }
        let op = Op::Join {
            user: user.clone(),
            authenticated,
            at: self.at(conn),
            url: m.url,
            max_members: self.cfg.max_room_members,
        };
        if self
            .room_op(Some(conn), &m.room_id, op, "join-room")
            .await
            .is_none()
        {
            return;
        }
        let open = {
            let mut state = self.lock();
            let c = state.conns.get_mut(&conn);
            let open = c.is_some();
            if let Some(c) = c {
                c.rooms.insert(m.room_id.clone(), user.clone());
            }
            open
        };
        if !open {
            // Closed while the cluster answered: its membership goes offline there too.
            let op = Op::Offline {
                user,
                at: self.at(conn),
            };
            self.room_op(None, &m.room_id, op, "join-room").await;
        }
    }

    /// Sends `room_id`'s state to `conn` alone.
    async fn sync_room(&self, conn: ConnId, room_id: &str) {
        let room = match &self.cluster {
            None => self.lock().rooms.get(room_id).cloned(),
            Some(cluster) => match cluster.read_room(room_id).await {
                Ok(room) => room,
                Err(e) => {
                    tracing::debug!(error = %e, "signaling cluster: room not read");
                    self.metrics.cluster("unavailable");
                    let why = "the room store cannot be reached";
                    return self.refuse_now(conn, "unavailable", why, Some("sync"));
                }
            },
        };
        let mut state = self.lock();
        match room {
            Some(room) => {
                let by = state.conns.get(&conn).and_then(|c| c.rooms.get(room_id));
                let text = room.text(room_id, "sync", by.map_or("", |u| u), self.room_clock());
                self.send(&mut state, conn, text);
            }
            None => self.refuse(&mut state, conn, "not_in_room", "no such room", None),
        }
    }

    /// Applies `op` to room `room_id` where the room lives, and tells its members; refusals go
    /// to `conn`. The change, if there was one.
    pub(super) async fn room_op(
        &self,
        conn: Option<ConnId>,
        room_id: &str,
        op: Op,
        about: &str,
    ) -> Option<Change> {
        self.try_room_op(conn, room_id, op, about)
            .await
            .ok()
            .flatten()
    }

    /// [`room_op`](Self::room_op), telling apart a room store that could not be reached
    /// (`Err`: nothing is known to have changed).
    async fn try_room_op(
        &self,
        conn: Option<ConnId>,
        room_id: &str,
        op: Op,
        about: &str,
    ) -> Result<Option<Change>, ()> {
        let outcome = match &self.cluster {
            None => self.room_op_here(room_id, &op),
            // A client's change while this node hears no broadcasts would be written but never
            // reach its own members (nor renew the room's keys); a connection's close is still
            // written (its member goes offline).
            Some(cluster) if conn.is_some() && !cluster.is_up() => Outcome::Unavailable,
            Some(cluster) => {
                let open = |c: ConnId| self.state.lock().conns.contains_key(&c);
                let now = || self.room_clock();
                match cluster
                    .update_room(room_id, &op, self.cfg.room_grace, Some(&open), &now)
                    .await
                {
                    Ok(Some(change)) => Outcome::Changed(change),
                    Ok(None) => Outcome::Unchanged,
                    Err(cluster::RoomError::Refused(r)) => Outcome::Refused(r),
                    Err(cluster::RoomError::Unavailable(e)) => {
                        tracing::debug!(error = %e, room = room_id, "signaling cluster: room not changed");
                        Outcome::Unavailable
                    }
                }
            }
        };
        let about = Some(about);
        match (outcome, conn) {
            (Outcome::Changed(change), _) => return Ok(Some(change)),
            (Outcome::Unchanged, _) => {}
            (Outcome::Refused(r), Some(conn)) => {
                self.refuse_now(conn, r.code, r.message, about);
            }
            (Outcome::Unavailable, conn) => {
                self.metrics.cluster("unavailable");
                if let Some(conn) = conn {
                    let why = "the room store cannot be reached";
                    self.refuse_now(conn, "unavailable", why, about);
                }
                return Err(());
            }
            (Outcome::Refused(r), None) => self.metrics.drop(r.code),
        }
        Ok(None)
    }

    /// [`room_op`](Self::room_op) of a hub without a cluster.
    fn room_op_here(&self, room_id: &str, op: &Op) -> Outcome {
        let mut state = self.lock();
        if !state.rooms.contains_key(room_id)
            && matches!(op, Op::Join { .. })
            && state.rooms.len() >= self.cfg.max_rooms
        {
            return Outcome::Refused(Refusal {
                code: "too_many_rooms",
                message: "",
            });
        }
        match self.apply_here(&mut state, room_id, op) {
            Ok(Some(change)) => Outcome::Changed(change),
            Ok(None) => Outcome::Unchanged,
            Err(r) => Outcome::Refused(r),
        }
    }

    /// Applies `op` to room `room_id` of a hub without a cluster (the state locked), tells the
    /// members, and queues a member gone offline for the sweep.
    fn apply_here(
        &self,
        state: &mut State,
        room_id: &str,
        op: &Op,
    ) -> Result<Option<Change>, Refusal> {
        let old = state.rooms.get(room_id).cloned();
        let mut room = old.clone();
        let live = Live::alone(self.node_id());
        let change = room::apply(&mut room, op, &live, self.room_clock())?;
        if let Some(change) = &change {
            if let (Op::Offline { user, .. }, Some(_)) = (op, &room) {
                let since = Instant::now();
                state
                    .offline
                    .push_back((since, room_id.to_owned(), user.clone()));
            }
            self.settle(
                state,
                room_id,
                old.as_ref(),
                room,
                (change.event, &change.by),
            );
        }
        Ok(change)
    }

    /// A room changed from `old` to `new` (`None`: no room): this node's connections the change
    /// took out of it forget it, and this node's members get the new state.
    fn settle(
        &self,
        state: &mut State,
        room_id: &str,
        old: Option<&Room>,
        new: Option<Room>,
        (event, by): (&str, &str),
    ) {
        let own = self.node_id();
        for (user, c) in old.into_iter().flat_map(|r| r.members_on(own)) {
            let stays = new.as_ref().is_some_and(|n| {
                n.is_at(
                    user,
                    &At {
                        node: own.to_owned(),
                        conn: c,
                    },
                )
            });
            if !stays
                && let Some(conn) = state.conns.get_mut(&c)
                && conn.rooms.get(room_id).is_some_and(|u| u == user)
            {
                conn.rooms.remove(room_id);
            }
        }
        match new {
            Some(room) => {
                let text = room.text(room_id, event, by, self.room_clock());
                let targets: Vec<ConnId> = room.conns_on(own).collect();
                // A clustered node keeps the rooms its members are in (for its sweep).
                let keep = self.cluster.is_none() || !targets.is_empty();
                for target in targets {
                    self.send(state, target, text.clone());
                }
                if keep {
                    state.rooms.insert(room_id.to_owned(), room);
                } else {
                    state.rooms.remove(room_id);
                }
            }
            None => {
                state.rooms.remove(room_id);
            }
        }
        self.metrics.rooms.set(state.rooms.len() as i64);
    }

    /// A room's new state from the cluster (any node's change, this one's included).
    pub(crate) fn deliver_room(&self, b: cluster::RoomBroadcast) {
        let mut state = self.lock();
        let old = state.rooms.remove(&b.room);
        let mine = |r: &Room| r.conns_on(self.node_id()).next().is_some();
        if old.is_none() && !b.state.as_ref().is_some_and(mine) {
            return;
        }
        self.settle(
            &mut state,
            &b.room,
            old.as_ref(),
            b.state,
            (&b.event, &b.by),
        );
    }

    /// `conn` closed: what its room memberships need (offline, for `room_grace`). Without a
    /// cluster that is done here and nothing is left; with one, the ops to run there.
    pub(super) fn rooms_closed(
        &self,
        state: &mut State,
        conn: ConnId,
        rooms: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, Op)> {
        let mut left = Vec::new();
        for (room_id, user) in rooms {
            let op = Op::Offline {
                user,
                at: self.at(conn),
            };
            if self.cluster.is_some() {
                left.push((room_id, op));
                continue;
            }
            // The state is locked already: the local op inline.
            let _ = self.apply_here(state, &room_id, &op);
        }
        left
    }

    /// Members offline for longer than `room_grace` leave (a host hands over, an empty room
    /// goes): the queue of members gone offline, in time order, is read up to `now`.
    pub(super) fn expire_members(&self, state: &mut State, now: Instant) {
        let grace = self.cfg.room_grace;
        let op = Op::Expire {
            grace: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        };
        while let Some((since, _, _)) = state.offline.front() {
            if now.saturating_duration_since(*since) < grace {
                break;
            }
            let Some((_, room_id, _)) = state.offline.pop_front() else {
                break;
            };
            let _ = self.apply_here(state, &room_id, &op);
        }
    }

    /// The cluster's upkeep of this node's rooms (every keep-alive): their keys' TTLs renewed
    /// while this node has members in them, and a sweep of those with members offline or on
    /// other nodes (dead nodes' members go offline, the grace of offline ones ends).
    pub(crate) async fn room_upkeep(&self, cluster: &cluster::Cluster) {
        let own = self.node_id().to_owned();
        let (touch, sweep) = {
            let state = self.lock();
            let mut touch = Vec::new();
            let mut sweep = Vec::new();
            for (id, room) in &state.rooms {
                let users: Vec<String> = room.members_on(&own).map(|(u, _)| u.to_owned()).collect();
                let closed = room
                    .members_on(&own)
                    .any(|(_, c)| !state.conns.contains_key(&c));
                if closed || room.needs_sweep(&own) {
                    sweep.push(id.clone());
                }
                touch.push((id.clone(), users));
            }
            (touch, sweep)
        };
        cluster.touch_rooms(&touch, self.cfg.room_grace).await;
        let grace = u64::try_from(self.cfg.room_grace.as_millis()).unwrap_or(u64::MAX);
        for id in sweep {
            self.room_op(None, &id, Op::Expire { grace }, "sweep").await;
        }
    }
}
