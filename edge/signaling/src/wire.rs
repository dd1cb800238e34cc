//! The WebTorrent tracker's messages as the npm `bittorrent-tracker` 11.x server reads and
//! writes them: JSON text frames; `info_hash`, `peer_id`, `to_peer_id` and `offer_id` are
//! 20-character "binary" strings (one character per byte, U+0000..=U+00FF). Replies keep the
//! reference's key order (it serialises with `JSON.stringify`), so a client sees the same bytes.
//!
//! Stricter than the reference where it would accept garbage: a character above U+00FF in an
//! id is refused (the reference keeps its low byte), an offer needs an `offer_id` and an object,
//! and an `event` other than `started`, `stopped`, `completed`, `update`, `paused` (or none) is
//! refused before a swarm is touched.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A 20-byte id (`info_hash`, `peer_id`, `offer_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 20]);

impl Id {
    /// Parses a 20-character binary string; `None` if its length or a character is wrong.
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = [0u8; 20];
        let mut n = 0;
        for c in s.chars() {
            let byte = u8::try_from(u32::from(c)).ok()?;
            *out.get_mut(n)? = byte;
            n += 1;
        }
        (n == 20).then_some(Self(out))
    }

    /// The binary string again (each byte one character).
    pub fn to_binary(self) -> String {
        self.0.iter().map(|&b| char::from(b)).collect()
    }

    /// Lower-case hex (40 digits): how Redis keys and the cluster's messages name it.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// An id from its [`to_hex`](Self::to_hex) form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 20];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_binary())
    }
}

/// An inbound message before validation: every field optional and loosely typed, as the
/// reference accepts them.
#[derive(Debug, Deserialize)]
pub(crate) struct Inbound<'a> {
    #[serde(borrow, default)]
    pub action: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub info_hash: Option<&'a RawValue>,
    #[serde(default)]
    pub peer_id: Option<serde_json::Value>,
    #[serde(default)]
    pub to_peer_id: Option<serde_json::Value>,
    #[serde(default)]
    pub offer_id: Option<serde_json::Value>,
    #[serde(default)]
    pub event: Option<serde_json::Value>,
    /// Raw, `null` kept: it is 0 in JavaScript, a missing `left` is not a number.
    #[serde(borrow, default, deserialize_with = "present")]
    pub left: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub offers: Option<Vec<InOffer<'a>>>,
    #[serde(borrow, default)]
    pub answer: Option<&'a RawValue>,
}

/// A field that is there, `null` included (`Option` alone reads `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// One of an announce's `offers`.
#[derive(Debug, Deserialize)]
pub(crate) struct InOffer<'a> {
    #[serde(default)]
    pub offer_id: Option<serde_json::Value>,
    #[serde(borrow, default)]
    pub offer: Option<&'a RawValue>,
}

/// `event` of an announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The peer joins (counted complete when `left` is 0).
    Started,
    /// The peer leaves the swarm.
    Stopped,
    /// The peer has the whole torrent now.
    Completed,
    /// A periodic announce (also no `event`, or `empty`).
    Update,
    /// BEP 21 partial seed; treated as an update.
    Paused,
}

impl Event {
    pub(crate) fn parse(v: Option<&serde_json::Value>) -> Option<Self> {
        match v {
            None | Some(serde_json::Value::Null) => Some(Self::Update),
            Some(serde_json::Value::String(s)) => match s.as_str() {
                "started" => Some(Self::Started),
                "stopped" => Some(Self::Stopped),
                "completed" => Some(Self::Completed),
                "update" | "empty" | "" => Some(Self::Update),
                "paused" => Some(Self::Paused),
                _ => None,
            },
            Some(_) => None,
        }
    }
}

/// The reply to an announce.
#[derive(Debug, Serialize)]
pub(crate) struct AnnounceReply {
    pub complete: usize,
    pub incomplete: usize,
    pub action: &'static str,
    pub interval: u64,
    pub info_hash: Id,
}

/// An offer relayed to another peer of the swarm.
#[derive(Debug, Serialize)]
pub(crate) struct OfferRelay<'a> {
    pub action: &'static str,
    pub offer: &'a RawValue,
    pub offer_id: Id,
    pub peer_id: Id,
    pub info_hash: Id,
}

/// An answer relayed to the peer it answers.
#[derive(Debug, Serialize)]
pub(crate) struct AnswerRelay<'a> {
    pub action: &'static str,
    pub answer: &'a RawValue,
    pub offer_id: Id,
    pub peer_id: Id,
    pub info_hash: Id,
}

/// A swarm's counts in a scrape reply.
#[derive(Debug, Serialize)]
pub(crate) struct ScrapeFile {
    pub complete: usize,
    pub incomplete: usize,
    pub downloaded: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct ScrapeFlags {
    pub min_request_interval: u64,
}

/// The reply to a scrape: `files` keyed by the binary info hash, in the order asked.
#[derive(Debug, Serialize)]
pub(crate) struct ScrapeReply {
    pub action: &'static str,
    #[serde(serialize_with = "ordered_files")]
    pub files: Vec<(Id, ScrapeFile)>,
    pub flags: ScrapeFlags,
}

fn ordered_files<S: serde::Serializer>(
    files: &[(Id, ScrapeFile)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(files.len()))?;
    for (id, file) in files {
        map.serialize_entry(&id.to_binary(), file)?;
    }
    map.end()
}

/// A refused request: `{"failure reason": …}`, with the action and info hash once the request
/// got that far (as the reference does for errors of a valid request).
#[derive(Debug, Serialize)]
pub(crate) struct Failure<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(rename = "failure reason")]
    pub reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info_hash: Option<Id>,
}

pub(crate) fn to_text<T: Serialize>(message: &T) -> std::sync::Arc<str> {
    serde_json::to_string(message)
        .expect("tracker messages serialise")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twenty_latin1_characters() {
        assert!(Id::parse("aaaaaaaaaaaaaaaaaaaa").is_some());
        assert!(Id::parse("aaaaaaaaaaaaaaaaaaa").is_none());
        assert!(Id::parse("aaaaaaaaaaaaaaaaaaaaa").is_none());
        let latin1 = "\u{0}\u{ff}éaaaaaaaaaaaaaaaaa";
        let id = Id::parse(latin1).unwrap();
        assert_eq!(id.0[0], 0);
        assert_eq!(id.0[1], 0xff);
        assert_eq!(id.to_binary(), latin1);
        assert!(Id::parse("\u{100}aaaaaaaaaaaaaaaaaaa").is_none());
        assert!(Id::parse("😀aaaaaaaaaaaaaaaaaaa").is_none());
    }

    #[test]
    fn replies_keep_the_reference_key_order() {
        let h = Id::parse("aaaaaaaaaaaaaaaaaaaa").unwrap();
        let reply = AnnounceReply {
            complete: 0,
            incomplete: 1,
            action: "announce",
            interval: 120,
            info_hash: h,
        };
        assert_eq!(
            &*to_text(&reply),
            r#"{"complete":0,"incomplete":1,"action":"announce","interval":120,"info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#
        );
        let failure = Failure {
            action: None,
            reason: "invalid info_hash",
            info_hash: None,
        };
        assert_eq!(
            &*to_text(&failure),
            r#"{"failure reason":"invalid info_hash"}"#
        );
    }
}
