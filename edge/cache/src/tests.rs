use super::*;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone, Debug)]
struct Obj(Bytes);

impl Weighted for Obj {
    fn weight(&self) -> usize {
        self.0.len()
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Err {
    Origin(&'static str),
    Task(String),
}

impl From<TaskFailed> for Err {
    fn from(e: TaskFailed) -> Self {
        Self::Task(e.0)
    }
}

impl FetchFailure for Err {
    fn serve_stale(&self) -> bool {
        *self == Self::Origin("down")
    }
}

fn cache() -> Cache<Obj, Err> {
    Cache::new(
        CacheConfig {
            capacity: 1 << 20,
            max_object: 64 << 10,
            estimated_entries: 64,
            stale_if_error: Duration::from_secs(60),
        },
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_fetch_once() {
    let cache = cache();
    let fetches = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, fetches, gate) = (cache.clone(), fetches.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch("/k", move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Ok((Obj(Bytes::from_static(b"v")), Duration::from_secs(60)))
                })
                .await
        }));
    }
    // Every caller has either started the one fetch or is waiting on it once the fetch is running.
    while fetches.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    let mut statuses = Vec::new();
    for t in tasks {
        let (v, s) = t.await.unwrap().unwrap();
        assert_eq!(v.0, "v");
        statuses.push(s);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(statuses.iter().filter(|s| **s == Status::Miss).count(), 1);
}

#[tokio::test]
async fn errors_are_shared_and_not_cached() {
    let cache = cache();
    let r = cache
        .get_or_fetch("/k", || async {
            Err::<(Obj, Duration), _>(Err::Origin("down"))
        })
        .await;
    assert_eq!(r.unwrap_err(), Err::Origin("down"));
    let (_, s) = cache
        .get_or_fetch("/k", || async {
            Ok((Obj(Bytes::from_static(b"v")), Duration::from_secs(1)))
        })
        .await
        .unwrap();
    assert_eq!(s, Status::Miss);
}

#[tokio::test]
async fn expired_entries_are_refetched() {
    let cache = cache();
    let fill = |ttl| move || async move { Ok((Obj(Bytes::from_static(b"v")), ttl)) };
    cache
        .get_or_fetch("/k", fill(Duration::from_nanos(1)))
        .await
        .unwrap();
    // Stale by the time of the next lookup: a 1 ns lifetime needs no sleep.
    let (_, s) = cache
        .get_or_fetch("/k", fill(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(s, Status::Miss);
    let (_, s) = cache
        .get_or_fetch("/k", fill(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(s, Status::Hit);
}

#[tokio::test]
async fn oversize_objects_are_served_not_kept() {
    let cache = cache();
    let big = Bytes::from(vec![0u8; 128 << 10]);
    let fill = move || {
        let big = big.clone();
        async move { Ok((Obj(big), Duration::from_secs(60))) }
    };
    cache.get_or_fetch("/big", fill.clone()).await.unwrap();
    let (_, s) = cache.get_or_fetch("/big", fill).await.unwrap();
    assert_eq!(s, Status::Miss);
}

#[tokio::test]
async fn a_panicking_fetch_fails_its_waiters_cleanly() {
    let cache = cache();
    let r = cache.get_or_fetch("/k", || async { panic!("boom") }).await;
    assert!(matches!(r, Err(Err::Task(_))));
    let (_, s) = cache
        .get_or_fetch("/k", || async {
            Ok((Obj(Bytes::from_static(b"v")), Duration::from_secs(1)))
        })
        .await
        .unwrap();
    assert_eq!(s, Status::Miss);
}

#[tokio::test]
async fn purge_removes() {
    let cache = cache();
    cache
        .get_or_fetch("/k", || async {
            Ok((Obj(Bytes::from_static(b"v")), Duration::from_secs(60)))
        })
        .await
        .unwrap();
    assert!(cache.get("/k").is_some());
    assert!(cache.purge("/k"));
    assert!(cache.get("/k").is_none());
}

#[tokio::test]
async fn byte_accounting_survives_refreshes_and_purges() {
    let registry = prometheus::Registry::new();
    let metrics = CacheMetrics::new(&registry, "memory").unwrap();
    let cache: Cache<Obj, Err> = Cache::new(
        CacheConfig {
            capacity: 1 << 20,
            max_object: 64 << 10,
            estimated_entries: 64,
            stale_if_error: Duration::ZERO,
        },
        Some(metrics),
    );
    let stored = || {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("edge_cache_stored_bytes"))
            .unwrap()
            .to_owned();
        line.rsplit(' ').next().unwrap().parse::<i64>().unwrap()
    };
    for _ in 0..5 {
        // Each refresh replaces the entry in place (a 1 ns lifetime makes the next call refetch).
        cache
            .get_or_fetch("/live.m3u8", || async {
                Ok((Obj(Bytes::from(vec![0u8; 3000])), Duration::from_nanos(1)))
            })
            .await
            .unwrap();
    }
    assert_eq!(stored(), 3000);
    assert!(cache.purge("/live.m3u8"));
    assert!(!cache.purge("/live.m3u8"));
    assert_eq!(stored(), 0);
    assert!(cache.get("/live.m3u8").is_none());
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_answered_by_an_expired_copy_but_not_found_is_not() {
    let cache = cache();
    let value = || async { Ok((Obj(Bytes::from_static(b"old")), Duration::from_secs(1))) };
    cache.get_or_fetch("/a", value).await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(cache.get("/a").is_none(), "expired");
    let (v, status) = cache
        .get_or_fetch("/a", || async { Err(Err::Origin("down")) })
        .await
        .unwrap();
    assert_eq!((v.0.as_ref(), status), (&b"old"[..], Status::Stale));
    let gone = cache
        .get_or_fetch("/a", || async { Err(Err::Origin("not found")) })
        .await;
    assert_eq!(gone.unwrap_err(), Err::Origin("not found"));
    tokio::time::advance(Duration::from_secs(120)).await;
    let too_old = cache
        .get_or_fetch("/a", || async { Err(Err::Origin("down")) })
        .await;
    assert_eq!(
        too_old.unwrap_err(),
        Err::Origin("down"),
        "past stale_if_error"
    );
}

#[tokio::test]
async fn purge_by_prefix_removes_only_that_subtree() {
    let cache = cache();
    for k in [
        "/vod/m1/a.ts",
        "/vod/m1/b.ts",
        "/vod/m10/a.ts",
        "/vod/m2/a.ts",
    ] {
        cache
            .get_or_fetch(k, || async {
                Ok((Obj(Bytes::from_static(b"v")), Duration::from_secs(60)))
            })
            .await
            .unwrap();
    }
    assert_eq!(cache.purge_prefix("/vod/m1/"), 2);
    assert!(cache.get("/vod/m1/a.ts").is_none() && cache.get("/vod/m1/b.ts").is_none());
    assert!(cache.get("/vod/m10/a.ts").is_some() && cache.get("/vod/m2/a.ts").is_some());
    assert_eq!(cache.purge_prefix("/vod/m1/"), 0);
    let stale = cache
        .get_or_fetch("/vod/m1/a.ts", || async { Err(Err::Origin("down")) })
        .await;
    assert!(stale.is_err(), "a purged entry is never served stale");
    assert_eq!(cache.purge_prefix("/"), 2);
}

/// A fetch of `value` that waits for `gate` before answering.
fn gated(
    value: &'static str,
    gate: Arc<tokio::sync::Notify>,
) -> impl FnOnce() -> BoxFuture<'static, Result<(Obj, Duration), Err>> {
    move || {
        async move {
            gate.notified().await;
            Ok((
                Obj(Bytes::from_static(value.as_bytes())),
                Duration::from_secs(60),
            ))
        }
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_in_flight_during_a_purge_is_not_kept() {
    for by_prefix in [false, true] {
        let cache = cache();
        let purge = |cache: &Cache<Obj, Err>| {
            if by_prefix {
                cache.purge_prefix("/vod/");
            } else {
                cache.purge("/vod/k");
            }
        };
        // A fetch started before the purge (it may have read the old object)...
        let before = Arc::new(tokio::sync::Notify::new());
        let old = tokio::spawn({
            let (cache, fetch) = (cache.clone(), gated("old", before.clone()));
            async move { cache.get_or_fetch("/vod/k", fetch).await }
        });
        while cache.inner.flights.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        purge(&cache);
        // ...is not joined by a caller arriving after the purge, who fetches anew,
        let after = Arc::new(tokio::sync::Notify::new());
        let new = tokio::spawn({
            let (cache, fetch) = (cache.clone(), gated("new", after.clone()));
            async move { cache.get_or_fetch("/vod/k", fetch).await }
        });
        while cache.inner.flights.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // ...answers its own callers but is not kept, and its landing leaves the new fetch
        // in place for the callers that come next.
        before.notify_one();
        let (v, s) = old.await.unwrap().unwrap();
        assert_eq!((v.0.as_ref(), s), (&b"old"[..], Status::Miss));
        assert!(cache.get("/vod/k").is_none(), "by_prefix: {by_prefix}");
        let joined = tokio::spawn({
            let cache = cache.clone();
            async move {
                cache
                    .get_or_fetch("/vod/k", || async { Err(Err::Origin("not asked")) })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        after.notify_one();
        let (v, s) = new.await.unwrap().unwrap();
        assert_eq!((v.0.as_ref(), s), (&b"new"[..], Status::Miss));
        let (v, s) = joined.await.unwrap().unwrap();
        assert_eq!((v.0.as_ref(), s), (&b"new"[..], Status::Coalesced));
        assert_eq!(cache.get("/vod/k").unwrap().0, "new");
    }
}

#[tokio::test]
async fn what_is_evicted_or_not_admitted_goes_to_the_eviction_hook() {
    let cache: Cache<Obj, Err> = Cache::new(
        CacheConfig {
            capacity: 8 * 1024,
            max_object: 8 * 1024,
            estimated_entries: 16,
            stale_if_error: Duration::ZERO,
        },
        None,
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    assert!(cache.on_evict(move |key, _, _| s.lock().unwrap().push(key.to_owned())));
    for i in 0..20 {
        let key = format!("/k{i}");
        cache
            .get_or_fetch(&key, || async {
                Ok::<_, Err>((Obj(Bytes::from(vec![0u8; 2048])), Duration::from_secs(60)))
            })
            .await
            .unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    // 20 values of 2 KiB in 8 KiB: at least 16 let go of, each once; none of them still cached.
    assert!(seen.len() >= 16, "{seen:?}");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len());
    assert!(seen.iter().all(|k| cache.get(k).is_none()), "{seen:?}");
    // Purges are not evictions.
    let before = seen.len();
    cache.purge_prefix("/k");
    assert_eq!(before, seen.len());
}

/// A value that counts its live copies.
#[derive(Clone)]
struct Tracked {
    bytes: usize,
    _alive: Arc<()>,
}

impl Weighted for Tracked {
    fn weight(&self) -> usize {
        self.bytes
    }
}

#[tokio::test]
async fn evicted_values_are_freed_at_once_not_when_tinyufo_reclaims_its_buckets() {
    // TinyUFO's map retires removed buckets and frees them in batches, later; a value of a
    // retired bucket must not live on with it (with 4 MiB slices that was ~200 MiB).
    let cache: Cache<Tracked, Err> = Cache::new(
        CacheConfig {
            capacity: 1 << 20,
            max_object: 64 << 10,
            estimated_entries: 64,
            stale_if_error: Duration::ZERO,
        },
        None,
    );
    let alive = Arc::new(());
    for i in 0..300 {
        let value = Tracked {
            bytes: 64 << 10,
            _alive: alive.clone(),
        };
        let key = format!("/k{}", i % 150);
        let (got, _) = cache
            .get_or_fetch(
                &key,
                move || async move { Ok((value, Duration::from_secs(60))) },
            )
            .await
            .unwrap();
        drop(got);
        if i % 7 == 0 {
            cache.purge(&format!("/k{}", i % 150));
        }
    }
    let held = cache.snapshot().len();
    let copies = Arc::strong_count(&alive) - 1;
    assert!(held <= 16, "{held} entries held");
    assert_eq!(
        copies, held,
        "values alive beyond the entries the cache holds"
    );
}
