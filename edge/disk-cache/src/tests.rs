use super::*;
use sha2::{Digest, Sha256};
use std::{
    io::{Seek, SeekFrom},
    path::Path,
    process::Command,
    time::UNIX_EPOCH,
};

const SUSPEND: Duration = Duration::from_millis(200);

/// A time with whole milliseconds, so it survives the file format unchanged.
fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn meta(expires_ms: u64) -> Meta {
    Meta {
        etag: Some("\"v1\"".into()),
        last_modified: Some(at(1_600_000_000_000)),
        cache_control: Some("max-age=60".into()),
        stored_at: at(1_700_000_000_123),
        expires_at: at(expires_ms),
        source: "origin".into(),
        object_size: None,
    }
}

fn fresh() -> Meta {
    meta(4_000_000_000_000)
}

fn body(byte: u8, len: usize) -> Bytes {
    Bytes::from(vec![byte; len])
}

async fn open_with(dir: &Path, capacity: u64, max_object: u64) -> (DiskCache, DiskMetrics) {
    let metrics = DiskMetrics::default();
    let cfg = DiskConfig {
        dir: dir.to_owned(),
        capacity,
        max_object,
        write_suspend: SUSPEND,
    };
    let cache = DiskCache::open(cfg, metrics.clone()).await.expect("open");
    (cache, metrics)
}

async fn open(dir: &Path, capacity: u64) -> (DiskCache, DiskMetrics) {
    open_with(dir, capacity, capacity).await
}

fn entry_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(dir).unwrap().flatten() {
        let name = shard.file_name().into_string().unwrap();
        if shard.file_type().unwrap().is_dir() && format::is_shard_name(&name) {
            files.extend(
                std::fs::read_dir(shard.path())
                    .unwrap()
                    .map(|f| f.unwrap().path()),
            );
        }
    }
    files.sort();
    files
}

fn tmp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(TMP_DIR)).unwrap().count()
}

/// The index, the gauges and the files on disk agree, and no temporary file is left.
fn assert_consistent(dir: &Path, cache: &DiskCache, metrics: &DiskMetrics) {
    let files = entry_files(dir);
    let on_disk: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(files.len(), cache.len(), "entry files vs index");
    assert_eq!(on_disk, cache.bytes(), "bytes on disk vs index");
    assert_eq!(metrics.entries.get(), cache.len() as i64, "entries gauge");
    assert_eq!(metrics.bytes.get(), cache.bytes() as i64, "bytes gauge");
    assert!(cache.bytes() <= cache.config().capacity);
    assert_eq!(tmp_files(dir), 0, "temporary files left");
}

fn path_of(dir: &Path, key: &str) -> PathBuf {
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    dir.join(&hash[..2]).join(hash)
}

#[tokio::test]
async fn layout_and_file_format() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, metrics) = open(dir.path(), 1 << 20).await;
    let key = "/vod/movies/m1/720p/seg_001.ts";
    cache.put(key, body(7, 1000), fresh()).await.unwrap();

    let path = path_of(dir.path(), key);
    assert_eq!(entry_files(dir.path()), vec![path.clone()]);
    let raw = std::fs::read(&path).unwrap();
    assert_eq!(&raw[..4], b"EDGC");
    assert_eq!(raw[4], 2);
    let n = u32::from_le_bytes(raw[5..9].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&raw[9..9 + n]).unwrap();
    assert_eq!(header["key"], key);
    assert_eq!(header["etag"], "\"v1\"");
    assert_eq!(header["last_modified_ms"], 1_600_000_000_000u64);
    assert_eq!(header["cache_control"], "max-age=60");
    assert_eq!(header["stored_at_ms"], 1_700_000_000_123u64);
    assert_eq!(header["expires_at_ms"], 4_000_000_000_000u64);
    assert_eq!(header["source"], "origin");
    assert_eq!(header["body_len"], 1000);
    assert_eq!(
        header["xxh3_128"],
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&[7u8; 1000]))
    );
    assert!(header.get("sha256").is_none());
    assert_eq!(&raw[9 + n..], &vec![7u8; 1000][..]);
    assert_eq!(cache.bytes(), raw.len() as u64);

    let got = cache.get(key).await.unwrap();
    assert_eq!(got.body, body(7, 1000));
    assert_eq!(got.meta, fresh());
    assert_eq!(cache.expires_at(key), Some(fresh().expires_at));
    assert_consistent(dir.path(), &cache, &metrics);
}

