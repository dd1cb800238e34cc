use super::*;
use edge_kv::RedisSettings;
use edge_testinfra::Redis;

fn directory(port: u16) -> Directory {
    Directory::new(Arc::new(
        RedisStore::new(RedisSettings::loopback(port, Duration::from_secs(1))).unwrap(),
    ))
}

fn holding(seeder: &str, size: u64) -> Holding {
    Holding {
        seeder_id: seeder.into(),
        address: format!("127.0.0.1:{size}"),
        size,
        checksum: "ab".repeat(32),
        last_access: 1,
    }
}

#[test]
fn segment_refs_follow_the_streams_prefix() {
    let seg = SegmentRef::from_path("/vod/movies/", "/vod/movies/m1/720p/seg_001.ts").unwrap();
    assert_eq!(
        (seg.stream.as_str(), seg.name.as_str()),
        ("m1", "720p/seg_001.ts")
    );
    assert_eq!(seg.key(), "stream:m1:segment:720p/seg_001.ts");
    assert_eq!(seg.seeders_key(), "stream:m1:seeders");
    assert_eq!(seg.path("/vod/movies/"), "/vod/movies/m1/720p/seg_001.ts");
    for outside in [
        "/vod/other/m1/a.ts",
        "/vod/movies/m1",
        "/vod/movies//a.ts",
        "/vod/movies/m1/",
    ] {
        assert_eq!(
            SegmentRef::from_path("/vod/movies/", outside),
            None,
            "{outside}"
        );
    }
}

#[tokio::test]
async fn publish_lookup_withdraw_heartbeat_and_success_rate() {
    let redis = Redis::start();
    let dir = directory(redis.port());
    let a = SegmentRef::from_path("/vod/movies/", "/vod/movies/m1/a.ts").unwrap();
    let b = SegmentRef::from_path("/vod/movies/", "/vod/movies/m1/b.ts").unwrap();
    let ttl = Duration::from_secs(30);
    dir.publish(
        &[
            (a.clone(), holding("s1", 10)),
            (b.clone(), holding("s1", 20)),
        ],
        ttl,
    )
    .await
    .unwrap();
    dir.publish(&[(a.clone(), holding("s2", 10))], ttl)
        .await
        .unwrap();
    let holders = dir.holders(&a).await.unwrap();
    assert_eq!(holders, vec![holding("s1", 10), holding("s2", 10)]);

    dir.withdraw("s1", std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(dir.holders(&a).await.unwrap(), vec![holding("s2", 10)]);
    assert_eq!(dir.holders(&b).await.unwrap().len(), 1);

    let status = SeederStatus {
        seeder_id: "s1".into(),
        address: "127.0.0.1:1".into(),
        last_active: 42,
        started_at: 7,
        segments: 2,
        bytes: 30,
        ..SeederStatus::default()
    };
    dir.heartbeat(&status, ttl).await.unwrap();
    assert_eq!(dir.seeders().await.unwrap(), vec![status.clone()]);
    assert_eq!(dir.record("s1", 3, 1).await.unwrap(), 0.75);
    let seen = dir.seeders().await.unwrap();
    assert_eq!(
        (seen[0].ok, seen[0].failed, seen[0].success_rate),
        (3, 1, Some(0.75))
    );

    dir.deregister("s1").await.unwrap();
    assert!(dir.seeders().await.unwrap().is_empty());
}

#[tokio::test]
async fn entries_expire_unless_renewed_and_dead_seeders_are_pruned() {
    let redis = Redis::start();
    let dir = directory(redis.port());
    let a = SegmentRef::from_path("/s/", "/s/m/a.ts").unwrap();
    dir.publish(&[(a.clone(), holding("s1", 1))], Duration::from_millis(200))
        .await
        .unwrap();
    let status = SeederStatus {
        seeder_id: "gone".into(),
        ..SeederStatus::default()
    };
    dir.heartbeat(&status, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(dir.holders(&a).await.unwrap().is_empty());
    assert!(dir.seeders().await.unwrap().is_empty());
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang() {
    let port = edge_testinfra::free_port();
    let dir = directory(port);
    let a = SegmentRef::from_path("/s/", "/s/m/a.ts").unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        dir.holders(&a).await,
        Err(KvError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn slice_lists_are_published_once_renewed_and_read_only_when_whole() {
    let redis = Redis::start();
    let dir = directory(redis.port());
    let sum = "cd".repeat(32);
    let digests: Arc<[[u8; 32]]> = (0u8..3).map(|i| [i; 32]).collect();
    let list = SliceList {
        checksum: sum.clone(),
        slice: 1024,
        digests: digests.clone(),
    };
    dir.publish_slices(std::slice::from_ref(&list), Duration::from_secs(60))
        .await
        .unwrap();
    let got = dir.slices(&sum, 1024, 3).await.unwrap().unwrap();
    assert_eq!(got, list);
    // Another slice size is another key; a wrong count is no list (never a partial one).
    assert_eq!(dir.slices(&sum, 2048, 3).await.unwrap(), None);
    assert_eq!(dir.slices(&sum, 1024, 2).await.unwrap(), None);
    assert_eq!(dir.slices(&sum, 1024, 4).await.unwrap(), None);
    assert_eq!(dir.slices(&sum, 1024, 0).await.unwrap(), None);

    // A renewal extends the TTL and leaves the value alone (content-addressed).
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = slices_key(&sum, 1024);
    let _: () = redis::cmd("SETRANGE")
        .arg(&key)
        .arg(0)
        .arg(&[9u8; 32][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(1000)
        .query_async(&mut conn)
        .await
        .unwrap();
    dir.publish_slices(&[list], Duration::from_secs(60))
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 50_000, "{ttl}");
    let got = dir.slices(&sum, 1024, 3).await.unwrap().unwrap();
    assert_eq!(got.digests[0], [9; 32]);
    assert_eq!(got.digests[1..], digests[1..]);
}
