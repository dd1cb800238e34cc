//! The bytes of one slice while it fills: written once by its fill task, read by any number of
//! viewers at their own pace, each from where it is.
//!
//! The fill task appends pieces (views into one allocation sized for the slice, so nothing is
//! copied while it fills or after) and wakes the readers; a slice that arrived in one piece is
//! answered whole, others piece by piece. A fill that fails ends every reader with the error: a
//! reader never takes a short slice for a complete one.

use bytes::Bytes;
use edge_origin::OriginError;
use futures::Stream;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// The bytes of a slice, complete or filling.
pub(crate) struct Data {
    state: Mutex<State>,
    /// Bytes written so far; readers wait on it.
    filled: watch::Sender<u64>,
    /// Expected length.
    len: u64,
    /// The memory tier let go of it (evicted, or did not admit it): the disk tier takes it.
    let_go: std::sync::atomic::AtomicBool,
}

struct State {
    pieces: Vec<Bytes>,
    /// Offset one past each piece (`ends[i]` = bytes in pieces `0..=i`), for a binary search.
    ends: Vec<u64>,
    have: u64,
    end: Option<Result<(), OriginError>>,
}

impl Data {
    /// A complete slice.
    pub(crate) fn complete(body: Bytes) -> Self {
        let len = body.len() as u64;
        Self {
            state: Mutex::new(State {
                pieces: vec![body],
                ends: vec![len],
                have: len,
                end: Some(Ok(())),
            }),
            filled: watch::Sender::new(len),
            len,
            let_go: Default::default(),
        }
    }