#[tokio::test]
async fn meta_without_optional_fields_and_expired_entries_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, metrics) = open(dir.path(), 1 << 20).await;
    let expired = Meta::new(at(1_000), at(2_000), "seeder");
    cache
        .put("/old.m3u8", body(1, 10), expired.clone())
        .await
        .unwrap();
    let got = cache
        .get("/old.m3u8")
        .await
        .expect("expired entries are returned");
    assert_eq!(got.meta, expired);
    assert!(!got.meta.is_fresh(SystemTime::now()));
    cache.put("/empty", Bytes::new(), fresh()).await.unwrap();
    assert_eq!(cache.get("/empty").await.unwrap().body, Bytes::new());
    assert!(cache.get("/missing").await.is_none());
    assert_consistent(dir.path(), &cache, &metrics);
}

#[tokio::test]
async fn replacing_an_entry_updates_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, metrics) = open(dir.path(), 1 << 20).await;
    cache.put("/k", body(1, 1000), fresh()).await.unwrap();
    let small = cache.bytes();
    cache.put("/k", body(2, 5000), fresh()).await.unwrap();
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.bytes(), small + 4000);
    assert_eq!(cache.get("/k").await.unwrap().body, body(2, 5000));
    assert_consistent(dir.path(), &cache, &metrics);
}

#[tokio::test]
async fn reopen_rebuilds_the_index_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, _) = open(d, 1 << 20).await;
    let old = Meta::new(at(1_000), at(2_000), "seeder");
    cache.put("/a", body(1, 3000), fresh()).await.unwrap();
    cache
        .put("/b/c.ts", body(2, 4000), old.clone())
        .await
        .unwrap();
    cache
        .put("/truncated", body(3, 500), fresh())
        .await
        .unwrap();
    let bytes_before = cache.bytes();
    drop(cache);

    // A write torn by a crash, a garbage file, a valid entry under the wrong name, a truncated
    // entry.
    std::fs::write(d.join(TMP_DIR).join("999-0"), b"EDGC\x01partial").unwrap();
    std::fs::create_dir_all(d.join("ab")).unwrap();
    std::fs::write(d.join("ab").join("garbage"), b"not an entry at all").unwrap();
    let misnamed = d.join("00").join("0".repeat(64));
    std::fs::create_dir_all(misnamed.parent().unwrap()).unwrap();
    std::fs::copy(path_of(d, "/a"), &misnamed).unwrap();
    let truncated = path_of(d, "/truncated");
    let len = std::fs::metadata(&truncated).unwrap().len();
    File::options()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len - 1)
        .unwrap();

    let (cache, metrics) = open(d, 1 << 20).await;
    assert_eq!(tmp_files(d), 0, "the torn temporary file is removed");
    assert!(!d.join("ab").join("garbage").exists(), "garbage is removed");
    assert!(!misnamed.exists(), "a misnamed entry is removed");
    assert!(!truncated.exists(), "a truncated entry is removed");
    assert_eq!(metrics.corrupt.get(), 3);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.bytes(), bytes_before - len);
    let a = cache.get("/a").await.unwrap();
    assert_eq!((a.body, a.meta), (body(1, 3000), fresh()));
    let b = cache.get("/b/c.ts").await.unwrap();
    assert_eq!((b.body, b.meta), (body(2, 4000), old));
    assert!(cache.get("/truncated").await.is_none());
    assert_consistent(d, &cache, &metrics);
}

#[tokio::test]
async fn reopen_evicts_the_oldest_down_to_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, _) = open(d, 1 << 20).await;
    for i in 0..4 {
        cache
            .put(&format!("/k{i}"), body(i, 1000), fresh())
            .await
            .unwrap();
    }
    let size = cache.bytes() / 4;
    drop(cache);
    // Last written: k1, k2, k3, then k0.
    let base = SystemTime::now() - Duration::from_secs(3600);
    for (i, secs) in [(0, 4), (1, 1), (2, 2), (3, 3)] {
        File::options()
            .write(true)
            .open(path_of(d, &format!("/k{i}")))
            .unwrap()
            .set_modified(base + Duration::from_secs(secs))
            .unwrap();
    }

    let (cache, metrics) = open(d, 2 * size).await;
    assert_eq!(metrics.evictions.get(), 2);
    assert_eq!(cache.len(), 2);
    assert!(cache.get("/k0").await.is_some());
    assert!(cache.get("/k3").await.is_some());
    assert!(cache.get("/k1").await.is_none());
    assert!(cache.get("/k2").await.is_none());
    assert_consistent(d, &cache, &metrics);
}

