//! One WebSocket connection of a signaling client, whichever the protocol ([`Engine`]): frames
//! in, replies and relays out, pings while idle, "going away" when the edge drains.

use crate::{Engine, Limits, Viewer, burst::Burst, mailbox::Frame};
use edge_contract::Upgraded;
use futures::{SinkExt, StreamExt};
use std::{sync::Arc, time::SystemTime};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error, Message,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};

/// The first read of a frame (an idle connection holds this much for its reads; bench/RESULTS.md
/// measured 4 KiB as 30 % of an idle connection's memory).
const READ_BUFFER: usize = 512;

/// Serves `io` until the client leaves, breaks a limit, or the edge drains; then the engine
/// forgets the connection (for the tracker, a `stopped` in every swarm it announced in).
pub(crate) async fn run<E: Engine>(engine: Arc<E>, viewer: Viewer, io: Upgraded, limits: Limits) {
    let draining = io.draining();
    tokio::pin!(draining);
    // Sized on purpose: tungstenite's defaults reserve 128 KiB per direction per connection.
    // Reads start at READ_BUFFER bytes (most signaling messages fit); a longer frame grows the
    // buffer to its length once its header is read.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_message * 4)
        .max_message_size(Some(limits.max_message))
        .max_frame_size(Some(limits.max_message));
    let mut ws = WebSocketStream::from_raw_socket(Burst::new(io), Role::Server, Some(config)).await;
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
    // The connection lives as long as the credentials it was admitted with: the next request
    // with them would be refused.
    let expiry = viewer.expires_at.and_then(|at| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now().checked_add(left)
    });
    let expired = async move {
        match expiry {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
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
                    engine.handle_binary(conn, &bytes).await;
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
                // RFC 6455 7.4.1: 1007 for a text message that is not UTF-8.
                Some(Err(Error::Utf8(e))) => {
                    tracing::debug!(error = %e, "signaling text not UTF-8");
                    engine.count_drop("utf8");
                    break Some((CloseCode::Invalid, "invalid UTF-8"));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "signaling socket error");
                    engine.count_drop("protocol");
                    break Some((CloseCode::Protocol, "protocol error"));
                }
            },
            out = outbox.recv() => match out {
                Some(first) => {
                    // What queued meanwhile goes out with it, in one write (one syscall for
                    // a busy connection's burst, not one per message). The connection's own
                    // stream has no send timeout: a client that stops reading is cut here.
                    let batch = send_batch(&mut ws, first, &mut outbox, &queued);
                    if !matches!(tokio::time::timeout(limits.send_timeout, batch).await, Ok(Ok(()))) {
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
            () = &mut expired => {
                engine.count_drop("token_expired");
                break Some((CloseCode::Policy, "token expired"));
            }
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
    // tungstenite writes the last frames of a closing handshake (its close reply above all)
    // without flushing the stream: send them, then end our side (RFC 6455 7.1.1: the server
    // closes the TCP connection first).
    let ending = tokio::io::AsyncWriteExt::shutdown(ws.get_mut());
    let _ = tokio::time::timeout(limits.send_timeout, ending).await;
}

/// Most bytes one batch of queued messages writes before it flushes.
const BATCH_BYTES: usize = 64 * 1024;

/// Writes `first` and what else is queued, up to [`BATCH_BYTES`], then flushes once (the
/// session's loop comes back between batches: reads, pings, drain); takes each message's bytes
/// off `queued` once it is written.
async fn send_batch<S>(
    ws: &mut WebSocketStream<S>,
    first: Frame,
    outbox: &mut tokio::sync::mpsc::Receiver<Frame>,
    queued: &std::sync::atomic::AtomicUsize,
) -> Result<(), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut frame, mut bytes) = (first, 0);
    loop {
        let len = frame.len();
        let message = match frame {
            Frame::Text(text) => Message::text(text.as_ref()),
            Frame::Binary(b) => Message::binary(b.to_vec()),
        };
        ws.feed(message).await?;
        queued.fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
        bytes += len;
        if bytes >= BATCH_BYTES {
            break;
        }
        match outbox.try_recv() {
            Ok(next) => frame = next,
            Err(_) => break,
        }
    }
    ws.flush().await
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
