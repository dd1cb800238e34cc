//! A watch room's state and the rules that change it, once for both homes of a room: this
//! process's memory (no cluster) and Redis (the cluster, read, changed here and written back
//! only if nobody wrote in between). Pure: times are passed in (ms since the Unix epoch), and
//! which nodes are alive is a [`Live`].

use crate::tracker::ConnId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

use super::wire;

/// Where a member is connected: a node and one of its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct At {
    #[serde(rename = "n")]
    pub node: String,
    #[serde(rename = "c")]
    pub conn: ConnId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Member {
    #[serde(rename = "u")]
    pub user: String,
    /// Joined with a token whose `sub` is `user` (else a client-chosen id): the two never match
    /// each other.
    #[serde(rename = "a")]
    pub authenticated: bool,
    /// Its connection; `None` while offline (within its grace).
    #[serde(rename = "at", default, skip_serializing_if = "Option::is_none")]
    pub at: Option<At>,
    /// Offline since (ms).
    #[serde(rename = "off", default, skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<u64>,
}

/// One room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Room {
    pub host: String,
    pub url: String,
    /// The position (s) at `at` (ms); it advances from there while `playing`.
    pub position: f64,
    pub at: u64,
    pub playing: bool,
    /// In join order (the host hands over to the earliest).
    pub members: Vec<Member>,
    /// Changes written so far (the cluster's compare-and-set; 0: never written).
    #[serde(default)]
    pub version: u64,
}

/// What changed, for the `room-state` every member gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub event: &'static str,
    pub by: String,
}

/// Why a change is refused (an `error` to the sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: &'static str,
    pub message: &'static str,
}

const fn refuse(code: &'static str, message: &'static str) -> Refusal {
    Refusal { code, message }
}

/// Which nodes are alive, as far as a change needs to know.
pub(crate) struct Live<'a> {
    /// This node (always alive).
    pub own: String,
    /// Node → its last keep-alive (ms); nodes absent from it are taken as alive until seen.
    pub seen: HashMap<String, u64>,
    /// A node seen before this (ms) is dead.
    pub min_alive: u64,
    /// This node's connections that are open (for members this node placed).
    pub open: Option<&'a (dyn Fn(ConnId) -> bool + Sync)>,
}

impl Live<'_> {
    /// A single node: every member is this node's.
    pub(crate) fn alone(own: &str) -> Self {
        Self {
            own: own.to_owned(),
            seen: HashMap::new(),
            min_alive: 0,
            open: None,
        }
    }

    /// Since when the member at `at` has been gone (its node dead, or its connection on this
    /// node closed); `None` while it is there.
    fn gone_since(&self, at: &At, now: u64) -> Option<u64> {
        if at.node == self.own {
            return match &self.open {
                Some(open) if !open(at.conn) => Some(now),
                _ => None,
            };
        }
        match self.seen.get(&at.node) {
            Some(&t) if t < self.min_alive => Some(t),
            _ => None,
        }
    }
}

/// A change asked for by `user` (or by the sweep).
pub(crate) enum Op {
    Join {
        user: String,
        authenticated: bool,
        at: At,
        url: Option<String>,
        max_members: usize,
    },
    /// `leave-room` from the member's connection `at`.
    Leave { user: String, at: At },
    /// The member's connection `at` closed.
    Offline { user: String, at: At },
    /// `play`, `pause`, `seek`, `set-url` from the member's connection `at`.
    Control {
        kind: &'static str,
        user: String,
        at: At,
        position: Option<f64>,
        url: Option<String>,
    },
    /// Members whose node died go offline; members offline for longer than `grace` (ms) leave.
    Expire { grace: u64 },
}

impl Room {
    pub(crate) fn current_time(&self, now: u64) -> f64 {
        if self.playing {
            let t = self.position + now.saturating_sub(self.at) as f64 / 1000.0;
            t.min(1e7)
        } else {
            self.position
        }
    }

    fn member(&self, user: &str) -> Option<usize> {
        self.members.iter().position(|m| m.user == user)
    }

    /// Whether `user` is in the room through `at`.
    pub(crate) fn is_at(&self, user: &str, at: &At) -> bool {
        self.member(user)
            .is_some_and(|i| self.members[i].at.as_ref() == Some(at))
    }