#[tokio::test]
async fn second_open_of_a_directory_fails_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 1 << 20).await;
    let cfg = DiskConfig::new(dir.path(), 1 << 20);
    let err = DiskCache::open(cfg.clone(), DiskMetrics::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DiskError::Locked(_)), "{err}");
    drop(cache);
    DiskCache::open(cfg, DiskMetrics::default()).await.unwrap();
}

#[tokio::test]
async fn lru_eviction_keeps_the_total_within_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (probe, _) = open(d, 1 << 20).await;
    probe.put("/k0", body(0, 1000), fresh()).await.unwrap();
    let size = probe.bytes();
    drop(probe);
    std::fs::remove_dir_all(d).unwrap();

    let (cache, metrics) = open(d, 3 * size + size / 2).await;
    for i in 0..3 {
        cache
            .put(&format!("/k{i}"), body(i, 1000), fresh())
            .await
            .unwrap();
    }
    assert!(cache.get("/k0").await.is_some());
    cache.put("/k3", body(3, 1000), fresh()).await.unwrap();
    assert_eq!(metrics.evictions.get(), 1);
    assert!(
        cache.expires_at("/k1").is_none(),
        "k1 was the least recently used"
    );
    cache.put("/k4", body(4, 1000), fresh()).await.unwrap();
    assert_eq!(metrics.evictions.get(), 2);
    assert!(cache.expires_at("/k2").is_none());
    for key in ["/k0", "/k3", "/k4"] {
        assert!(cache.get(key).await.is_some(), "{key}");
    }
    assert_eq!(cache.bytes(), 3 * size);
    assert_consistent(d, &cache, &metrics);

    // A bigger object (2.5 KB more than the others) evicts as many as it needs: two.
    cache.put("/big", body(9, 2500), fresh()).await.unwrap();
    assert!(cache.get("/big").await.is_some());
    assert!(cache.get("/k4").await.is_some());
    assert_eq!(cache.len(), 2);
    assert_eq!(metrics.evictions.get(), 4);
    assert_consistent(d, &cache, &metrics);
}

#[tokio::test]
async fn objects_too_large_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, metrics) = open_with(dir.path(), 10_000, 4_000).await;
    cache.put("/small", body(1, 1000), fresh()).await.unwrap();
    cache.put("/big", body(2, 4001), fresh()).await.unwrap();
    assert!(cache.get("/big").await.is_none());
    assert_eq!(cache.len(), 1);
    assert_eq!(metrics.evictions.get(), 0);

    let (cache, metrics) = {
        drop(cache);
        open_with(dir.path(), 5_000, 1 << 20).await
    };
    // The body fits in max_object but the entry (with its header) not in the capacity.
    cache.put("/huge", body(3, 4_990), fresh()).await.unwrap();
    assert!(cache.get("/huge").await.is_none());
    assert!(
        cache.get("/small").await.is_some(),
        "nothing evicted for it"
    );
    assert_consistent(dir.path(), &cache, &metrics);
}

#[tokio::test]
async fn damaged_files_are_detected_deleted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 1 << 20).await;
    for key in ["/flip", "/cut", "/magic", "/swapped", "/other"] {
        cache.put(key, body(5, 2000), fresh()).await.unwrap();
    }

    // One byte of the body flipped.
    let path = path_of(d, "/flip");
    let mut raw = std::fs::read(&path).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0xff;
    std::fs::write(&path, &raw).unwrap();
    assert!(cache.get("/flip").await.is_none());
    assert!(!path.exists());
    assert_eq!(metrics.corrupt.get(), 1);
    assert!(cache.expires_at("/flip").is_none());

    // Truncated.
    let path = path_of(d, "/cut");
    let mut file = File::options().write(true).open(&path).unwrap();
    let len = file.seek(SeekFrom::End(0)).unwrap();
    file.set_len(len - 100).unwrap();
    drop(file);
    assert!(cache.get("/cut").await.is_none());
    assert!(!path.exists());
    assert_eq!(metrics.corrupt.get(), 2);

    // Bad magic.
    let path = path_of(d, "/magic");
    let mut raw = std::fs::read(&path).unwrap();
    raw[0] = b'X';
    std::fs::write(&path, &raw).unwrap();
    assert!(cache.get("/magic").await.is_none());
    assert_eq!(metrics.corrupt.get(), 3);

    // Another key's (valid) file in its place.
    std::fs::copy(path_of(d, "/other"), path_of(d, "/swapped")).unwrap();
    assert!(cache.get("/swapped").await.is_none());
    assert_eq!(metrics.corrupt.get(), 4);

    assert!(cache.get("/other").await.is_some());
    assert_eq!(cache.len(), 1);
    assert_consistent(d, &cache, &metrics);

    // A file deleted behind the cache's back is a miss, not damage.
    std::fs::remove_file(path_of(d, "/other")).unwrap();
    assert!(cache.get("/other").await.is_none());
    assert_eq!(metrics.corrupt.get(), 4);
    assert!(cache.is_empty());
    assert_consistent(d, &cache, &metrics);
}