    /// A slice of `len` bytes about to be filled.
    pub(crate) fn empty(len: u64) -> Self {
        Self {
            state: Mutex::new(State {
                pieces: Vec::new(),
                ends: Vec::new(),
                have: 0,
                end: None,
            }),
            filled: watch::Sender::new(0),
            len,
            let_go: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its length once complete.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `piece` (the fill task only).
    pub(crate) fn push(&self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        let have = {
            let mut st = self.lock();
            st.have += piece.len() as u64;
            let end = st.have;
            st.ends.push(end);
            st.pieces.push(piece);
            st.have
        };
        self.filled.send_replace(have);
    }

    /// Ends the fill: `Ok` once all `len` bytes were pushed, or the error that ended it. Only
    /// the first call counts. The pieces stay as they are (views into the one buffer the fill
    /// wrote): joining them would copy every slice and hold two buffers for a while.
    pub(crate) fn finish(&self, result: Result<(), OriginError>) {
        let have = {
            let mut st = self.lock();
            if st.end.is_some() {
                return;
            }
            let result = match result {
                Ok(()) if st.have != self.len => Err(OriginError::Unavailable(format!(
                    "slice ended after {} of {} bytes",
                    st.have, self.len
                ))),
                other => other,
            };
            st.end = Some(result);
            st.have
        };
        self.filled.send_replace(have);
    }

    /// The whole slice, when it is complete and in one piece.
    pub(crate) fn whole(&self) -> Option<Bytes> {
        let st = self.lock();
        match (&st.end, st.pieces.as_slice()) {
            (Some(Ok(())), [one]) => Some(one.clone()),
            (Some(Ok(())), []) => Some(Bytes::new()),
            _ => None,
        }
    }

    /// Records that the memory tier let go of this slice.
    pub(crate) fn mark_let_go(&self) {
        self.let_go.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the memory tier let go of this slice.
    pub(crate) fn let_go(&self) -> bool {
        self.let_go.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The pieces of the complete slice (`None` while it fills or after it failed).
    pub(crate) fn pieces(&self) -> Option<Vec<Bytes>> {
        let st = self.lock();
        matches!(st.end, Some(Ok(()))).then(|| st.pieces.clone())
    }

    /// Whether the fill is still going.
    pub(crate) fn filling(&self) -> bool {
        self.lock().end.is_none()
    }

    /// The error that ended the fill (or that it has not ended well).
    pub(crate) fn error(&self) -> OriginError {
        match &self.lock().end {
            Some(Err(e)) => e.clone(),
            _ => OriginError::Unavailable("slice incomplete".into()),
        }
    }

    /// Whether the fill ended with an error.
    pub(crate) fn failed(&self) -> bool {
        matches!(self.lock().end, Some(Err(_)))
    }

    /// The next bytes at `pos` (before `to`), what ended the fill, or nothing yet.
    fn next_at(&self, pos: u64, to: u64) -> Option<Result<Bytes, OriginError>> {
        let st = self.lock();
        if st.have > pos {
            let i = st.ends.partition_point(|end| *end <= pos);
            let (p, end) = (&st.pieces[i], st.ends[i]);
            let at = end - p.len() as u64;
            let from = (pos - at) as usize;
            let until = (to.min(end) - at) as usize;
            return Some(Ok(p.slice(from..until)));
        }
        match &st.end {
            Some(Err(e)) => Some(Err(e.clone())),
            Some(Ok(())) => Some(Err(OriginError::Unavailable(format!(
                "slice has {} bytes, {to} wanted",
                st.have
            )))),
            None => None,
        }
    }

    /// Bytes `from..to` of the slice as they arrive; an error (the fill failed) ends the stream.
    pub(crate) fn read(
        self: std::sync::Arc<Self>,
        from: u64,
        to: u64,
    ) -> impl Stream<Item = Result<Bytes, OriginError>> + Send + 'static {
        let rx = self.filled.subscribe();
        futures::stream::unfold((self, from, rx), move |(data, pos, mut rx)| async move {
            if pos >= to {
                return None;
            }
            loop {
                match data.next_at(pos, to) {
                    Some(Ok(b)) => {
                        let next = pos + b.len() as u64;
                        return Some((Ok(b), (data, next, rx)));
                    }
                    Some(Err(e)) => return Some((Err(e), (data, to, rx))),
                    // The sender lives in `data`, which this stream holds: never closed here.
                    None => {
                        let _ = rx.changed().await;
                    }
                }
            }
        })
    }
}

/// Ends the fill with an error when dropped before [`Data::finish`] (a fill task that panicked
/// or was cancelled), so no reader waits forever.
pub(crate) struct FinishGuard(pub(crate) std::sync::Arc<Data>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0
            .finish(Err(OriginError::Unavailable("fill task ended".into())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::Arc;

    async fn all(
        s: impl Stream<Item = Result<Bytes, OriginError>>,
    ) -> Result<Vec<u8>, OriginError> {
        let mut out = Vec::new();
        futures::pin_mut!(s);
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn readers_follow_the_fill_from_anywhere_and_see_its_failure() {
        let data = Arc::new(Data::empty(10));
        let early = tokio::spawn(all(data.clone().read(0, 10)));
        let middle = tokio::spawn(all(data.clone().read(3, 7)));
        data.push(Bytes::from_static(b"0123"));
        tokio::task::yield_now().await;
        data.push(Bytes::from_static(b"456789"));
        data.finish(Ok(()));
        assert_eq!(early.await.unwrap().unwrap(), b"0123456789");
        assert_eq!(middle.await.unwrap().unwrap(), b"3456");
        assert!(data.whole().is_none(), "two pieces");
        assert_eq!(data.pieces().unwrap().concat(), b"0123456789");
        // Late readers read across the pieces.
        assert_eq!(all(data.clone().read(2, 10)).await.unwrap(), b"23456789");
        let one = Data::complete(Bytes::from_static(b"abc"));
        assert_eq!(one.whole().unwrap(), "abc");

        let broken = Arc::new(Data::empty(10));
        let reader = tokio::spawn(all(broken.clone().read(0, 10)));
        broken.push(Bytes::from_static(b"01"));
        drop(FinishGuard(broken.clone()));
        assert!(reader.await.unwrap().is_err());
        assert!(broken.failed() && broken.whole().is_none());

        // A fill that ends short is a failure, not a complete slice.
        let short = Arc::new(Data::empty(4));
        short.push(Bytes::from_static(b"01"));
        short.finish(Ok(()));
        assert!(short.failed());
        assert!(all(short.clone().read(0, 4)).await.is_err());
    }
}
