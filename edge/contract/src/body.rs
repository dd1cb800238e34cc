//! Bodies: a response body is whole bytes or a stream of chunks; a request body is read from the
//! listener only when (and as far as) the handler asks for it.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::{fmt, pin::Pin, sync::Arc};
use tokio::sync::{Notify, mpsc};

/// Why a body could not be read or written to the end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the limit of whoever reads it.
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: u64,
    },
    /// The peer (viewer or upstream) stopped sending before the end, or sent something invalid.
    #[error("body interrupted: {0}")]
    Interrupted(String),
    /// Read once already.
    #[error("body already read")]
    Consumed,
}

/// Chunks of a streamed body; an `Err` ends it (the listener then cuts the response, so a
/// client can never take a short body for a complete one).
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send + 'static>>;

/// A response body.
pub enum Body {
    /// The whole body (cached objects, the edge's own answers): written without a copy.
    Full(Bytes),
    /// A body that arrives while it is sent (fills in progress, large objects).
    Stream {
        /// Its length when known (sent as `Content-Length`; otherwise chunked on HTTP/1.1).
        len: Option<u64>,
        /// The chunks. With `len` set, they must add up to exactly `len` bytes, or the
        /// listener cuts the response.
        chunks: BodyStream,
    },
    /// No body: after the `101` the connection itself, given to this ([`crate::EdgeResponse::upgrade`]).
    Upgrade(crate::OnUpgrade),
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Self::Full(Bytes::new())
    }

    /// A streamed body of `len` bytes (or of unknown length).
    pub fn stream(
        len: Option<u64>,
        chunks: impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    ) -> Self {
        Self::Stream {
            len,
            chunks: Box::pin(chunks),
        }
    }

    /// Its length, when known before it is sent.
    pub fn len(&self) -> Option<u64> {
        match self {
            Self::Full(b) => Some(b.len() as u64),
            Self::Stream { len, .. } => *len,
            Self::Upgrade(_) => Some(0),
        }
    }

    /// Whether it is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The bytes of a whole body (`None` for a stream).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Self::Full(b) => Some(b),
            Self::Stream { .. } | Self::Upgrade(_) => None,
        }
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn collect(self, limit: u64) -> Result<Bytes, BodyError> {
        match self {
            Self::Full(b) if b.len() as u64 > limit => Err(BodyError::TooLarge { limit }),
            Self::Full(b) => Ok(b),
            Self::Stream { len: Some(n), .. } if n > limit => Err(BodyError::TooLarge { limit }),
            Self::Stream { chunks, .. } => gather(chunks, limit).await,
            Self::Upgrade(_) => Ok(Bytes::new()),
        }
    }
}

/// Reads `chunks` to the end into one buffer, refusing more than `limit` bytes.
async fn gather(
    chunks: impl Stream<Item = Result<Bytes, BodyError>>,
    limit: u64,
) -> Result<Bytes, BodyError> {
    let mut chunks = std::pin::pin!(chunks);
    let mut out = BytesMut::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(b) => f.debug_tuple("Full").field(&b.len()).finish(),
            Self::Stream { len, .. } => f.debug_struct("Stream").field("len", len).finish(),
            Self::Upgrade(_) => f.write_str("Upgrade"),
        }
    }
}

/// A whole body equals the same bytes; a stream equals nothing (it has not been read).
impl<T: AsRef<[u8]> + ?Sized> PartialEq<T> for Body {
    fn eq(&self, other: &T) -> bool {
        self.as_bytes()
            .is_some_and(|b| b.as_ref() == other.as_ref())
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Self::Full(b)
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Self::Full(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Self::Full(Bytes::from(s))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Self::Full(Bytes::from(v))
    }
}

/// A request body. Nothing is read from the connection until the handler asks
/// ([`RequestBody::bytes`], [`RequestBody::next_chunk`]): a route that takes no body never reads
/// one, and whoever reads it sets the limit. Reading is cancel-safe: a read given up half-way
/// (a timeout around it) loses no chunk.
pub struct RequestBody {
    declared: Option<u64>,
    source: tokio::sync::Mutex<Source>,
}

enum Source {
    /// Whole, not read yet.
    Full(Bytes),
    /// Streamed by the listener.
    Channel(Receiver),
    /// Read to the end.
    Finished,
    /// Given up by a reader (over its limit): nothing more can be read.
    Abandoned,
}

struct Receiver {
    rx: mpsc::Receiver<Result<Bytes, BodyError>>,
    want: Arc<Notify>,
}

/// The listener's end of a [`RequestBody`]: it reads from the connection only while the handler
/// wants more.
pub struct BodySender {
    tx: mpsc::Sender<Result<Bytes, BodyError>>,
    want: Arc<Notify>,
}

impl BodySender {
    /// Waits until the handler asks for the next chunk; false when it dropped the body (stop
    /// reading).
    pub async fn wanted(&self) -> bool {
        tokio::select! {
            () = self.want.notified() => true,
            () = self.tx.closed() => false,
        }
    }