/// A tmpfs mounted for the test, unmounted when dropped (also when the test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("running mount(8): this test needs root on Linux");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (root on Linux) to fill a disk for real; \
             `mount -t tmpfs` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_suspends_writes_and_reads_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _tmpfs = Tmpfs::mount(&mnt, "512k");
    let (cache, metrics) = open(&mnt, 64 << 20).await;

    cache.put("/a", body(1, 16 << 10), fresh()).await.unwrap();
    cache.put("/b", body(2, 16 << 10), fresh()).await.unwrap();

    let mut fillers = Vec::new();
    let mut failure = None;
    for i in 0..16 {
        let key = format!("/fill/{i}");
        match cache.put(&key, body(3, 128 << 10), fresh()).await {
            Ok(()) => fillers.push(key),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a 512 KiB tmpfs fills up");
    let tmp = mnt.join(TMP_DIR).display().to_string();
    assert!(
        matches!(failure, DiskError::Io(ref m) if m.contains(&tmp)),
        "{failure}"
    );
    assert_eq!(metrics.write_errors.get(), 1);
    assert_eq!(metrics.writes_suspended.get(), 1);
    assert!(cache.writes_suspended());
    assert_eq!(tmp_files(&mnt), 0, "the partial temporary file is removed");

    // Suspended: puts fail at once, whatever their size, and nothing is written.
    let puts = (0..8).map(|i| {
        let cache = cache.clone();
        tokio::spawn(async move { cache.put(&format!("/s{i}"), body(4, 10), fresh()).await })
    });
    for put in puts {
        assert_eq!(put.await.unwrap(), Err(DiskError::Suspended));
    }
    assert_eq!(metrics.write_errors.get(), 1);
    assert_eq!(
        cache.inner.suspensions.load(Ordering::Relaxed),
        1,
        "one warning"
    );

    // Reads keep working.
    assert_eq!(cache.get("/a").await.unwrap().body, body(1, 16 << 10));
    assert_eq!(cache.get("/b").await.unwrap().body, body(2, 16 << 10));
    for key in &fillers {
        assert!(cache.get(key).await.is_some(), "{key}");
    }
    assert_consistent(&mnt, &cache, &metrics);

    // Free the space; after the suspension, writes resume by themselves.
    for key in &fillers {
        assert!(cache.remove(key).await);
    }
    tokio::time::sleep(SUSPEND).await;
    // The gauge drops without a put (polled: the timer may run late on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.writes_suspended.get() != 0 {
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!cache.writes_suspended());
    cache.put("/c", body(5, 1000), fresh()).await.unwrap();
    assert_eq!(cache.get("/c").await.unwrap().body, body(5, 1000));
    assert_eq!(metrics.write_errors.get(), 1);
    assert_consistent(&mnt, &cache, &metrics);

    // The next failure starts a new suspension with its own warning.
    let err = cache
        .put("/big", body(6, 1 << 20), fresh())
        .await
        .unwrap_err();
    assert!(matches!(err, DiskError::Io(_)), "{err}");
    assert_eq!(cache.inner.suspensions.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.write_errors.get(), 2);
    drop(cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_and_puts_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 150 << 10).await;
    // The body of writer `i`: byte `i` repeated a length derived from `i`, so any body read can be
    // checked for being one whole write.
    let len_of = |i: u8| 1000 + (i as usize * 397) % 60_000;
    let mut tasks = Vec::new();
    for i in 0..200u8 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("/k/{}", i % 10);
            cache.put(&key, body(i, len_of(i)), fresh()).await.unwrap();
            for j in 0..3 {
                if let Some(e) = cache.get(&format!("/k/{}", (i + j) % 10)).await {
                    let b = e.body[0];
                    assert_eq!(e.body.len(), len_of(b));
                    assert!(e.body.iter().all(|x| *x == b));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(metrics.corrupt.get(), 0);
    assert!(metrics.evictions.get() > 0, "the capacity was exercised");
    for k in 0..10 {
        if let Some(e) = cache.get(&format!("/k/{k}")).await {
            assert_eq!(e.body[0] % 10, k);
        }
    }
    assert_consistent(d, &cache, &metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_one_key_leave_one_complete_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 16 << 20).await;
    let puts: Vec<_> = (0..20u8)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .put("/same", body(i, 10_000 + i as usize * 1000), fresh())
                    .await
            })
        })
        .collect();
    for p in puts {
        p.await.unwrap().unwrap();
    }
    assert_eq!(cache.len(), 1);
    let e = cache.get("/same").await.unwrap();
    assert_eq!(e.body.len(), 10_000 + e.body[0] as usize * 1000);
    assert_consistent(d, &cache, &metrics);
}

