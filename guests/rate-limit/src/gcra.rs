//! The generic cell rate algorithm on a theoretical arrival time (TAT), in microseconds.
//!
//! With emission interval `T` (period / rate) and a burst of `b`, a request at `now` is admitted
//! iff `max(tat, now) + T - b·T <= now`; admitting it moves the TAT to `max(tat, now) + T`. A
//! quiet key can therefore take `b` requests at once, then one every `T`.

/// A limit: one request per `interval_us`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) interval_us: u64,
    pub(crate) burst: u64,
}

/// What [`admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allow {
        /// The TAT to store.
        new_tat: u64,
        /// Requests that could still be admitted right now.
        remaining: u64,
        /// Until the whole burst is available again.
        reset_us: u64,
    },
    Deny {
        /// Until this request would be admitted.
        retry_after_us: u64,
        /// Until the whole burst is available again.
        reset_us: u64,
    },
}

impl Limit {
    /// `b·T`: how far ahead of `now` the TAT may run.
    fn tolerance(&self) -> u64 {
        self.interval_us.saturating_mul(self.burst)
    }
}

/// Decides a request at `now` against the stored `tat` (none: the key is idle).
///
/// A TAT further ahead than `now + b·T` cannot come from this algorithm (at most from another
/// edge's clock running ahead, or a corrupted value): it is clamped there, which never admits
/// more than a full burst.
pub(crate) fn admit(tat: Option<u64>, now: u64, limit: &Limit) -> Outcome {
    let tolerance = limit.tolerance();
    let tat = tat.unwrap_or(0).max(now).min(now.saturating_add(tolerance));
    let new_tat = tat.saturating_add(limit.interval_us);
    let allow_at = new_tat.saturating_sub(tolerance);
    if allow_at <= now {
        Outcome::Allow {
            new_tat,
            remaining: (now.saturating_add(tolerance) - new_tat) / limit.interval_us,
            reset_us: new_tat - now,
        }
    } else {
        Outcome::Deny {
            retry_after_us: allow_at - now,
            reset_us: tat - now,
        }
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Whole milliseconds, rounded up, at least 1 (a kv TTL of 0 would mean "the longest").
pub(crate) fn ttl_ms(us: u64) -> u64 {
    us.div_ceil(1000).max(1)
}
