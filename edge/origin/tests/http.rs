//! The HTTP origin against a server that ignores `Range` (Python's `http.server`): every slice
//! is still exactly the bytes asked for, read from the whole-object answer.

use edge_origin::{HttpSettings, Origin, Retry, StoreOrigin};
use edge_testinfra::PlainHttp;
use futures::StreamExt;
use std::time::Duration;

async fn read(origin: &StoreOrigin, path: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let opened = origin.open(path, Some(range.clone()), None).await.unwrap();
    assert_eq!(opened.range, range.start..range.end.min(opened.info.size));
    let mut body = opened.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn ranges_from_an_origin_that_ignores_range() {
    let dir = tempfile::tempdir().unwrap();
    let object: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::create_dir_all(dir.path().join("vod")).unwrap();
    std::fs::write(dir.path().join("vod/movie.mp4"), &object).unwrap();
    let server = PlainHttp::start(dir.path());
    let origin = StoreOrigin::http(
        &HttpSettings {
            base_url: server.url(),
        },
        Duration::from_secs(5),
        Retry::default(),
    )
    .unwrap();

    // The first slice, one in the middle, the last (its end past the object), a whole read.
    assert_eq!(
        read(&origin, "/vod/movie.mp4", 0..1 << 20).await,
        object[..1 << 20]
    );
    assert_eq!(
        read(&origin, "/vod/movie.mp4", 1_048_576..2_097_152).await,
        object[1_048_576..2_097_152]
    );
    assert_eq!(
        read(&origin, "/vod/movie.mp4", 2_097_152..u64::MAX).await,
        object[2_097_152..]
    );
    let whole = origin.get("/vod/movie.mp4").await.unwrap();
    assert_eq!(whole.body.len(), object.len());
    assert!(matches!(
        origin.open("/vod/none.mp4", Some(0..10), None).await.err(),
        Some(edge_origin::OriginError::NotFound)
    ));
}
