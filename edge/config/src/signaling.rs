//! `[signaling]`: the signaling role's WebTorrent tracker and native signaling protocol.

use crate::{EdgeConfig, Role};
use bytesize::ByteSize;
use serde::Deserialize;
use std::{net::SocketAddr, time::Duration};

/// `[signaling]`: the signaling role's endpoints on the viewer listeners: the WebTorrent tracker
/// and the native protocol (swarms per stream, watch rooms).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SignalingConfig {
    /// Where players open the tracker WebSocket (`ws[s]://<edge><path>`); it goes through the
    /// policy chain of the route matching it (a JWT in `access_token`). Default `/ws/tracker`.
    pub tracker_path: String,
    /// Where clients of the native protocol connect. Default `/ws/signaling`.
    pub path: String,
    /// An echo endpoint on the same WebSocket layer as the two protocols (handshake, limits,
    /// pings, close codes): every message comes back as sent. For WebSocket conformance suites
    /// (Autobahn's fuzzing client) and load generators, behind its route's policy chain like
    /// the others. Default: none (off).
    pub echo_path: Option<String>,
    /// Listeners of their own for the signaling endpoints (`["0.0.0.0:4001"]`, env
    /// `SIGNALING_LISTEN`), besides the viewer listeners: they serve only the endpoints and
    /// `/health`, through the same routes and policies, with no per-connection write buffer
    /// (an idle WebSocket there holds a fraction of what one on a viewer listener does). Port 0
    /// works; the log prints the bound address. Default: none.
    pub listen: Vec<SocketAddr>,
    /// The same with TLS (the `[server]` certificate), env `SIGNALING_TLS_LISTEN`. Default: none.
    pub tls_listen: Vec<SocketAddr>,
    /// This node's id in the cluster and in `/health` (`nodeId`). Env `NODE_ID`. Default: the
    /// host name and a random suffix, new at every start.
    pub node_id: Option<String>,
    /// Offered WebSocket subprotocols starting with this carry the viewer's JWT (browsers cannot
    /// set headers: `new WebSocket(url, ["signaling", "access_token." + jwt])`): a handshake
    /// offering nothing else is refused (400). The auth policy's `subprotocol_prefix` is what
    /// reads the token; a token is never echoed whatever its prefix (it is not one of
    /// `subprotocols`). Default `access_token.`.
    pub token_protocol_prefix: String,
    /// The subprotocols the endpoints speak: the first of them a client offers is answered in
    /// `Sec-WebSocket-Protocol`; other offers are not (RFC 6455 4.2.2). Default `["signaling"]`.
    pub subprotocols: Vec<String>,
    /// Peers in one `peer-list` of the native protocol. Default 50.
    pub max_peer_list: usize,
    /// Watch rooms held. Default 100000.
    pub max_rooms: usize,
    /// Members per room. Default 100.
    pub max_room_members: usize,
    /// How long a room member whose connection closed keeps its place (and a host its role);
    /// a room whose members are all gone that long is dropped. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub room_grace: Duration,
    /// `Origin` values allowed to connect (`https://player.example.com`); `*` allows any. A
    /// request without `Origin` (not a browser) is allowed. Default `["*"]`.
    pub allowed_origins: Vec<String>,
    /// The announce interval told to clients. Default `120s` (the `bittorrent-tracker` server's).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Peers an announce's offers go to at most. Default 82.
    pub max_offers: usize,
    /// Peers per swarm (more are refused with `swarm full`). Default 1000.
    pub max_swarm_peers: usize,
    /// Swarms held. Default 100000.
    pub max_swarms: usize,
    /// Largest message a client may send. Default `64 KiB`.
    pub max_message: ByteSize,
    /// Messages per second per connection. Default 50.
    pub messages_per_second: u32,
    /// A ping after this long without a frame; two unanswered in a row close the connection.
    /// Default `30s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// With `[kafka]`: the consumer group reading the streams' event topics
    /// (`<kafka.topic_prefix>.<stream id>.events`), whose events go to the stream's peers on
    /// every node. One group for the cluster: each event is read by one node, which fans it out.
    /// Env `KAFKA_CONSUMER_GROUP`. Default `edge-signaling`; empty: no consumer.
    pub kafka_consumer_group: String,
    /// How often the peers that joined and left each stream are recorded (`signaling.peers`
    /// events, with `events.analytics`). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub peer_counts_interval: Duration,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            tracker_path: "/ws/tracker".into(),
            path: "/ws/signaling".into(),
            echo_path: None,
            listen: Vec::new(),
            tls_listen: Vec::new(),
            node_id: None,
            token_protocol_prefix: "access_token.".into(),
            subprotocols: vec!["signaling".into()],
            max_peer_list: 50,
            max_rooms: 100_000,
            max_room_members: 100,
            room_grace: Duration::from_secs(30),
            allowed_origins: vec!["*".into()],
            interval: Duration::from_secs(120),
            max_offers: 82,
            max_swarm_peers: 1000,
            max_swarms: 100_000,
            max_message: ByteSize::kib(64),
            messages_per_second: 50,
            ping_interval: Duration::from_secs(30),
            kafka_consumer_group: "edge-signaling".into(),
            peer_counts_interval: Duration::from_secs(10),
        }
    }
}

