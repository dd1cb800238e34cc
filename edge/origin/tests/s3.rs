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