    /// The member the host role goes to when the host leaves: the earliest online one, else the
    /// earliest.
    fn successor(&self) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.at.is_some())
            .or(self.members.first())
            .map(|m| m.user.as_str())
    }

    /// Connections of node `node` in the room (the members it sends the state to).
    pub(crate) fn conns_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = ConnId> + 'a {
        self.members
            .iter()
            .filter_map(move |m| m.at.as_ref().filter(|at| at.node == node).map(|at| at.conn))
    }

    /// The (user, connection) pairs of node `node`.
    pub(crate) fn members_on<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a str, ConnId)> + 'a {
        self.members.iter().filter_map(move |m| {
            m.at.as_ref()
                .filter(|at| at.node == node)
                .map(|at| (m.user.as_str(), at.conn))
        })
    }

    /// Whether a sweep could change something: a member offline or on another node.
    pub(crate) fn needs_sweep(&self, own: &str) -> bool {
        self.members
            .iter()
            .any(|m| m.at.as_ref().is_none_or(|at| at.node != own))
    }

    /// The `room-state` message of this state.
    pub(crate) fn text(&self, room_id: &str, event: &str, by: &str, now: u64) -> Arc<str> {
        wire::to_text(&wire::RoomState {
            kind: "room-state",
            room_id,
            host_user_id: &self.host,
            current_url: &self.url,
            current_time: self.current_time(now),
            is_playing: self.playing,
            server_time: now,
            event,
            by,
            members: self
                .members
                .iter()
                .map(|m| wire::Member {
                    user_id: &m.user,
                    online: m.at.is_some(),
                })
                .collect(),
        })
    }

    /// `user` leaves: a host hands over; false when the room is empty now.
    fn remove(&mut self, i: usize) -> bool {
        let gone = self.members.remove(i);
        if self.members.is_empty() {
            return false;
        }
        if self.host == gone.user
            && let Some(next) = self.successor()
        {
            self.host = next.to_owned();
        }
        true
    }
}

/// Applies `op` to `room` (`None`: no such room; left `None` when the room is gone). `Ok(None)`:
/// nothing changed, nothing to write or tell.
pub(crate) fn apply(
    room: &mut Option<Room>,
    op: &Op,
    live: &Live<'_>,
    now: u64,
) -> Result<Option<Change>, Refusal> {
    match op {
        Op::Join {
            user,
            authenticated,
            at,
            url,
            max_members,
        } => join(
            room,
            user,
            *authenticated,
            at,
            url.as_deref(),
            *max_members,
            live,
            now,
        ),
        Op::Leave { user, at } => {
            let Some((r, i)) = member_at(room, user, at) else {
                return Ok(None);
            };
            if !r.remove(i) {
                *room = None;
            }
            Ok(Some(Change {
                event: "leave",
                by: user.clone(),
            }))
        }
        Op::Offline { user, at } => {
            let Some((r, i)) = member_at(room, user, at) else {
                return Ok(None);
            };
            r.members[i].at = None;
            r.members[i].offline_since = Some(now);
            Ok(Some(Change {
                event: "offline",
                by: user.clone(),
            }))
        }
        Op::Control {
            kind,
            user,
            at,
            position,
            url,
        } => {
            let Some(r) = room.as_mut().filter(|r| r.is_at(user, at)) else {
                return Err(refuse("not_in_room", "join the room first"));
            };
            if r.host != *user {
                return Err(refuse("not_host", "only the host controls playback"));
            }
            control(r, kind, *position, url.as_deref(), now)?;
            Ok(Some(Change {
                event: kind,
                by: user.clone(),
            }))
        }
        Op::Expire { grace } => Ok(expire(room, *grace, live, now)),
    }
}

/// The room and the index of member `user` if it is in it through `at`.
fn member_at<'a>(room: &'a mut Option<Room>, user: &str, at: &At) -> Option<(&'a mut Room, usize)> {
    let r = room.as_mut()?;
    let i = r
        .member(user)
        .filter(|&i| r.members[i].at.as_ref() == Some(at))?;
    Some((r, i))
}

