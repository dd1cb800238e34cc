//! The shared scope against a real redis-server started for the test.

use edge_kv::{Kv, KvError, RedisSettings, Scope};
use edge_testinfra::Redis;
use std::{sync::Arc, time::Duration};

const T: Duration = Duration::from_secs(60);

fn settings(port: u16) -> RedisSettings {
    RedisSettings {
        host: "127.0.0.1".into(),
        port,
        password: None,
        db: 0,
        timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        retry_after: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn operations_on_redis() {
    let redis = Redis::start();
    let kv = Kv::with_redis(100, settings(redis.port())).unwrap();
    assert_eq!(kv.shared_backend(), "redis");
    assert_eq!(kv.get(Scope::Shared, "k").await.unwrap(), None);
    kv.set(Scope::Shared, "k", "v", T).await.unwrap();
    assert_eq!(
        kv.get(Scope::Shared, "k").await.unwrap().as_deref(),
        Some("v")
    );
    assert_eq!(
        kv.get(Scope::Local, "k").await.unwrap(),
        None,
        "local is not redis"
    );
    assert_eq!(kv.increment(Scope::Shared, "n", 3, T).await.unwrap(), 3);
    assert_eq!(kv.increment(Scope::Shared, "n", 4, T).await.unwrap(), 7);
    assert!(matches!(
        kv.increment(Scope::Shared, "k", 1, T).await,
        Err(KvError::Invalid(_))
    ));
    assert!(
        kv.compare_and_set(Scope::Shared, "c", None, "1", T)
            .await
            .unwrap()
    );
    assert!(
        !kv.compare_and_set(Scope::Shared, "c", None, "x", T)
            .await
            .unwrap()
    );
    assert!(
        kv.compare_and_set(Scope::Shared, "c", Some("1"), "2", T)
            .await
            .unwrap()
    );
    kv.set(Scope::Shared, "short", "v", Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(kv.get(Scope::Shared, "short").await.unwrap(), None);
}

/// Two edges (two clients) incrementing one counter concurrently see every increment exactly once,
/// and compare-and-set lets exactly one of many racers win.
#[tokio::test]
async fn atomic_across_clients() {
    let redis = Redis::start();
    let a = Arc::new(Kv::with_redis(100, settings(redis.port())).unwrap());
    let b = Arc::new(Kv::with_redis(100, settings(redis.port())).unwrap());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let kv = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let n = kv.increment(Scope::Shared, "n", 1, T).await.unwrap();
            let won = kv
                .compare_and_set(Scope::Shared, "lease", None, &i.to_string(), T)
                .await
                .unwrap();
            (n, won)
        }));
    }
    let mut seen = Vec::new();
    let mut winners = 0;
    for t in tasks {
        let (n, won) = t.await.unwrap();
        seen.push(n);
        winners += usize::from(won);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=200).collect::<Vec<i64>>());
    assert_eq!(winners, 1);
}

/// Redis down: operations fail fast as unavailable; once it is back, they work again.
#[tokio::test]
async fn unavailable_then_recovers() {
    let mut redis = Redis::start();
    let port = redis.port();
    let kv = Kv::with_redis(100, settings(port)).unwrap();
    kv.set(Scope::Shared, "k", "v", T).await.unwrap();
    redis.stop();
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert!(matches!(
            kv.get(Scope::Shared, "k").await,
            Err(KvError::Unavailable(_))
        ));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(kv.increment(Scope::Local, "n", 1, T).await.unwrap(), 1);
    let _redis = Redis::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match kv.set(Scope::Shared, "k", "back", T).await {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() > deadline => panic!("never recovered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        kv.get(Scope::Shared, "k").await.unwrap().as_deref(),
        Some("back")
    );
}
