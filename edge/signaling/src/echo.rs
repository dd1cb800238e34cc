//! The echo endpoint: every text or binary message comes back as it was sent, through the same
//! handshake, session and outbox as the two signaling protocols (frame and message limits,
//! rate, pings, close codes, drain). Off unless `signaling.echo_path` is set: it is what a
//! WebSocket conformance suite (Autobahn's fuzzing client) and a load generator need to check
//! the signaling connections' WebSocket layer, which the JSON protocols cannot echo.

use crate::{
    ConnId, Engine, Metrics, Outbox, ProtocolMetrics, TrackerConfig, Viewer,
    mailbox::{Frame, Mailbox},
};
use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc};

/// Connections of the echo endpoint, each with its outbox.
pub struct Echo {
    conns: Mutex<(ConnId, HashMap<ConnId, Mailbox>)>,
    outbox: usize,
    max_queued: usize,
    metrics: ProtocolMetrics,
}

impl Echo {
    /// An echo endpoint whose outboxes are bounded as the tracker's (`cfg.outbox` messages,
    /// `cfg.max_queued` bytes: a client that does not read what it is sent is cut).
    pub fn new(cfg: &TrackerConfig, metrics: &Metrics) -> Self {
        Self {
            conns: Mutex::new((0, HashMap::new())),
            outbox: cfg.outbox,
            max_queued: cfg.max_queued,
            metrics: metrics.protocol("echo"),
        }
    }

    fn send(&self, conn: ConnId, frame: Frame) {
        let mut conns = self.conns.lock();
        let Some(mailbox) = conns.1.get_mut(&conn) else {
            return;
        };
        if mailbox.push_frame(frame, self.max_queued) {
            self.metrics.sent.inc();
            return;
        }
        self.metrics.drop("slow");
        mailbox.cut();
        conns.1.remove(&conn);
        self.metrics.connections.set(conns.1.len() as i64);
    }
}

#[async_trait::async_trait]
impl Engine for Echo {
    fn open(&self, _viewer: &Viewer) -> (ConnId, Outbox) {
        let (mailbox, outbox) = Mailbox::new(self.outbox);
        let mut conns = self.conns.lock();
        conns.0 += 1;
        let id = conns.0;
        conns.1.insert(id, mailbox);
        self.metrics.connections.set(conns.1.len() as i64);
        (id, outbox)
    }

    async fn handle(&self, conn: ConnId, text: &str) {
        self.metrics.message("text");
        self.send(conn, Frame::Text(Arc::from(text)));
    }

    async fn handle_binary(&self, conn: ConnId, bytes: &[u8]) {
        self.metrics.message("binary");
        self.send(conn, Frame::Binary(Arc::from(bytes)));
    }

    async fn close(&self, conn: ConnId) {
        let mut conns = self.conns.lock();
        conns.1.remove(&conn);
        self.metrics.connections.set(conns.1.len() as i64);
    }

    fn count_drop(&self, reason: &str) {
        self.metrics.drop(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn text_and_binary_come_back_and_a_connection_that_does_not_read_is_cut() {
        let cfg = TrackerConfig {
            outbox: 2,
            ..TrackerConfig::default()
        };
        let echo = Echo::new(&cfg, &Metrics::unregistered().unwrap());
        let (a, mut out) = echo.open(&Viewer::default());
        echo.handle(a, "hello").await;
        echo.handle_binary(a, &[0, 159, 146, 150]).await;
        assert!(matches!(out.messages.try_recv(), Ok(Frame::Text(t)) if &*t == "hello"));
        assert!(
            matches!(out.messages.try_recv(), Ok(Frame::Binary(b)) if *b == [0, 159, 146, 150])
        );
        for _ in 0..3 {
            echo.handle(a, "unread").await;
        }
        assert!(out.cut.try_recv().is_ok(), "cut once its outbox is full");
        echo.close(a).await;
        assert!(echo.conns.lock().1.is_empty());
    }
}