#[tokio::test]
async fn remove_and_purge_prefix_delete_files_and_entries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 1 << 20).await;
    for key in [
        "/vod/m1/720p/a.ts",
        "/vod/m1/720p/b.ts",
        "/vod/m1/1080p/a.ts",
        "/vod/m2/720p/a.ts",
        "/live/x.m3u8",
    ] {
        cache.put(key, body(1, 500), fresh()).await.unwrap();
    }
    assert!(cache.remove("/live/x.m3u8").await);
    assert!(!cache.remove("/live/x.m3u8").await);
    assert!(!path_of(d, "/live/x.m3u8").exists());
    assert_consistent(d, &cache, &metrics);

    assert_eq!(cache.purge_prefix("/vod/m1/").await, 3);
    assert_eq!(cache.purge_prefix("/vod/m1/").await, 0);
    assert!(cache.get("/vod/m1/720p/a.ts").await.is_none());
    assert!(cache.get("/vod/m2/720p/a.ts").await.is_some());
    assert_eq!(cache.len(), 1);
    assert_consistent(d, &cache, &metrics);

    // Purged keys can be stored again.
    cache
        .put("/vod/m1/720p/a.ts", body(2, 10), fresh())
        .await
        .unwrap();
    assert!(cache.get("/vod/m1/720p/a.ts").await.is_some());
    assert_eq!(cache.purge_prefix("/").await, 2);
    assert!(cache.is_empty());
    assert_consistent(d, &cache, &metrics);
}

#[tokio::test]
async fn a_body_read_before_a_purge_is_not_written_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 1 << 20).await;
    // A fill looks the key up (mark), fetches it, and writes it back after a purge ran.
    let mark = cache.purge_mark();
    cache
        .put("/vod/m1/a.ts", body(1, 100), fresh())
        .await
        .unwrap();
    assert!(cache.remove("/vod/m1/a.ts").await);
    cache
        .put_since("/vod/m1/a.ts", body(1, 100), fresh(), mark)
        .await
        .unwrap();
    assert!(cache.get("/vod/m1/a.ts").await.is_none());
    assert_eq!(cache.purge_prefix("/vod/").await, 0);
    cache
        .put_since("/vod/m1/b.ts", body(1, 100), fresh(), mark)
        .await
        .unwrap();
    assert!(cache.get("/vod/m1/b.ts").await.is_none());
    assert_eq!(tmp_files(d), 0);
    // Other keys, and marks taken after the purge, are written.
    cache
        .put_since("/live/c.ts", body(1, 100), fresh(), mark)
        .await
        .unwrap();
    let later = cache.purge_mark();
    cache
        .put_since("/vod/m1/a.ts", body(2, 100), fresh(), later)
        .await
        .unwrap();
    assert_eq!(cache.get("/vod/m1/a.ts").await.unwrap().body, body(2, 100));
    assert!(cache.get("/live/c.ts").await.is_some());
    assert_consistent(d, &cache, &metrics);
}

