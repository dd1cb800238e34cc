//! Reads for a WebSocket library that reads little at a time: one large read from the socket
//! into a stack buffer, the part the library did not take kept on the heap only until it is
//! taken. An idle connection holds no read buffer, a busy one reads its burst in one syscall
//! (tungstenite reads at most its `read_buffer_size` per call, sized small for idle memory).

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes one read from the socket may bring.
const CHUNK: usize = 8 * 1024;

/// `inner` with its reads done [`CHUNK`] at a time.
pub(crate) struct Burst<S> {
    inner: S,
    /// Read from `inner`, not yet taken (empty, and unallocated, between bursts).
    rest: Vec<u8>,
    taken: usize,
}

impl<S> Burst<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            rest: Vec::new(),
            taken: 0,
        }
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
}
