//! A connection's bounded outbox, shared by both protocols: the engine queues with `try_send`
//! while it holds its state lock (nothing waits), the session writes what is queued. A
//! connection that does not keep up is cut, never waited for.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use tokio::sync::{mpsc, oneshot};

/// One message to send: both protocols send text; the echo endpoint answers binary with binary.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A text message.
    Text(Arc<str>),
    /// A binary message.
    Binary(Arc<[u8]>),
}

impl Frame {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(b) => b.len(),
        }
    }

    /// As text (a binary message as lossy UTF-8).
    pub fn into_text(self) -> Arc<str> {
        match self {
            Self::Text(t) => t,
            Self::Binary(b) => String::from_utf8_lossy(&b).into(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a connection's session reads: the messages to send, in order, the bytes of them still
/// queued (to take off once written), and a signal that the engine cut the connection.
pub struct Outbox {
    /// The messages.
    pub messages: mpsc::Receiver<Frame>,
    /// Bytes queued; subtract a message's length once it is written.
    pub queued: Arc<AtomicUsize>,
    /// Resolves when the engine cut the connection (too slow): stop at once.
    pub cut: oneshot::Receiver<()>,
}

impl Outbox {
    /// The next text message without waiting (tests; a binary one reads as lossy UTF-8).
    pub fn try_recv(&mut self) -> Result<Arc<str>, mpsc::error::TryRecvError> {
        self.messages.try_recv().map(Frame::into_text)
    }

    /// The next text message (tests; as [`try_recv`](Self::try_recv)); `None` once closed.
    pub async fn recv(&mut self) -> Option<Arc<str>> {
        self.messages.recv().await.map(Frame::into_text)
    }
}

/// The engine's end of an [`Outbox`].
pub(crate) struct Mailbox {
    tx: mpsc::Sender<Frame>,
    /// Bytes queued in `tx` and not yet written (the session takes off what it sent).
    queued: Arc<AtomicUsize>,
    /// Fired when the engine cuts the connection.
    cut: Option<oneshot::Sender<()>>,
}

impl Mailbox {
    /// A mailbox of `messages` messages and the outbox its session reads.
    pub(crate) fn new(messages: usize) -> (Self, Outbox) {
        let (tx, rx) = mpsc::channel(messages);
        let (cut_tx, cut_rx) = oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Self {
                tx,
                queued: queued.clone(),
                cut: Some(cut_tx),
            },
            Outbox {
                messages: rx,
                queued,
                cut: cut_rx,
            },
        )
    }

    /// Queues `text`; false when the outbox is full in messages or would hold more than
    /// `max_queued` bytes: the caller forgets the connection and [`cut`](Self::cut)s it.
    pub(crate) fn push(&self, text: Arc<str>, max_queued: usize) -> bool {
        self.push_frame(Frame::Text(text), max_queued)
    }

    /// [`push`](Self::push) for any frame.
    pub(crate) fn push_frame(&self, frame: Frame, max_queued: usize) -> bool {
        let len = frame.len();
        if self.queued.load(Ordering::Relaxed) + len > max_queued {
            return false;
        }
        if self.tx.try_send(frame).is_err() {
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        true
    }

    /// Tells the session to stop at once, dropping what it had queued.
    pub(crate) fn cut(&mut self) {
        if let Some(cut) = self.cut.take() {
            let _ = cut.send(());
        }
    }
}