#[test]
fn a_write_started_before_a_purge_of_its_key_is_dropped() {
    let mut index = Index::default();
    let mark = index.purge_mark();
    assert!(!index.purged_since(mark, "/a/1"));
    index.take_prefix("/b/");
    assert!(!index.purged_since(mark, "/a/1"));
    assert!(index.purged_since(mark, "/b/1"));
    index.take("/a/1");
    assert!(index.purged_since(mark, "/a/1"));
    assert!(!index.purged_since(mark, "/a/10"), "remove is exact");
    let later = index.purge_mark();
    assert!(!index.purged_since(later, "/a/1"));
    // Too many purges since to tell: dropped to be safe.
    for i in 0..300 {
        index.take(&format!("/z/{i}"));
    }
    assert!(index.purged_since(later, "/a/1"));
}

#[test]
fn reservations_count_against_the_capacity() {
    let mut index = Index::default();
    index.insert("/a", 40, at(0));
    index.insert("/b", 40, at(0));
    let victims = index.reserve(50, 100).unwrap();
    assert_eq!(victims.len(), 1);
    assert_eq!(&*victims[0].0, "/a");
    // 40 indexed + 50 reserved: a second write of 50 evicts /b but still cannot fit.
    assert!(index.reserve(60, 100).is_none());
    assert_eq!(index.len(), 1, "nothing evicted when it cannot fit");
    let victims = index.reserve(10, 100).unwrap();
    assert!(victims.is_empty());
    index.release(60);
    assert!(index.reserve(100, 100).is_some());
}

#[test]
fn format_round_trip_and_checks() {
    let meta = fresh();
    let payload = b"segment bytes".as_slice();
    let header = Header::new("/k", payload, &meta);
    let mut file = header.encode();
    file.extend_from_slice(payload);
    let (decoded, body) = format::decode(Bytes::from(file.clone()), "/k").unwrap();
    assert_eq!(decoded, header);
    assert_eq!(decoded.meta(), meta);
    assert_eq!(&body[..], payload);
    assert!(matches!(
        format::decode(Bytes::from(file.clone()), "/other"),
        Err(Invalid::Corrupt(_))
    ));
    let mut bad_version = file.clone();
    bad_version[4] = 3;
    assert!(matches!(
        format::decode(Bytes::from(bad_version), "/k"),
        Err(Invalid::Corrupt(_))
    ));
    let mut huge_header = file;
    huge_header[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        format::decode(Bytes::from(huge_header), "/k"),
        Err(Invalid::Corrupt(_))
    ));
}

/// A version 1 entry file (SHA-256 checksum), as the edge wrote before version 2.
fn version_1_file(key: &str, payload: &[u8], meta: &Meta) -> Vec<u8> {
    let mut header = Header::new(key, payload, meta);
    header.xxh3_128 = None;
    header.sha256 = Some(hex::encode(Sha256::digest(payload)));
    let mut file = header.encode();
    assert_eq!(file[4], 1);
    file.extend_from_slice(payload);
    file
}

#[test]
fn version_1_files_decode_with_their_sha256_and_mixed_headers_do_not() {
    let meta = fresh();
    let payload = b"segment bytes".as_slice();
    let file = version_1_file("/k", payload, &meta);
    let (header, body) = format::decode(Bytes::from(file.clone()), "/k").unwrap();
    assert_eq!(&body[..], payload);
    assert_eq!(header.meta(), meta);
    let mut damaged = file.clone();
    *damaged.last_mut().unwrap() ^= 1;
    assert!(matches!(
        format::decode(Bytes::from(damaged), "/k"),
        Err(Invalid::Corrupt(why)) if why.contains("checksum")
    ));
    // A version 1 prefix on a version 2 header (and the reverse) is damage, not a format.
    let mut v2 = Header::new("/k", payload, &meta).encode();
    v2.extend_from_slice(payload);
    let mut v2_as_1 = v2.clone();
    v2_as_1[4] = 1;
    let mut v1_as_2 = file;
    v1_as_2[4] = 2;
    for wrong in [v2_as_1, v1_as_2] {
        assert!(matches!(
            format::decode(Bytes::from(wrong), "/k"),
            Err(Invalid::Corrupt(why)) if why.contains("version")
        ));
    }
}

#[tokio::test]
async fn an_upgrade_keeps_version_1_entries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = "/vod/movies/m1/seg_1.ts";
    let path = path_of(d, key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, version_1_file(key, &[5u8; 3000], &fresh())).unwrap();
    let (cache, metrics) = open(d, 1 << 20).await;
    assert_eq!(cache.len(), 1, "the scan at open kept the version 1 entry");
    let got = cache
        .get(key)
        .await
        .expect("read and verified with SHA-256");
    assert_eq!(got.body, body(5, 3000));
    assert_eq!(got.meta, fresh());
    assert_eq!(metrics.corrupt.get(), 0);
    assert_consistent(d, &cache, &metrics);
}

