//! One WebSocket connection of a signaling client, whichever the protocol ([`Engine`]): frames
//! in, replies and relays out, pings while idle, "going away" when the edge drains.

use crate::{Engine, Limits, Viewer};
use edge_contract::Upgraded;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error, Message,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};

/// Serves `io` until the client leaves, breaks a limit, or the edge drains; then the engine
/// forgets the connection (for the tracker, a `stopped` in every swarm it announced in).
pub(crate) async fn run<E: Engine>(engine: Arc<E>, viewer: Viewer, io: Upgraded, limits: Limits) {
    let draining = io.draining();
    tokio::pin!(draining);
    // Sized on purpose: tungstenite's defaults reserve 128 KiB per direction per connection.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_message * 4)
        .max_message_size(Some(limits.max_message))
        .max_frame_size(Some(limits.max_message));
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (conn, outbox) = engine.open(&viewer);
    let crate::Outbox {
        messages: mut outbox,
        queued,
        mut cut,
    } = outbox;
    let mut idle = tokio::time::interval(limits.ping_interval);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle.reset();
    let mut quiet_ticks = 0u32;
    let mut budget = Budget::new(limits.messages_per_second);
    let close = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                // Every data and control frame but a close counts against the rate.
                Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_) | Message::Pong(_)))
                    if !budget.take() =>
                {
                    engine.count_drop("rate");
                    break Some((CloseCode::Policy, "too many messages"));
                }
                Some(Ok(Message::Text(text))) => {
                    quiet_ticks = 0;
                    engine.handle(conn, text.as_str()).await;
                }
                Some(Ok(Message::Binary(bytes))) => {
                    quiet_ticks = 0;
                    // The reference tracker reads every frame as text; so does the native protocol.
                    engine.handle(conn, &String::from_utf8_lossy(&bytes)).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => quiet_ticks = 0,
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the close reply; send it (RFC 6455 5.5.1).
                    let _ = tokio::time::timeout(limits.ping_interval, ws.flush()).await;
                    break None;
                }
                None => break None,
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(Error::Capacity(e))) => {
                    tracing::debug!(error = %e, "signaling message too large");
                    engine.count_drop("size");
                    break Some((CloseCode::Size, "message too large"));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "signaling socket error");
                    engine.count_drop("protocol");
                    break Some((CloseCode::Protocol, "protocol error"));
                }
            },
            out = outbox.recv() => match out {
                Some(text) => {
                    let len = text.len();
                    // The connection's own stream has no send timeout: a client that stops
                    // reading is cut here.
                    let sent = tokio::time::timeout(
                        limits.send_timeout,
                        ws.send(Message::text(text.as_ref())),
                    )
                    .await;
                    queued.fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
                    if !matches!(sent, Ok(Ok(()))) {
                        engine.count_drop("send_timeout");
                        break None;
                    }
                }
                None => break None,
            },
            // The engine cut this connection (it did not read what was sent to it).
            _ = &mut cut => break Some((CloseCode::Policy, "too slow")),
            _ = idle.tick() => {
                quiet_ticks += 1;
                if quiet_ticks > limits.idle_pings {
                    engine.count_drop("idle");
                    break Some((CloseCode::Away, "idle"));
                }
                let ping = ws.send(Message::Ping(Default::default()));
                if !matches!(tokio::time::timeout(limits.send_timeout, ping).await, Ok(Ok(()))) {
                    break None;
                }
            }
            () = &mut draining => break Some((CloseCode::Away, "server going away; reconnect")),
        }
    };
    engine.close(conn).await;
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let closing = async {
            let _ = ws.close(Some(frame)).await;
            while let Some(Ok(_)) = ws.next().await {}
        };
        let _ = tokio::time::timeout(limits.ping_interval, closing).await;
    }
}

/// A token bucket: `per_second` messages a second, bursts of as many.
struct Budget {
    per_second: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Budget {
    fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: tokio::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
