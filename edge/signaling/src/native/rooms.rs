//! Watch rooms: members watch one URL together; the host's play/pause/seek/set-url change the
//! room's state, which the server keeps and sends to every online member with its time.

use super::{ConnId, Hub, State, server_time, wire};
use tokio::time::Instant;

/// One room.
pub(super) struct Room {
    host: String,
    url: String,
    /// The position at `at`; it advances from there while `playing`.
    position: f64,
    at: Instant,
    playing: bool,
    /// In join order (the host hands over to the earliest).
    members: Vec<Member>,
}

struct Member {
    user: String,
    /// Joined with a token whose `sub` is `user` (else a client-chosen id): the two never match
    /// each other.
    authenticated: bool,
    /// The connection it is in the room through; `None` while offline (within its grace).
    conn: Option<ConnId>,
    offline_since: Option<Instant>,
}

impl Room {
    fn current_time(&self, now: Instant) -> f64 {
        if self.playing {
            let t = self.position + now.saturating_duration_since(self.at).as_secs_f64();
            t.min(1e7)
        } else {
            self.position
        }
    }

    fn member(&self, user: &str) -> Option<usize> {
        self.members.iter().position(|m| m.user == user)
    }

    /// The member the host role goes to when the host leaves: the earliest online one, else the
    /// earliest.
    fn successor(&self) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.conn.is_some())
            .or(self.members.first())
            .map(|m| m.user.as_str())
    }
}

impl Hub {
    /// A room message; false when `kind` is not one.
    pub(super) fn room_message(&self, conn: ConnId, kind: &str, text: &str) -> bool {
        match kind {
            "join-room" => {
                if let Some(m) = self.parse::<wire::JoinRoom>(conn, kind, text) {
                    self.join_room(conn, m);
                }
            }
            "leave-room" | "sync" => {
                if let Some(m) = self.parse::<wire::RoomOnly>(conn, kind, text) {
                    let mut state = self.lock();
                    let Some(user) = self.member_as(&mut state, conn, &m.room_id, kind) else {
                        return true;
                    };
                    if kind == "sync" {
                        self.room_state(&mut state, &m.room_id, "sync", &user, Some(conn));
                    } else {
                        if let Some(c) = state.conns.get_mut(&conn) {
                            c.rooms.remove(&m.room_id);
                        }
                        self.remove_member(&mut state, &m.room_id, &user, "leave");
                    }
                }
            }
            "play" | "pause" | "seek" | "set-url" => {
                if let Some(m) = self.parse::<wire::Control>(conn, kind, text) {
                    self.control(conn, kind, m);
                }
            }
            _ => return false,
        }
        true
    }

    /// The user id `conn` is in `room` as, or an error to it (`not_in_room`).
    fn member_as(&self, state: &mut State, conn: ConnId, room: &str, kind: &str) -> Option<String> {
        let user = state.conns.get(&conn)?.rooms.get(room).cloned();
        if user.is_none() {
            self.refuse(
                state,
                conn,
                "not_in_room",
                "join the room first",
                Some(kind),
            );
        }
        user
    }

    fn join_room(&self, conn: ConnId, m: wire::JoinRoom) {
        let mut state = self.lock();
        let about = Some("join-room");
        if !wire::valid_id(&m.room_id) {
            return self.refuse(&mut state, conn, "invalid_room_id", "bad roomId", about);
        }
        if m.url.as_deref().is_some_and(|u| !wire::valid_url(u)) {
            return self.refuse(&mut state, conn, "invalid_url", "bad url", about);
        }
        let Some(c) = state.conns.get(&conn) else {
            return;
        };
        // The JWT's subject is who the viewer is; a message cannot claim someone else.
        let authenticated = c.sub.is_some();
        let user = match (&c.sub, m.user_id) {
            (Some(sub), Some(claimed)) if claimed != *sub => {
                let why = "userId differs from the token's subject";
                return self.refuse(&mut state, conn, "user_mismatch", why, about);
            }
            (Some(sub), _) => sub.clone(),
            (None, Some(user)) if wire::valid_id(&user) => user,
            (None, Some(_)) => {
                return self.refuse(&mut state, conn, "invalid_user_id", "bad userId", about);
            }
            (None, None) => {
                let why = "a userId is needed without a token subject";
                return self.refuse(&mut state, conn, "invalid_user_id", why, about);
            }
        };
        match c.rooms.get(&m.room_id) {
            Some(u) if *u == user => {
                return self.room_state(&mut state, &m.room_id, "sync", &user, Some(conn));
            }
            Some(_) => {
                let why = "this connection is in the room as another user";
                return self.refuse(&mut state, conn, "already_in_room", why, about);
            }
            None if c.memberships() >= self.cfg.max_per_connection => {
                let why = "too many streams and rooms on this connection";
                return self.refuse(&mut state, conn, "connection_full", why, about);
            }
            None => {}
        }
        let now = Instant::now();
        let event = match state.rooms.get_mut(&m.room_id) {
            None => {
                if state.rooms.len() >= self.cfg.max_rooms {
                    return self.refuse(&mut state, conn, "too_many_rooms", "", about);
                }
                let room = Room {
                    host: user.clone(),
                    url: m.url.unwrap_or_default(),
                    position: 0.0,
                    at: now,
                    playing: false,
                    members: vec![Member {
                        user: user.clone(),
                        authenticated,
                        conn: Some(conn),
                        offline_since: None,
                    }],
                };
                state.rooms.insert(m.room_id.clone(), room);
                self.metrics.rooms.set(state.rooms.len() as i64);
                "join"
            }
            Some(room) => match room.member(&user) {
                Some(i) => {
                    let member = &mut room.members[i];
                    let previous = member.conn;
                    if member.authenticated != authenticated {
                        // A token's subject and a client-chosen id are different people.
                        let why = "this userId belongs to another kind of member";
                        return self.refuse(&mut state, conn, "user_in_room", why, about);
                    }
                    if previous.is_some() && !authenticated {
                        // Anyone can send a userId; only a token proves it.
                        let why = "this userId is connected";
                        return self.refuse(&mut state, conn, "user_in_room", why, about);
                    }
                    member.conn = Some(conn);
                    member.offline_since = None;
                    // The same viewer on a new connection: the old one is no longer in the room.
                    if let Some(old) = previous.and_then(|p| state.conns.get_mut(&p)) {
                        old.rooms.remove(&m.room_id);
                    }
                    "rejoin"
                }
                None if room.members.len() >= self.cfg.max_room_members => {
                    return self.refuse(&mut state, conn, "room_full", "the room is full", about);
                }
                None => {
                    room.members.push(Member {
                        user: user.clone(),
                        authenticated,
                        conn: Some(conn),
                        offline_since: None,
                    });
                    "join"
                }
            },
        };
        if let Some(c) = state.conns.get_mut(&conn) {
            c.rooms.insert(m.room_id.clone(), user.clone());
        }
        self.room_state(&mut state, &m.room_id, event, &user, None);
    }