/// Entries `/a0` … `/a11`, 3000 bytes each of their index.
async fn put_twelve(cache: &DiskCache) {
    for i in 0..12u8 {
        cache
            .put(&format!("/a{i}"), body(i, 3000), fresh())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_full_cache_reuses_the_files_it_evicts() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 30_000).await;
    // Nine entries of ~3.2 KB fill 30 KB; the next ones each evict one, of another size.
    put_twelve(&cache).await;
    assert!(metrics.evictions.get() > 0, "the cache is full");
    let inodes = |keys: &mut dyn Iterator<Item = String>| -> Vec<u64> {
        keys.filter_map(|k| std::fs::metadata(path_of(d, &k)).ok())
            .map(|m| m.ino())
            .collect()
    };
    let before = inodes(&mut (0..12).map(|i| format!("/a{i}")));
    let mut reused = 0;
    for (i, len) in [(0u8, 1000), (1, 5000), (2, 3000), (3, 100), (4, 4000)] {
        let key = format!("/b{i}");
        let evictions = metrics.evictions.get();
        cache.put(&key, body(100 + i, len), fresh()).await.unwrap();
        let ino = std::fs::metadata(path_of(d, &key)).unwrap().ino();
        let evicted = metrics.evictions.get() > evictions;
        assert_eq!(
            before.contains(&ino),
            evicted,
            "{key} was written into an evicted entry's file if and only if it evicted one"
        );
        reused += usize::from(evicted);
        let got = cache.get(&key).await.expect("the new entry reads back");
        assert_eq!(got.body, body(100 + i, len), "{key}: exactly the new bytes");
        assert_consistent(d, &cache, &metrics);
    }
    for i in 0..12 {
        if let Some(got) = cache.get(&format!("/a{i}")).await {
            assert_eq!(got.body, body(i, 3000), "a kept entry is untouched");
        }
    }
    assert!(reused >= 3, "{reused} of 5 writes evicted");
    assert_eq!(metrics.corrupt.get(), 0);
    // Reopened, every entry passes the scan and its checksum.
    let keys: Vec<String> = (0..12)
        .map(|i| format!("/a{i}"))
        .chain((0..5).map(|i| format!("/b{i}")))
        .filter(|k| cache.expires_at(k).is_some())
        .collect();
    drop(cache);
    let (cache, metrics) = open(d, 30_000).await;
    assert_eq!(cache.len(), keys.len());
    for k in &keys {
        assert!(cache.get(k).await.is_some(), "{k} after reopen");
    }
    assert_eq!(metrics.corrupt.get(), 0);
}

#[tokio::test]
async fn only_plain_files_of_its_own_are_reused_never_a_link_or_a_fifo() {
    // Whoever can write the cache directory puts a hard link to another file, a symlink and a
    // FIFO where entries were: evictions must neither write through them nor hang on them.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let outside = tempfile::tempdir().unwrap();
    let (cache, metrics) = open(d, 30_000).await;
    put_twelve(&cache).await;
    let kept: Vec<String> = (0..12)
        .map(|i| format!("/a{i}"))
        .filter(|k| cache.expires_at(k).is_some())
        .collect();
    let precious = outside.path().join("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    for (n, key) in kept.iter().enumerate() {
        let path = path_of(d, key);
        std::fs::remove_file(&path).unwrap();
        match n % 3 {
            0 => std::fs::hard_link(&precious, &path).unwrap(),
            1 => std::os::unix::fs::symlink(&precious, &path).unwrap(),
            _ => assert!(
                std::process::Command::new("mkfifo")
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success()
            ),
        }
    }
    let writes = async {
        for i in 0..12u8 {
            cache
                .put(&format!("/b{i}"), body(50 + i, 3000), fresh())
                .await
                .unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), writes)
        .await
        .expect("evictions never wait on a FIFO");
    assert!(metrics.evictions.get() >= 12);
    assert!(
        std::fs::read(&precious).unwrap() == b"keep me",
        "an eviction wrote through a link into another file"
    );
    for i in 0..12u8 {
        if let Some(got) = cache.get(&format!("/b{i}")).await {
            assert_eq!(got.body, body(50 + i, 3000));
        }
    }
}

