use super::*;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn memory_scopes_are_separate_and_namespaces_do_not_collide() {
    let kv = Kv::memory(100);
    kv.set(Scope::Local, "k", "local", T).await.unwrap();
    kv.set(Scope::Shared, "k", "shared", T).await.unwrap();
    assert_eq!(
        kv.get(Scope::Local, "k").await.unwrap().as_deref(),
        Some("local")
    );
    assert_eq!(
        kv.get(Scope::Shared, "k").await.unwrap().as_deref(),
        Some("shared")
    );
    let (a, b) = (kv.namespaced("a:"), kv.namespaced("b:"));
    a.set(Scope::Local, "x", "1", T).await.unwrap();
    assert_eq!(b.get(Scope::Local, "x").await.unwrap(), None);
    assert_eq!(
        kv.get(Scope::Local, "a:x").await.unwrap().as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn increment_and_compare_and_set() {
    let kv = Kv::memory(100);
    assert_eq!(kv.increment(Scope::Local, "n", 2, T).await.unwrap(), 2);
    assert_eq!(kv.increment(Scope::Local, "n", -5, T).await.unwrap(), -3);
    kv.set(Scope::Local, "s", "text", T).await.unwrap();
    assert!(matches!(
        kv.increment(Scope::Local, "s", 1, T).await,
        Err(KvError::Invalid(_))
    ));
    assert!(
        kv.compare_and_set(Scope::Local, "c", None, "1", T)
            .await
            .unwrap()
    );
    assert!(
        !kv.compare_and_set(Scope::Local, "c", None, "2", T)
            .await
            .unwrap()
    );
    assert!(
        !kv.compare_and_set(Scope::Local, "c", Some("0"), "2", T)
            .await
            .unwrap()
    );
    assert!(
        kv.compare_and_set(Scope::Local, "c", Some("1"), "2", T)
            .await
            .unwrap()
    );
    assert_eq!(
        kv.get(Scope::Local, "c").await.unwrap().as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn entries_expire() {
    let kv = Kv::memory(100);
    kv.set(Scope::Local, "k", "v", Duration::from_millis(30))
        .await
        .unwrap();
    assert!(kv.get(Scope::Local, "k").await.unwrap().is_some());
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(kv.get(Scope::Local, "k").await.unwrap(), None);
    assert!(
        kv.compare_and_set(Scope::Local, "k", None, "again", T)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn bounded_and_rejects_oversized_input() {
    let kv = Kv::memory(32);
    for i in 0..1000 {
        kv.set(Scope::Local, &format!("k{i}"), "v", T)
            .await
            .unwrap();
    }
    let live = (0..1000)
        .filter(|i| kv.local.get(&format!("k{i}")).is_some())
        .count();
    assert!(
        live <= 32 + super::memory::tests_shards(),
        "{live} keys kept"
    );
    assert!(matches!(
        kv.get(Scope::Local, "").await,
        Err(KvError::Invalid(_))
    ));
    let big = "x".repeat(MAX_VALUE + 1);
    assert!(matches!(
        kv.set(Scope::Local, "k", &big, T).await,
        Err(KvError::Invalid(_))
    ));
}