#[expect(clippy::too_many_arguments, reason = "the fields of Op::Join")]
fn join(
    room: &mut Option<Room>,
    user: &str,
    authenticated: bool,
    at: &At,
    url: Option<&str>,
    max_members: usize,
    live: &Live<'_>,
    now: u64,
) -> Result<Option<Change>, Refusal> {
    let member = Member {
        user: user.to_owned(),
        authenticated,
        at: Some(at.clone()),
        offline_since: None,
    };
    let change = |event| {
        Ok(Some(Change {
            event,
            by: user.to_owned(),
        }))
    };
    let Some(r) = room.as_mut() else {
        *room = Some(Room {
            host: user.to_owned(),
            url: url.unwrap_or_default().to_owned(),
            position: 0.0,
            at: now,
            playing: false,
            members: vec![member],
            version: 0,
        });
        return change("join");
    };
    let Some(i) = r.member(user) else {
        if r.members.len() >= max_members {
            return Err(refuse("room_full", "the room is full"));
        }
        r.members.push(member);
        return change("join");
    };
    let m = &mut r.members[i];
    if m.authenticated != authenticated {
        // A token's subject and a client-chosen id are different people.
        return Err(refuse(
            "user_in_room",
            "this userId belongs to another kind of member",
        ));
    }
    let connected =
        m.at.as_ref()
            .is_some_and(|a| live.gone_since(a, now).is_none());
    // The same connection joining again (its first join committed, but its answer was lost) is
    // that member, not someone claiming its id.
    let same_connection = m.at.as_ref() == Some(at);
    if connected && !authenticated && !same_connection {
        // Anyone can send a userId; only a token proves it.
        return Err(refuse("user_in_room", "this userId is connected"));
    }
    m.at = Some(at.clone());
    m.offline_since = None;
    change("rejoin")
}

fn control(
    r: &mut Room,
    kind: &str,
    position: Option<f64>,
    url: Option<&str>,
    now: u64,
) -> Result<(), Refusal> {
    if position.is_some_and(|p| !wire::valid_position(p)) {
        return Err(refuse(
            "invalid_position",
            "position: seconds from 0 to 1e7",
        ));
    }
    match kind {
        "play" | "pause" => {
            r.position = position.unwrap_or_else(|| r.current_time(now));
            r.playing = kind == "play";
        }
        "seek" => {
            let Some(p) = position else {
                return Err(refuse("invalid_position", "seek needs a position"));
            };
            r.position = p;
        }
        _ => {
            let Some(url) = url.filter(|u| wire::valid_url(u)) else {
                return Err(refuse("invalid_url", "bad url"));
            };
            r.url = url.to_owned();
            r.position = 0.0;
            r.playing = false;
        }
    }
    r.at = now;
    Ok(())
}