#[tokio::test]
async fn a_fifo_or_symlink_in_place_of_an_entry_is_damage_never_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 1 << 20).await;
    for key in ["/fifo", "/link", "/scanned"] {
        cache.put(key, body(1, 3000), fresh()).await.unwrap();
    }
    let mkfifo = |path: &Path| {
        std::fs::remove_file(path).unwrap();
        assert!(
            std::process::Command::new("mkfifo")
                .arg(path)
                .status()
                .unwrap()
                .success()
        );
    };
    mkfifo(&path_of(d, "/fifo"));
    let target = d.join("elsewhere");
    std::fs::write(&target, b"x").unwrap();
    std::fs::remove_file(path_of(d, "/link")).unwrap();
    std::os::unix::fs::symlink(&target, path_of(d, "/link")).unwrap();
    for key in ["/fifo", "/link"] {
        let got = tokio::time::timeout(Duration::from_secs(10), cache.get(key))
            .await
            .expect("a read never waits on a FIFO");
        assert!(got.is_none(), "{key}");
        assert!(
            std::fs::symlink_metadata(path_of(d, key)).is_err(),
            "{key} deleted"
        );
    }
    assert_eq!(metrics.corrupt.get(), 2);
    // The scan at open passes over one (it lists plain files only; their open is checked too).
    mkfifo(&path_of(d, "/scanned"));
    drop(cache);
    let (cache, _) = tokio::time::timeout(Duration::from_secs(10), open(d, 1 << 20))
        .await
        .expect("the scan never waits on a FIFO");
    assert_eq!(cache.len(), 0);
}

#[tokio::test]
async fn a_reader_of_an_entry_evicted_and_reused_under_it_misses_and_counts_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 40_000).await;
    put_twelve(&cache).await;
    // The read path's decode of a file that now holds another key's entry.
    let (victim, slot) = {
        let index = cache.inner.index.lock();
        let k = (0..12)
            .map(|i| format!("/a{i}"))
            .find(|k| index.peek(k).is_some())
            .unwrap();
        let slot = index.peek(&k).unwrap();
        (k, slot)
    };
    let other = "/other";
    let mut reused = Header::new(other, &[9u8; 3000], &fresh()).encode();
    reused.extend_from_slice(&[9u8; 3000]);
    std::fs::write(path_of(d, &victim), &reused).unwrap();
    // Evicted meanwhile: its slot is gone from the index, so the mismatch is not damage.
    cache.inner.index.lock().take(&victim);
    assert!(cache.inner.read(&victim, slot).is_none());
    assert_eq!(metrics.corrupt.get(), 0);
}

#[tokio::test]
async fn bytes_read_after_the_entry_was_evicted_are_not_served_even_when_they_verify() {
    // A reader that opened a file just before its eviction may read it while it is overwritten
    // for another entry; the checksum (not cryptographic) must not be all that stands between
    // such bytes and a viewer.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache, metrics) = open(d, 1 << 20).await;
    cache.put("/v", body(3, 3000), fresh()).await.unwrap();
    let slot = cache.inner.index.lock().peek("/v").unwrap();
    assert!(cache.inner.read("/v", slot).is_some(), "indexed: served");
    // The file is intact and verifies, but the entry left the index before (or while) it was
    // read: a miss.
    cache.inner.index.lock().take("/v");
    assert!(cache.inner.read("/v", slot).is_none());
    assert_eq!(metrics.corrupt.get(), 0);
}

#[test]
fn a_hostile_body_length_is_damage_not_an_overflow() {
    let payload = b"x".as_slice();
    let mut header = Header::new("/k", payload, &fresh());
    header.body_len = u64::MAX;
    let mut file = header.encode();
    file.extend_from_slice(payload);
    assert!(matches!(
        format::decode(Bytes::from(file), "/k"),
        Err(Invalid::Corrupt(why)) if why.contains("the header says")
    ));
}

#[test]
fn metrics_register_under_their_names() {
    let registry = prometheus::Registry::new();
    let m = DiskMetrics::register(&registry).unwrap();
    m.evictions.inc();
    let mut names: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "edge_disk_cache_bytes",
            "edge_disk_cache_corrupt_total",
            "edge_disk_cache_entries",
            "edge_disk_cache_evictions_total",
            "edge_disk_cache_write_errors_total",
            "edge_disk_cache_writes_suspended",
        ]
    );
    assert!(
        DiskMetrics::register(&registry).is_err(),
        "registered twice"
    );
}
