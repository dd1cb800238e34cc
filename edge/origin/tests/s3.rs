//! The S3 origin against a real S3-compatible server (`s3s-fs`, signatures checked).

use edge_origin::{KeyMap, Origin, OriginError, Retry, S3Settings, StoreOrigin, Tier};
use edge_testinfra::S3;
use std::time::{Duration, Instant};

fn settings(s3: &S3, secret: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(s3.endpoint()),
        bucket: "vod".into(),
        region: "us-east-1".into(),
        access_key: Some(S3::ACCESS_KEY.into()),
        secret_key: Some(secret.into()),
        virtual_hosted: false,
    }
}

fn retry() -> Retry {
    Retry {
        retries: 2,
        backoff: Duration::from_millis(50),
    }
}

#[tokio::test]
async fn reads_objects_through_the_bucket_path_style() {
    let s3 = S3::start("vod");
    s3.put("vod", "movies/m1/index.m3u8", b"#EXTM3U\n");
    let origin = StoreOrigin::s3(
        &settings(&s3, S3::SECRET_KEY),
        Duration::from_secs(2),
        retry(),
    )
    .unwrap()
    .with_keys(KeyMap {
        strip_prefix: "/vod".into(),
        key_prefix: String::new(),
    });
    let obj = origin.get("/vod/movies/m1/index.m3u8").await.unwrap();
    assert_eq!(obj.body, "#EXTM3U\n");
    assert_eq!(obj.tier, Tier::Origin);
    assert!(obj.last_modified.is_some());
    assert_eq!(
        origin.get("/vod/movies/m1/missing.ts").await.unwrap_err(),
        OriginError::NotFound
    );
    assert_eq!(
        origin.get("/other/movies/m1/index.m3u8").await.unwrap_err(),
        OriginError::NotFound
    );
    origin.check().await.unwrap();
    assert!(origin.describe().starts_with("s3://vod@http://127.0.0.1:"));
}

#[tokio::test]
async fn a_wrong_secret_is_an_outage_not_a_missing_object() {
    let s3 = S3::start("vod");
    s3.put("vod", "a.ts", b"x");
    let origin = StoreOrigin::s3(
        &settings(&s3, "wrong-secret"),
        Duration::from_secs(2),
        retry(),
    )
    .unwrap();
    let err = origin.get("/a.ts").await.unwrap_err();
    assert!(err.is_outage(), "{err:?}");
}

#[tokio::test]
async fn a_stopped_server_fails_within_the_retry_budget_and_recovers() {
    let mut s3 = S3::start("vod");
    s3.put("vod", "a.ts", b"segment");
    let origin = StoreOrigin::s3(
        &settings(&s3, S3::SECRET_KEY),
        Duration::from_millis(500),
        retry(),
    )
    .unwrap();
    assert_eq!(origin.get("/a.ts").await.unwrap().body, "segment");
    s3.stop();
    let started = Instant::now();
    let err = origin.get("/a.ts").await.unwrap_err();
    assert!(err.is_outage(), "{err:?}");
    // 3 attempts of at most 500 ms plus 50 + 100 ms of backoff.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    s3.restart();
    assert_eq!(origin.get("/a.ts").await.unwrap().body, "segment");
}

#[tokio::test]
async fn ranges_of_a_large_object_are_ranged_reads_and_an_entity_tag_pins_the_version() {
    use futures::StreamExt;
    let s3 = S3::start("vod");
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
    s3.put("vod", "movies/m1/movie.mp4", &body);
    s3.put("vod", "movies/m1/empty.ts", b"");
    let origin = StoreOrigin::s3(
        &settings(&s3, S3::SECRET_KEY),
        Duration::from_secs(2),
        retry(),
    )
    .unwrap();
    let read = |o: edge_origin::Opened| async move {
        let mut all = Vec::new();
        let mut b = o.body;
        while let Some(c) = b.next().await {
            all.extend_from_slice(&c.unwrap());
        }
        all
    };
    let part = origin
        .open("/movies/m1/movie.mp4", Some(1_000_000..2_000_000), None)
        .await
        .unwrap();
    assert_eq!(part.info.size, 3_000_000, "the whole object's size");
    assert_eq!(part.range, 1_000_000..2_000_000);
    let etag = part.info.etag.clone().expect("S3 has entity tags");
    assert_eq!(read(part).await, &body[1_000_000..2_000_000]);
    // The last slice: the end is clamped to the size.
    let last = origin
        .open(
            "/movies/m1/movie.mp4",
            Some(2_500_000..3_500_000),
            Some(&etag),
        )
        .await
        .unwrap();
    assert_eq!(last.range, 2_500_000..3_000_000);
    assert_eq!(read(last).await, &body[2_500_000..]);
    // s3s-fs ignores If-Match (AWS and MinIO answer 412, which is `Changed`): whoever resumes
    // a read compares the entity tag of the answer too.
    let again = origin
        .open("/movies/m1/movie.mp4", Some(0..10), Some("not-the-etag"))
        .await;
    match again {
        Err(e) => assert_eq!(e, OriginError::Changed),
        Ok(o) => assert_eq!(o.info.etag.as_deref(), Some(etag.as_str())),
    }
    let empty = origin
        .open("/movies/m1/empty.ts", Some(0..1 << 20), None)
        .await
        .unwrap();
    assert_eq!((empty.info.size, empty.range.clone()), (0, 0..0));
    assert!(read(empty).await.is_empty());
}