fn expire(room: &mut Option<Room>, grace: u64, live: &Live<'_>, now: u64) -> Option<Change> {
    let r = room.as_mut()?;
    let mut change = None;
    for m in &mut r.members {
        if let Some(since) = m.at.as_ref().and_then(|at| live.gone_since(at, now)) {
            m.at = None;
            m.offline_since = Some(since);
            change = Some(Change {
                event: "offline",
                by: m.user.clone(),
            });
        }
    }
    while let Some(i) = r.members.iter().position(|m| {
        m.offline_since
            .is_some_and(|t| now.saturating_sub(t) >= grace)
    }) {
        let user = r.members[i].user.clone();
        change = Some(Change {
            event: "leave",
            by: user,
        });
        if !r.remove(i) {
            *room = None;
            return change;
        }
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: &str, conn: ConnId) -> At {
        At {
            node: node.into(),
            conn,
        }
    }

    fn join(room: &mut Option<Room>, user: &str, at: At, live: &Live<'_>, now: u64) {
        let op = Op::Join {
            user: user.into(),
            authenticated: false,
            at,
            url: None,
            max_members: 10,
        };
        apply(room, &op, live, now).unwrap();
    }

    #[test]
    fn members_of_a_dead_node_go_offline_from_its_last_keep_alive_and_leave_after_the_grace() {
        let mut live = Live::alone("b");
        live.seen = HashMap::from([("a".into(), 1_000), ("b".into(), 1_000)]);
        let mut room = None;
        join(&mut room, "host", at("a", 1), &live, 1_000);
        join(&mut room, "guest", at("b", 7), &live, 1_000);
        // Node A is alive: nothing to sweep, and its member cannot be taken over by id alone.
        let expire = Op::Expire { grace: 30_000 };
        assert_eq!(apply(&mut room, &expire, &live, 2_000), Ok(None));
        let taking = Op::Join {
            user: "host".into(),
            authenticated: false,
            at: at("b", 9),
            url: None,
            max_members: 10,
        };
        let refused = apply(&mut room, &taking, &live, 2_000).unwrap_err();
        assert_eq!(refused.code, "user_in_room");
        // A's last keep-alive was at 1 000 and it is dead at 20 000: its member has been
        // offline since 1 000, keeps the host role for the grace, and then hands it over.
        live.min_alive = 5_000;
        let change = apply(&mut room, &expire, &live, 20_000).unwrap().unwrap();
        assert_eq!(change.event, "offline");
        let r = room.as_ref().unwrap();
        assert_eq!(
            (r.host.as_str(), r.members[0].offline_since),
            ("host", Some(1_000))
        );
        let change = apply(&mut room, &expire, &live, 31_000).unwrap().unwrap();
        assert_eq!((change.event, change.by.as_str()), ("leave", "host"));
        assert_eq!(room.as_ref().unwrap().host, "guest");
        // The last member's connection on this node closed without word (Redis was away):
        // the sweep takes it offline, and after the grace the room is gone.
        let closed = |_: ConnId| false;
        live.open = Some(&closed);
        assert_eq!(
            apply(&mut room, &expire, &live, 40_000)
                .unwrap()
                .unwrap()
                .event,
            "offline"
        );
        assert_eq!(
            apply(&mut room, &expire, &live, 70_000)
                .unwrap()
                .unwrap()
                .event,
            "leave"
        );
        assert!(room.is_none());
    }

    /// A join whose answer was lost (the store answered too late) is sent again by the same
    /// connection: it is that member rejoining, not someone claiming its id.
    #[test]
    fn the_same_connection_joining_again_is_a_rejoin() {
        let live = Live::alone("a");
        let mut room = None;
        join(&mut room, "anon", at("a", 1), &live, 0);
        let again = Op::Join {
            user: "anon".into(),
            authenticated: false,
            at: at("a", 1),
            url: None,
            max_members: 10,
        };
        let change = apply(&mut room, &again, &live, 0).unwrap().unwrap();
        assert_eq!(change.event, "rejoin");
        let other = Op::Join {
            user: "anon".into(),
            authenticated: false,
            at: at("a", 2),
            url: None,
            max_members: 10,
        };
        assert_eq!(
            apply(&mut room, &other, &live, 0).unwrap_err().code,
            "user_in_room"
        );
    }

    #[test]
    fn a_stale_connection_changes_nothing() {
        let live = Live::alone("a");
        let mut room = None;
        join(&mut room, "host", at("a", 1), &live, 0);
        let control = |conn| Op::Control {
            kind: "pause",
            user: "host".into(),
            at: at("a", conn),
            position: Some(3.0),
            url: None,
        };
        // The member moved to connection 2: connection 1 neither controls, leaves nor closes it.
        let op = Op::Join {
            user: "host".into(),
            authenticated: true,
            at: at("a", 2),
            url: None,
            max_members: 10,
        };
        assert_eq!(
            apply(&mut room, &op, &live, 0).unwrap_err().code,
            "user_in_room"
        );
        room.as_mut().unwrap().members[0].at = Some(at("a", 2));
        assert_eq!(
            apply(&mut room, &control(1), &live, 0).unwrap_err().code,
            "not_in_room"
        );
        let leave = Op::Leave {
            user: "host".into(),
            at: at("a", 1),
        };
        let offline = Op::Offline {
            user: "host".into(),
            at: at("a", 1),
        };
        assert_eq!(apply(&mut room, &leave, &live, 0), Ok(None));
        assert_eq!(apply(&mut room, &offline, &live, 0), Ok(None));
        assert!(apply(&mut room, &control(2), &live, 0).unwrap().is_some());
        assert_eq!(room.unwrap().position, 3.0);
    }
}
