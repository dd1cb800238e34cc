//! Stream sessions (id, viewer, movie, start, end, duration, user agent, address), kept in the
//! shared key-value scope (Redis with `[redis]`), in this process when that fails. A session's id
//! is the key of its viewer's events, so they stay ordered on one partition.

use edge_kv::{Kv, Scope};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// One viewing session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// UUID v4.
    pub id: String,
    /// JWT subject.
    pub user_id: String,
    /// Movie.
    pub movie_id: String,
    /// Start (`edge_events::timestamp` form).
    pub started_at: String,
    /// End, once stopped.
    pub ended_at: Option<String>,
    /// Seconds from start to stop.
    pub duration_seconds: Option<u64>,
    /// The player's `User-Agent` (first 512 bytes).
    pub user_agent: String,
    /// The viewer's address.
    pub ip_address: String,
    /// Start in milliseconds since the Unix epoch.
    pub started_ms: u64,
}

/// Sessions in a [`Kv`]: `stream_session:<id>` (the session as JSON) and
/// `stream_session:active:<user>:<movie>` (the id of the open one), both expiring after `ttl`.
pub struct Sessions {
    kv: Kv,
    ttl: Duration,
}

fn active_key(user: &str, movie: &str) -> String {
    format!("stream_session:active:{user}:{movie}")
}

fn session_key(id: &str) -> String {
    format!("stream_session:{id}")
}

impl Sessions {
    /// Sessions kept in `kv` for `ttl`.
    pub fn new(kv: Kv, ttl: Duration) -> Self {
        Self { kv, ttl }
    }

    /// Opens a session.
    pub async fn start(&self, user: &str, movie: &str, user_agent: &str, ip: &str) -> Session {
        let now = SystemTime::now();
        let mut ua = user_agent.to_owned();
        if ua.len() > 512 {
            let mut cut = 512;
            while !ua.is_char_boundary(cut) {
                cut -= 1;
            }
            ua.truncate(cut);
        }
        let s = Session {
            id: uuid::Uuid::new_v4().to_string(),
            user_id: user.to_owned(),
            movie_id: movie.to_owned(),
            started_at: edge_events::timestamp(now),
            ended_at: None,
            duration_seconds: None,
            user_agent: ua,
            ip_address: ip.to_owned(),
            started_ms: crate::store::epoch_ms(SystemTime::now()),
        };
        self.save(&s).await;
        self.write(&active_key(user, movie), &s.id, self.ttl).await;
        s
    }

    /// The event key for `user` watching `movie`: the open session's id, else `user:movie`.
    pub async fn key_for(&self, user: &str, movie: &str) -> String {
        self.read(&active_key(user, movie))
            .await
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("{user}:{movie}"))
    }

    /// Closes the open session of `user` in `movie`, if there is one, and returns it.
    pub async fn stop(&self, user: &str, movie: &str) -> Option<Session> {
        let id = self
            .read(&active_key(user, movie))
            .await
            .filter(|id| !id.is_empty())?;
        let mut s: Session = serde_json::from_str(&self.read(&session_key(&id)).await?).ok()?;
        let now = SystemTime::now();
        s.ended_at = Some(edge_events::timestamp(now));
        s.duration_seconds =
            Some(crate::store::epoch_ms(SystemTime::now()).saturating_sub(s.started_ms) / 1000);
        self.save(&s).await;
        self.write(&active_key(user, movie), "", Duration::from_secs(1))
            .await;
        Some(s)
    }

    async fn save(&self, s: &Session) {
        let json = serde_json::to_string(s).unwrap_or_default();
        self.write(&session_key(&s.id), &json, self.ttl).await;
    }

    async fn write(&self, key: &str, value: &str, ttl: Duration) {
        if let Err(e) = self.kv.set(Scope::Shared, key, value, ttl).await {
            tracing::debug!(key, error = %e, "session kept in this process only");
        }
        // Also here: a stop or report that meets the shared store down still finds it.
        let _ = self.kv.set(Scope::Local, key, value, ttl).await;
    }

    async fn read(&self, key: &str) -> Option<String> {
        match self.kv.get(Scope::Shared, key).await {
            Ok(Some(v)) => Some(v),
            _ => self.kv.get(Scope::Local, key).await.ok().flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_opened_keyed_and_closed() {
        let sessions = Sessions::new(Kv::memory(1000), Duration::from_secs(60));
        assert_eq!(sessions.key_for("u", "m").await, "u:m");
        let s = sessions.start("u", "m", "player/1", "127.0.0.1").await;
        assert_eq!(sessions.key_for("u", "m").await, s.id);
        let ended = sessions.stop("u", "m").await.unwrap();
        assert_eq!(ended.id, s.id);
        assert!(ended.ended_at.is_some() && ended.duration_seconds == Some(0));
        assert_eq!(sessions.key_for("u", "m").await, "u:m");
        assert!(sessions.stop("u", "m").await.is_none());
    }
}