    fn control(&self, conn: ConnId, kind: &str, m: wire::Control) {
        let mut state = self.lock();
        let about = Some(kind);
        let Some(user) = self.member_as(&mut state, conn, &m.room_id, kind) else {
            return;
        };
        let Some(room) = state.rooms.get_mut(&m.room_id) else {
            return;
        };
        if room.host != user {
            let why = "only the host controls playback";
            return self.refuse(&mut state, conn, "not_host", why, about);
        }
        if m.position.is_some_and(|p| !wire::valid_position(p)) {
            let why = "position: seconds from 0 to 1e7";
            return self.refuse(&mut state, conn, "invalid_position", why, about);
        }
        let now = Instant::now();
        match kind {
            "play" | "pause" => {
                room.position = m.position.unwrap_or_else(|| room.current_time(now));
                room.playing = kind == "play";
            }
            "seek" => {
                let Some(p) = m.position else {
                    let why = "seek needs a position";
                    return self.refuse(&mut state, conn, "invalid_position", why, about);
                };
                room.position = p;
            }
            _ => {
                let Some(url) = m.url.filter(|u| wire::valid_url(u)) else {
                    return self.refuse(&mut state, conn, "invalid_url", "bad url", about);
                };
                room.url = url;
                room.position = 0.0;
                room.playing = false;
            }
        }
        room.at = now;
        self.room_state(&mut state, &m.room_id, kind, &user, None);
    }

    /// Sends the room's state to `only`, else to every online member.
    fn room_state(
        &self,
        state: &mut State,
        room_id: &str,
        event: &str,
        by: &str,
        only: Option<ConnId>,
    ) {
        let Some(room) = state.rooms.get(room_id) else {
            return;
        };
        let text = wire::to_text(&wire::RoomState {
            kind: "room-state",
            room_id,
            host_user_id: &room.host,
            current_url: &room.url,
            current_time: room.current_time(Instant::now()),
            is_playing: room.playing,
            server_time: server_time(),
            event,
            by,
            members: room
                .members
                .iter()
                .map(|m| wire::Member {
                    user_id: &m.user,
                    online: m.conn.is_some(),
                })
                .collect(),
        });
        let targets: Vec<ConnId> = match only {
            Some(conn) => vec![conn],
            None => room.members.iter().filter_map(|m| m.conn).collect(),
        };
        for target in targets {
            self.send(state, target, text.clone());
        }
    }

    /// `conn` closed: its membership of `room` goes offline for `room_grace`.
    pub(super) fn go_offline(
        &self,
        state: &mut State,
        room_id: &str,
        user: &str,
        conn: ConnId,
        now: Instant,
    ) {
        let Some(room) = state.rooms.get_mut(room_id) else {
            return;
        };
        let Some(i) = room.member(user) else {
            return;
        };
        if room.members[i].conn != Some(conn) {
            return;
        }
        room.members[i].conn = None;
        room.members[i].offline_since = Some(now);
        state
            .offline
            .push_back((now, room_id.to_owned(), user.to_owned()));
        self.room_state(state, room_id, "offline", user, None);
    }

    /// Members offline for longer than `room_grace` leave: the queue of members gone offline,
    /// in time order, is read up to `now` (entries of members back online since are skipped).
    pub(super) fn expire_members(&self, state: &mut State, now: Instant) {
        let grace = self.cfg.room_grace;
        while let Some((since, _, _)) = state.offline.front() {
            if now.saturating_duration_since(*since) < grace {
                break;
            }
            let Some((since, room, user)) = state.offline.pop_front() else {
                break;
            };
            let still = state.rooms.get(&room).and_then(|r| {
                let m = &r.members[r.member(&user)?];
                Some(m.offline_since == Some(since))
            });
            if still == Some(true) {
                self.remove_member(state, &room, &user, "leave");
            }
        }
    }

    /// `user` leaves `room_id`: a host hands over, an empty room goes, the others are told.
    fn remove_member(&self, state: &mut State, room_id: &str, user: &str, event: &str) {
        let Some(room) = state.rooms.get_mut(room_id) else {
            return;
        };
        let Some(i) = room.member(user) else {
            return;
        };
        room.members.remove(i);
        if room.members.is_empty() {
            state.rooms.remove(room_id);
            self.metrics.rooms.set(state.rooms.len() as i64);
            return;
        }
        if room.host == user
            && let Some(next) = room.successor()
        {
            room.host = next.to_owned();
        }
        self.room_state(state, room_id, event, user, None);
    }
}
