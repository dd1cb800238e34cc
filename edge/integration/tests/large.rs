//! Objects larger than a slice through the whole edge, with real clients: ffmpeg seeking into a
//! progressive MP4, curl ranges, a sparse object over 4 GiB read end to end and by range.

use edge_integration::{TestEdge, client, token};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A directory holding `vod/movies/big/`: `movie.mp4` (a real 20 s MP4 made with ffmpeg, its
/// index in front) and `huge.mp4` (sparse, 4 GiB + 12345 bytes of zeros).
fn origin() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let movie = dir.path().join("vod/movies/big");
    std::fs::create_dir_all(&movie).unwrap();
    let mp4 = movie.join("movie.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=20:size=640x360:rate=25",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "1500k",
            "-g",
            "25",
            "-movflags",
            "+faststart",
        ])
        .arg(&mp4)
        .status()
        .expect("ffmpeg must be installed (the README test command installs it)");
    assert!(status.success());
    let huge = std::fs::File::create(movie.join("huge.mp4")).unwrap();
    huge.set_len(HUGE).unwrap();
    (dir, mp4)
}

const HUGE: u64 = (4 << 30) + 12_345;

/// An edge over `root` whose objects are cached in 64 KiB slices.
async fn edge(root: &Path) -> TestEdge {
    TestEdge::start_with_env(
        &edge_integration::repo_root().join("policies/default.toml"),
        "[cache]\nslice = \"64 KiB\"\n",
        &[("EDGE_ORIGIN_ROOT", root.to_str().unwrap())],
    )
    .await
    .unwrap()
}

fn url(t: &TestEdge, name: &str) -> String {
    format!(
        "{}/vod/movies/big/{name}?token={}",
        t.http(),
        token("/vod/movies/big/", 600)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_seeks_into_a_large_mp4_and_curl_ranges_are_exact() {
    let (dir, mp4) = origin();
    let t = edge(dir.path()).await;
    let movie = url(&t, "movie.mp4");
    let bytes = std::fs::read(&mp4).unwrap();
    assert!(
        bytes.len() > 40 * (64 << 10),
        "{} bytes: many slices",
        bytes.len()
    );

    // ffmpeg seeks 15 s in (it reads the index in front, then jumps with a range request).
    let out = tempfile::tempdir().unwrap();
    let frame = out.path().join("frame.png");
    let seek = tokio::task::spawn_blocking({
        let (movie, frame) = (movie.clone(), frame.clone());
        move || {
            Command::new("ffmpeg")
                .args([
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-ss",
                    "15",
                    "-i",
                    &movie,
                ])
                .args(["-frames:v", "1", "-y"])
                .arg(&frame)
                .status()
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(seek.success(), "ffmpeg could not seek into {movie}");
    assert!(std::fs::metadata(&frame).unwrap().len() > 1000);

    // curl: ranges across slice boundaries, an open-ended one, a suffix, one past the end.
    let len = bytes.len();
    for (range, want) in [
        ("100-200", &bytes[100..=200]),
        ("65000-200000", &bytes[65_000..=200_000]),
        (&format!("{}-", len - 70_000)[..], &bytes[len - 70_000..]),
        ("-1000", &bytes[len - 1000..]),
    ] {
        let got = Command::new("curl")
            .args(["-sf", "-r", range, &movie])
            .output()
            .unwrap();
        assert!(got.status.success(), "curl -r {range}");
        assert!(
            got.stdout == want,
            "curl -r {range}: {} bytes",
            got.stdout.len()
        );
    }
    let past = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-r"])
        .arg(format!("{}-", len + 10))
        .arg(&movie)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&past.stdout), "416");
    // The whole file, byte for byte.
    let whole = client().get(&movie).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.content_length(), Some(len as u64));
    assert!(whole.bytes().await.unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_over_4_gib_streams_whole_and_by_range() {
    let (dir, _) = origin();
    let t = edge(dir.path()).await;
    let huge = url(&t, "huge.mp4");

    let tail = client()
        .get(&huge)
        .header("range", format!("bytes={}-", HUGE - 100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(
        tail.headers()["content-range"].to_str().unwrap(),
        format!("bytes {}-{}/{HUGE}", HUGE - 100_000, HUGE - 1)
    );
    assert_eq!(tail.bytes().await.unwrap().len(), 100_000);

    let mut resp = client().get(&huge).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(HUGE));
    let (mut n, mut nonzero) = (0u64, 0u64);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        n += chunk.len() as u64;
        nonzero += chunk.iter().filter(|b| **b != 0).count() as u64;
    }
    assert_eq!((n, nonzero), (HUGE, 0));
}