/// Checks `[signaling]` (and that the role has a listener).
pub(crate) fn validate(cfg: &EdgeConfig, bad: &mut dyn FnMut(&str, &str)) {
    let s = &cfg.signaling;
    let srv = &cfg.server;
    if cfg.roles.has(Role::Signaling)
        && !cfg.roles.has(Role::Edge)
        && [&srv.listen, &srv.tls_listen, &s.listen, &s.tls_listen]
            .iter()
            .all(|l| l.is_empty())
    {
        bad(
            "roles",
            "\"signaling\" without \"edge\" serves on `server.listen` / `server.tls_listen` and \
             `signaling.listen` / `signaling.tls_listen`: set one of them",
        );
    }
    let echo = s.echo_path.as_ref();
    for (field, path) in [
        ("signaling.tracker_path", Some(&s.tracker_path)),
        ("signaling.path", Some(&s.path)),
        ("signaling.echo_path", echo),
    ]
    .into_iter()
    .filter_map(|(f, p)| Some((f, p?)))
    {
        if !normalised_path(path) {
            bad(
                field,
                "must be an absolute, normalised path such as `/ws/tracker`",
            );
        }
    }
    if s.node_id
        .as_deref()
        .is_some_and(|n| n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()))
    {
        bad(
            "signaling.node_id",
            "must be 1 to 64 visible ASCII characters",
        );
    }
    if s.path == s.tracker_path {
        bad(
            "signaling.path",
            "must differ from `signaling.tracker_path`",
        );
    }
    if echo.is_some_and(|e| *e == s.path || *e == s.tracker_path) {
        bad(
            "signaling.echo_path",
            "must differ from `signaling.path` and `signaling.tracker_path`",
        );
    }
    if !is_token(&s.token_protocol_prefix) {
        bad(
            "signaling.token_protocol_prefix",
            "must be 1 to 64 characters a subprotocol may hold (letters, digits, `.-_~!#$%&'*+^|`)",
        );
    }
    if s.max_peer_list == 0 || s.max_peer_list > 1000 {
        bad("signaling.max_peer_list", "must be between 1 and 1000");
    }
    if s.kafka_consumer_group.len() > 255 || s.kafka_consumer_group.chars().any(char::is_control) {
        bad(
            "signaling.kafka_consumer_group",
            "must be at most 255 characters, none of them control characters",
        );
    }
    if s.peer_counts_interval < Duration::from_secs(1) {
        bad("signaling.peer_counts_interval", "must be at least 1s");
    }
    if s.max_rooms == 0 {
        bad("signaling.max_rooms", "must be at least 1");
    }
    if s.max_room_members < 2 || s.max_room_members > 10_000 {
        bad("signaling.max_room_members", "must be between 2 and 10000");
    }
    if s.room_grace < Duration::from_secs(1) || s.room_grace > Duration::from_secs(3600) {
        bad("signaling.room_grace", "must be between 1s and 1h");
    }
    if s.allowed_origins.is_empty() {
        bad(
            "signaling.allowed_origins",
            "must list at least one origin (or \"*\")",
        );
    }
    for origin in s.allowed_origins.iter().filter(|o| !origin_syntax(o)) {
        bad(
            "signaling.allowed_origins",
            &format!(
                "{origin:?} is not an origin: \"*\" or scheme://host[:port] \
                 (`https://player.example.com`, no path; compared without case or default port)"
            ),
        );
    }
    if s.subprotocols.is_empty() {
        bad(
            "signaling.subprotocols",
            "must list at least one (browsers offer one beside their token)",
        );
    }
    for (i, p) in s.subprotocols.iter().enumerate() {
        if !is_token(p)
            || p.starts_with(&s.token_protocol_prefix)
            || s.subprotocols[..i].contains(p)
        {
            bad(
                "signaling.subprotocols",
                &format!(
                    "{p:?}: each must be a distinct token (letters, digits, `.-_~!#$%&'*+^|`) \
                     not starting with `token_protocol_prefix`"
                ),
            );
        }
    }
    if s.interval < Duration::from_secs(10) || s.interval > Duration::from_secs(3600) {
        bad("signaling.interval", "must be between 10s and 1h");
    }
    if s.max_offers == 0 || s.max_offers > 1000 {
        bad("signaling.max_offers", "must be between 1 and 1000");
    }
    if s.max_swarm_peers == 0 {
        bad("signaling.max_swarm_peers", "must be at least 1");
    }
    if s.max_swarms == 0 {
        bad("signaling.max_swarms", "must be at least 1");
    }
    if s.max_message < ByteSize::kib(1) || s.max_message > ByteSize::mib(16) {
        bad("signaling.max_message", "must be between 1 KiB and 16 MiB");
    }
    if s.messages_per_second == 0 {
        bad("signaling.messages_per_second", "must be at least 1");
    }
    if s.ping_interval < Duration::from_secs(1) || s.ping_interval > Duration::from_secs(600) {
        bad("signaling.ping_interval", "must be between 1s and 10m");
    }
}

/// An absolute path without empty, `.` or `..` segments, of unreserved characters.
fn normalised_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && path.split('/').skip(1).all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        })
}

/// A subprotocol name or prefix: 1 to 64 characters of an HTTP token (RFC 9110 5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `*`, or an origin as browsers send it: `http(s)://host[:port]` (a trailing `/` tolerated),
/// no user, path or query.
fn origin_syntax(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let lower = origin.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    // An IPv6 host only in brackets (`http://[::1]:3000`); anything else has one `:` at most.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, "")) => (addr, None),
            Some((addr, port)) => match port.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let v6 = authority.starts_with('[');
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || (v6 && b == b':'));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}