    /// Hands one chunk (or the error that ends the body) to the handler; false when it is gone.
    pub async fn send(&self, chunk: Result<Bytes, BodyError>) -> bool {
        self.tx.send(chunk).await.is_ok()
    }
}

impl RequestBody {
    /// No body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A body already read whole (tests, in-process callers).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            declared: Some(bytes.len() as u64),
            source: tokio::sync::Mutex::new(Source::Full(bytes)),
        }
    }

    /// A body the listener streams from the connection; `declared` is its `Content-Length`.
    pub fn channel(declared: Option<u64>) -> (BodySender, Self) {
        let (tx, rx) = mpsc::channel(1);
        let want = Arc::new(Notify::new());
        let sender = BodySender {
            tx,
            want: want.clone(),
        };
        let body = Self {
            declared,
            source: tokio::sync::Mutex::new(Source::Channel(Receiver { rx, want })),
        };
        (sender, body)
    }

    /// The length the client declared (`Content-Length`), if any.
    pub fn declared_len(&self) -> Option<u64> {
        self.declared
    }

    /// The next chunk, `None` at the end. Reads from the connection on demand.
    pub async fn next_chunk(&self) -> Option<Result<Bytes, BodyError>> {
        let mut source = self.source.lock().await;
        match &mut *source {
            Source::Full(b) => {
                let b = std::mem::take(b);
                *source = Source::Finished;
                (!b.is_empty()).then_some(Ok(b))
            }
            Source::Channel(r) => {
                r.want.notify_one();
                // `recv` is cancel-safe, and the lock is held across it: a reader that gives up
                // here loses nothing, and a second reader waits its turn.
                let chunk = r.rx.recv().await;
                if chunk.is_none() {
                    *source = Source::Finished;
                }
                chunk
            }
            Source::Finished => None,
            Source::Abandoned => Some(Err(BodyError::Consumed)),
        }
    }

    /// Reads the whole body, refusing more than `limit` bytes (before reading anything when the
    /// declared length is already larger). A body can be read whole once.
    pub async fn bytes(&self, limit: u64) -> Result<Bytes, BodyError> {
        if self.declared.is_some_and(|n| n > limit) {
            *self.source.lock().await = Source::Abandoned;
            return Err(BodyError::TooLarge { limit });
        }
        if matches!(
            *self.source.lock().await,
            Source::Finished | Source::Abandoned
        ) {
            return Err(BodyError::Consumed);
        }
        let chunks = futures::stream::unfold(self, |body| async move {
            body.next_chunk().await.map(|chunk| (chunk, body))
        });
        let read = gather(chunks, limit).await;
        if let Err(BodyError::TooLarge { .. }) = read {
            *self.source.lock().await = Source::Abandoned;
        }
        read
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("declared", &self.declared)
            .finish_non_exhaustive()
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        Self::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_read_until_asked() {
        let (tx, body) = RequestBody::channel(Some(6));
        let listener = async move {
            let mut reads = 0;
            for part in [&b"abc"[..], &b"def"[..]] {
                if !tx.wanted().await {
                    return reads;
                }
                reads += 1;
                tx.send(Ok(Bytes::copy_from_slice(part))).await;
            }
            reads
        };
        let handler = async move { body.bytes(100).await };
        let (reads, got) = tokio::join!(listener, handler);
        assert_eq!(got.unwrap(), "abcdef");
        assert_eq!(reads, 2);

        // A handler that drops the body without reading: the listener reads nothing.
        let (tx, body) = RequestBody::channel(Some(6));
        drop(body);
        assert!(!tx.wanted().await);
    }

    #[tokio::test]
    async fn limits_are_the_readers() {
        let body = RequestBody::full(Bytes::from_static(b"0123456789"));
        assert_eq!(body.bytes(4).await, Err(BodyError::TooLarge { limit: 4 }));
        // Undeclared length: refused once the chunks pass the limit.
        let (tx, body) = RequestBody::channel(None);
        let listener = async move {
            while tx.wanted().await {
                if !tx.send(Ok(Bytes::from_static(b"xxxx"))).await {
                    break;
                }
            }
        };
        let (_, got) = tokio::join!(listener, body.bytes(10));
        assert_eq!(got, Err(BodyError::TooLarge { limit: 10 }));
        assert_eq!(body.bytes(10).await, Err(BodyError::Consumed));
    }

    #[tokio::test]
    async fn a_read_given_up_half_way_loses_nothing() {
        let (tx, body) = RequestBody::channel(None);
        // The first read times out before the listener sends anything.
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), body.next_chunk()).await;
        assert!(gave_up.is_err());
        let listener = async move {
            for part in [&b"ab"[..], &b"cd"[..]] {
                if !tx.wanted().await || !tx.send(Ok(Bytes::from_static(part))).await {
                    return;
                }
            }
        };
        let (_, got) = tokio::join!(listener, body.bytes(10));
        assert_eq!(got.unwrap(), "abcd", "no chunk lost to the abandoned read");
    }

    #[tokio::test]
    async fn streamed_response_bodies_collect_within_limits() {
        let chunks =
            futures::stream::iter([Ok(Bytes::from_static(b"ab")), Ok(Bytes::from_static(b"cd"))]);
        assert_eq!(
            Body::stream(None, chunks).collect(10).await.unwrap(),
            "abcd"
        );
        let chunks = futures::stream::iter([Ok(Bytes::from_static(b"ab"))]);
        assert_eq!(
            Body::stream(Some(99), chunks).collect(10).await,
            Err(BodyError::TooLarge { limit: 10 })
        );
        let failing = futures::stream::iter([
            Ok(Bytes::from_static(b"ab")),
            Err(BodyError::Interrupted("cut".into())),
        ]);
        assert!(matches!(
            Body::stream(Some(4), failing).collect(10).await,
            Err(BodyError::Interrupted(_))
        ));
    }
}
