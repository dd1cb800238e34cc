//! The in-memory index of the entries on disk: sizes, expiry, LRU order, space reserved by writes
//! in flight, and a short log of purges (so a write that started before a purge does not land
//! after it).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::SystemTime,
};

/// Purges remembered for writes in flight; a write older than all of them is dropped.
const PURGE_LOG: usize = 256;

/// One entry on disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// Bytes of the entry file.
    pub(crate) size: u64,
    /// When the entry expires.
    pub(crate) expires_at: SystemTime,
    /// Identifies this version of the entry: a reader that found a bad file only deletes it if the
    /// entry was not replaced since.
    pub(crate) generation: u64,
    /// Position in the LRU order (larger: used more recently).
    tick: u64,
}

enum Pattern {
    Exact(Arc<str>),
    Prefix(Arc<str>),
}

impl Pattern {
    fn matches(&self, key: &str) -> bool {
        match self {
            Self::Exact(k) => **k == *key,
            Self::Prefix(p) => key.starts_with(&**p),
        }
    }
}

/// Entries by key, in LRU order, with byte totals.
#[derive(Default)]
pub(crate) struct Index {
    map: HashMap<Arc<str>, Slot>,
    lru: BTreeMap<u64, Arc<str>>,
    bytes: u64,
    reserved: u64,
    clock: u64,
    purges: VecDeque<(u64, Pattern)>,
    purge_seq: u64,
}

impl Index {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes of all entry files.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The entry of `key`, without touching the LRU order.
    pub(crate) fn peek(&self, key: &str) -> Option<Slot> {
        self.map.get(key).copied()
    }

    /// The entry of `key`, now the most recently used.
    pub(crate) fn touch(&mut self, key: &str) -> Option<Slot> {
        let tick = self.tick();
        let (k, slot) = self.map.get_key_value(key)?;
        let k = k.clone();
        let old = slot.tick;
        self.lru.remove(&old);
        self.lru.insert(tick, k);
        let slot = self.map.get_mut(key).expect("present");
        slot.tick = tick;
        Some(*slot)
    }

    /// Adds or replaces the entry of `key` as the most recently used; returns its generation.
    pub(crate) fn insert(&mut self, key: &str, size: u64, expires_at: SystemTime) -> u64 {
        self.remove(key);
        let tick = self.tick();
        let key: Arc<str> = Arc::from(key);
        self.lru.insert(tick, key.clone());
        self.map.insert(
            key,
            Slot {
                size,
                expires_at,
                generation: tick,
                tick,
            },
        );
        self.bytes += size;
        tick
    }

    /// Removes the entry of `key`.
    pub(crate) fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.map.remove(key)?;
        self.lru.remove(&slot.tick);
        self.bytes -= slot.size;
        Some(slot)
    }

    /// Removes the entry of `key` if it is still the version `generation`.
    pub(crate) fn remove_if(&mut self, key: &str, generation: u64) -> Option<Slot> {
        match self.map.get(key) {
            Some(s) if s.generation == generation => self.remove(key),
            _ => None,
        }
    }

    /// Makes room for a write of `need` bytes within `capacity` and reserves it. Returns the
    /// entries evicted for it (least recently used first; their files are to be deleted), or
    /// `None` when it cannot fit even with every entry evicted because of other writes in flight
    /// (then nothing is evicted).
    pub(crate) fn reserve(&mut self, need: u64, capacity: u64) -> Option<Vec<(Arc<str>, Slot)>> {
        if self.reserved.saturating_add(need) > capacity {
            return None;
        }
        let victims = self.evict_to(capacity - self.reserved - need);
        self.reserved += need;
        Some(victims)
    }

    /// Returns `bytes` reserved by [`Index::reserve`].
    pub(crate) fn release(&mut self, bytes: u64) {
        self.reserved -= bytes;
    }

    /// Evicts least recently used entries until at most `limit` bytes remain; returns them.
    pub(crate) fn evict_to(&mut self, limit: u64) -> Vec<(Arc<str>, Slot)> {
        let mut victims = Vec::new();
        while self.bytes > limit {
            let Some((_, key)) = self.lru.pop_first() else {
                break;
            };
            let slot = self
                .map
                .remove(&key)
                .expect("the LRU order lists indexed keys");
            self.bytes -= slot.size;
            victims.push((key, slot));
        }
        victims
    }

    /// Removes every entry whose key starts with `prefix` and logs the purge; returns the keys.
    pub(crate) fn take_prefix(&mut self, prefix: &str) -> Vec<Arc<str>> {
        self.log_purge(Pattern::Prefix(Arc::from(prefix)));
        let keys: Vec<Arc<str>> = self
            .map
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in &keys {
            self.remove(k);
        }
        keys
    }

    /// Removes the entry of `key` and logs the removal.
    pub(crate) fn take(&mut self, key: &str) -> Option<Slot> {
        self.log_purge(Pattern::Exact(Arc::from(key)));
        self.remove(key)
    }

    fn log_purge(&mut self, pattern: Pattern) {
        self.purge_seq += 1;
        if self.purges.len() == PURGE_LOG {
            self.purges.pop_front();
        }
        self.purges.push_back((self.purge_seq, pattern));
    }

    /// A mark to pass to [`Index::purged_since`] later.
    pub(crate) fn purge_mark(&self) -> u64 {
        self.purge_seq
    }

    /// Whether `key` was removed or purged since `mark` (also when too many purges happened since
    /// to tell).
    pub(crate) fn purged_since(&self, mark: u64, key: &str) -> bool {
        if mark == self.purge_seq {
            return false;
        }
        match self.purges.front() {
            Some((oldest, _)) if *oldest <= mark + 1 => self
                .purges
                .iter()
                .any(|(seq, p)| *seq > mark && p.matches(key)),
            _ => true,
        }
    }
}
