//! I/O in bursts for a WebSocket library that reads and writes little at a time, with nothing
//! held between bursts:
//! - reads: one large read from the socket into a stack buffer, the part the library did not
//!   take kept on the heap only until it is taken (tungstenite reads at most its
//!   `read_buffer_size` per call, sized small for idle memory);
//! - writes: gathered until the flush and written at once (a session writes a burst of queued
//!   messages with one flush: one syscall, whatever the listener's own write buffer), the
//!   buffer freed once written.

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes one read from the socket may bring.
const CHUNK: usize = 8 * 1024;

/// Bytes gathered before they are written without waiting for the flush.
const GATHER: usize = 64 * 1024;

/// `inner` with its reads done [`CHUNK`] at a time.
pub(crate) struct Burst<S> {
    inner: S,
    /// Read from `inner`, not yet taken (empty, and unallocated, between bursts).
    rest: Vec<u8>,
    taken: usize,
    /// Written by the library, not yet to `inner` (empty, and unallocated, between bursts).
    out: Vec<u8>,
    sent: usize,
}

impl<S> Burst<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            rest: Vec::new(),
            taken: 0,
            out: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Burst<S> {
    /// Writes what was gathered to `inner`; frees the buffer once all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Burst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.rest.len() {
            let n = buf.remaining().min(this.rest.len() - this.taken);
            buf.put_slice(&this.rest[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.rest.len() {
                // Freed, not kept: the connection may now stay idle for hours.
                this.rest = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
        let got = read.filled();
        let n = buf.remaining().min(got.len());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.rest = got[n..].to_vec();
            this.taken = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Burst<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() + buf.len() > GATHER {
            ready!(this.poll_send(cx))?;
            if buf.len() >= GATHER {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_take_one_large_read_in_pieces_and_nothing_is_kept_after() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut burst = Burst::new(server);
        let mut client = client;
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        let mut piece = [0u8; 100];
        loop {
            let n = burst.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(burst.rest.capacity(), 0, "nothing held between bursts");
    }

    #[tokio::test]
    async fn writes_are_gathered_until_the_flush_and_nothing_is_kept_after() {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let mut burst = Burst::new(server);
        let mut client = client;
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for piece in sent.chunks(700) {
            burst.write_all(piece).await.unwrap();
        }
        burst.flush().await.unwrap();
        assert_eq!(burst.out.capacity(), 0, "nothing held after the flush");
        burst.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent);
    }
}
