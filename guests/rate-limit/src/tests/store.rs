//! The read-compute-CAS loop against a fake (and a concurrent) store, and the responses.

use super::{NOW, NOW_MS, SEC, settings};
use crate::edge::policy::kv::{Error as KvError, Scope};
use crate::edge::policy::types::Decision;
use crate::gcra::{Outcome, admit};
use crate::limiter::{Failure, Host, spend};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A store shared by threads; compare-and-set is atomic, and every call yields to let others
/// interleave.
#[derive(Default)]
struct Store {
    kv: Mutex<HashMap<(bool, String), String>>,
    shared_down: bool,
    invalid: bool,
    /// Writes injected by a "concurrent request" before each of the next CAS calls.
    intrusions: Mutex<Vec<String>>,
    cas_calls: AtomicUsize,
    fallbacks: AtomicU64,
}

impl Store {
    fn check(&self, scope: Scope) -> Result<(), KvError> {
        if self.invalid {
            return Err(KvError::Invalid("key too long".into()));
        }
        if scope == Scope::Shared && self.shared_down {
            return Err(KvError::Unavailable("redis down".into()));
        }
        Ok(())
    }
}

impl Host for Store {
    fn now_ms(&self) -> u64 {
        NOW_MS
    }
    fn kv_get(&self, scope: Scope, key: &str) -> Result<Option<String>, KvError> {
        self.check(scope)?;
        std::thread::yield_now();
        let kv = self.kv.lock().expect("lock");
        Ok(kv.get(&(scope == Scope::Shared, key.to_owned())).cloned())
    }
    fn kv_cas(
        &self,
        scope: Scope,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl_ms: u64,
    ) -> Result<bool, KvError> {
        self.check(scope)?;
        assert!(ttl_ms >= 1);
        self.cas_calls.fetch_add(1, Ordering::Relaxed);
        std::thread::yield_now();
        let mut kv = self.kv.lock().expect("lock");
        let slot = (scope == Scope::Shared, key.to_owned());
        if let Some(intruder) = self.intrusions.lock().expect("lock").pop() {
            kv.insert(slot.clone(), intruder);
        }
        if kv.get(&slot).map(String::as_str) != expected {
            return Ok(false);
        }
        kv.insert(slot, value.to_owned());
        Ok(true)
    }
    fn count(&self, counter: &str) {
        assert_eq!(counter, "global_fallback");
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }
    fn warn(&self, _message: &str) {}
}

#[test]
fn lost_races_are_retried_then_refused() {
    let s = settings(&[("rate", "10/s"), ("cas_retries", "2")], "vod").expect("valid");
    let store = Store::default();
    // Two concurrent writers get in first; the third attempt wins.
    *store.intrusions.lock().expect("lock") = vec![NOW.to_string(), (NOW + 1).to_string()];
    assert!(matches!(spend(&store, &s, "k"), Ok(Outcome::Allow { .. })));
    assert_eq!(store.cas_calls.load(Ordering::Relaxed), 3);
    // Three: the budget of attempts is spent.
    let intruders = (2..5).map(|i| (NOW + i).to_string()).collect();
    *store.intrusions.lock().expect("lock") = intruders;
    assert_eq!(spend(&store, &s, "k"), Err(Failure::Contended));
}

#[test]
fn concurrent_requests_never_exceed_the_burst() {
    for (retries, exact) in [("16", false), ("1000", true)] {
        let s = Arc::new(
            settings(
                &[("rate", "1/h"), ("burst", "20"), ("cas_retries", retries)],
                "v",
            )
            .expect("valid"),
        );
        let store = Arc::new(Store::default());
        let admitted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, store, admitted) = (s.clone(), store.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        if let Ok(Outcome::Allow { .. }) = spend(&*store, &s, "gcra::sub:a") {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let admitted = admitted.load(Ordering::Relaxed);
        assert!(admitted <= 20, "{admitted} admitted");
        if exact {
            assert_eq!(admitted, 20);
        }
    }
}

#[test]
fn global_mode_falls_back_to_local() {
    let s = settings(
        &[("rate", "1/s"), ("burst", "1"), ("mode", "global")],
        "vod",
    )
    .expect("valid");
    let store = Store {
        shared_down: true,
        ..Store::default()
    };
    assert!(matches!(spend(&store, &s, "k"), Ok(Outcome::Allow { .. })));
    assert!(matches!(spend(&store, &s, "k"), Ok(Outcome::Deny { .. })));
    assert_eq!(store.fallbacks.load(Ordering::Relaxed), 2);
    assert!(
        store
            .kv
            .lock()
            .expect("lock")
            .contains_key(&(false, "k".to_owned()))
    );
    // A refused key is an error, not an admission.
    let invalid = Store {
        invalid: true,
        ..Store::default()
    };
    assert!(matches!(spend(&invalid, &s, "k"), Err(Failure::Store(_))));
}

fn headers(decision: &Decision) -> (u16, Vec<(String, String)>) {
    match decision {
        Decision::Allow(a) => (200, a.response_headers.clone()),
        Decision::Deny(d) => (d.status, d.headers.clone()),
        Decision::Redirect(r) => (r.status, Vec::new()),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn response_headers() {
    let s = settings(&[("rate", "2/m"), ("burst", "2")], "vod").expect("valid"); // T = 30 s
    let allow = crate::respond(Ok(admit(None, NOW, &s.limit)), &s);
    let expected = [
        ("ratelimit-limit", "2"),
        ("ratelimit-remaining", "1"),
        ("ratelimit-reset", "30"),
    ];
    assert_eq!(headers(&allow), (200, pairs(&expected)));

    let deny = crate::respond(Ok(admit(Some(NOW + 60 * SEC), NOW + 500_000, &s.limit)), &s);
    let expected = [
        ("retry-after", "30"),
        ("ratelimit-limit", "2"),
        ("ratelimit-remaining", "0"),
        ("ratelimit-reset", "60"),
    ];
    assert_eq!(headers(&deny), (429, pairs(&expected)));
    let Decision::Deny(d) = &deny else { panic!() };
    assert_eq!(d.reason, "rate_limited");

    let contended = crate::respond(Err(Failure::Contended), &s);
    assert_eq!(headers(&contended).0, 429);
    assert!(
        headers(&contended)
            .1
            .contains(&("retry-after".into(), "1".into()))
    );
    let broken = crate::respond(Err(Failure::Store("invalid".into())), &s);
    assert_eq!(headers(&broken).0, 503);
}
