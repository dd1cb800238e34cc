//! The native protocol's messages: JSON text frames with a `type`, camelCase fields (the seeds'
//! `PeerListMessage` shape). What a client may send:
//!
//! | `type` | fields | answer |
//! |---|---|---|
//! | `join` | `streamId`, `peerId`, `rendition`? | `peer-list` |
//! | `peers` | `streamId`, `segment`? | `peer-list` (only peers that announced `segment`) |
//! | `have` | `streamId`, `segments` | — (kept per peer, most recent first) |
//! | `offer`, `answer`, `ice` | `streamId`, `to`, `sdp` / `candidate` | relayed with `from` |
//! | `leave` | `streamId` | — |
//! | `heartbeat` | — | `heartbeat` with `serverTime` |
//!
//! And from the server alone: `stream-event` {`streamId`, `event`}, an event of the stream read
//! from Kafka (`stream.<id>.events`: stream ended, rendition added, announcements), to every
//! peer of the stream on every node.
//! | `join-room` | `roomId`, `userId`?, `url`? | `room-state` to all members |
//! | `leave-room` | `roomId` | `room-state` to the others |
//! | `play`, `pause` | `roomId`, `position`? | `room-state` to all (host only) |
//! | `seek` | `roomId`, `position` | `room-state` to all (host only) |
//! | `set-url` | `roomId`, `url` | `room-state` to all (host only) |
//! | `sync` | `roomId` | `room-state` to the sender |
//!
//! Anything refused is answered with `{"type":"error","code":…,"message":…}` (and the `type`
//! and id it was about); the connection stays open.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// The `type` of an inbound message, read before the rest.
#[derive(Deserialize)]
pub(crate) struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Join {
    pub stream_id: String,
    pub peer_id: String,
    #[serde(default)]
    pub rendition: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Peers {
    pub stream_id: String,
    #[serde(default)]
    pub segment: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Have {
    pub stream_id: String,
    pub segments: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamOnly {
    pub stream_id: String,
}

/// `offer` / `answer` (with `sdp`) and `ice` (with `candidate`), relayed as sent.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Relay<'a> {
    pub stream_id: String,
    pub to: String,
    #[serde(borrow, default)]
    pub sdp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub candidate: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinRoom {
    pub room_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

/// `leave-room`, `sync`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RoomOnly {
    pub room_id: String,
}

/// `play`, `pause`, `seek`, `set-url`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Control {
    pub room_id: String,
    #[serde(default)]
    pub position: Option<f64>,
    #[serde(default)]
    pub url: Option<String>,
}

/// One peer of a `peer-list`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PeerEntry<'a> {
    pub peer_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendition: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PeerList<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub stream_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<&'a str>,
    pub peers: Vec<PeerEntry<'a>>,
}

/// A relayed `offer` / `answer` / `ice`: the sender's peer id in `from`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Relayed<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub stream_id: &'a str,
    pub from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdp: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<&'a RawValue>,
}

/// An event of the stream from Kafka (`stream.<id>.events`), to every peer of the stream.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub stream_id: &'a str,
    pub event: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Heartbeat {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub server_time: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Member<'a> {
    pub user_id: &'a str,
    pub online: bool,
}

/// A room's state as of `serverTime` (ms since the Unix epoch): `currentTime` is the position
/// then (it advances while `isPlaying`), so a client corrects its drift against it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RoomState<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room_id: &'a str,
    pub host_user_id: &'a str,
    pub current_url: &'a str,
    pub current_time: f64,
    pub is_playing: bool,
    pub server_time: u64,
    /// What changed: `join`, `rejoin`, `leave`, `host`, `play`, `pause`, `seek`, `set-url`,
    /// `sync`.
    pub event: &'a str,
    /// Who did it.
    pub by: &'a str,
    pub members: Vec<Member<'a>>,
}

#[derive(Serialize)]
pub(crate) struct Error<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'a str,
    pub message: &'a str,
    /// The `type` of the message refused, when it had one.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub about: Option<&'a str>,
}

pub(crate) fn to_text<T: Serialize>(message: &T) -> Arc<str> {
    serde_json::to_string(message)
        .expect("signaling messages serialise")
        .into()
}

/// A client-chosen id (`streamId`, `peerId`, `roomId`, `userId`, a rendition): 1 to 128 bytes,
/// no control characters, no `:` (ids become parts of Redis keys such as `stream:<id>:peers`,
/// beside other crates' `stream:<id>:segment:<name>`).
pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(|c| c.is_control() || c == ':')
}

/// A segment name in `have` / `peers`: 1 to 256 bytes, no control characters.
pub(crate) fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control)
}

/// A URL a room plays: up to 2048 bytes, no control characters (not fetched by the edge).
pub(crate) fn valid_url(s: &str) -> bool {
    s.len() <= 2048 && !s.chars().any(char::is_control)
}

/// A playback position in seconds: finite, 0 to ten million (115 days).
pub(crate) fn valid_position(p: f64) -> bool {
    p.is_finite() && (0.0..=1e7).contains(&p)
}
