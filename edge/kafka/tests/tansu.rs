//! `KafkaSink` against a real Kafka-protocol broker (tansu 0.6.0, started by edge-testinfra):
//! topic creation, a batch read back with a real consumer, a broker restart in the middle of a
//! delivery, a broker that forgets the producer id (fatal error, producer rebuilt), and a sink
//! that starts while the broker is down.

use edge_events::{EventKind, Record, Sink, Topics};
use edge_kafka::{Health, KafkaConfig, KafkaSink};
use edge_testinfra::{Consumed, S3, Tansu, consume};
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "edge_kafka=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `EDGE_KAFKA_DEBUG=eos,msg` (librdkafka `debug` contexts) shows what librdkafka does, with
/// `RUST_LOG=edge_kafka=debug`.
fn config(bootstrap: String) -> KafkaConfig {
    KafkaConfig {
        request_timeout: Duration::from_secs(2),
        properties: std::env::var("EDGE_KAFKA_DEBUG")
            .map(|d| vec![("debug".to_string(), d)])
            .unwrap_or_default(),
        ..KafkaConfig::new(bootstrap)
    }
}

/// `n` records from `first` on, over every kind, 7 keys; payloads with non-ASCII text and
/// unusual spacing (must arrive byte for byte).
fn records(first: u64, n: u64) -> Vec<Record> {
    (first..first + n)
        .map(|seq| Record {
            seq,
            kind: EventKind::ALL[(seq % 5) as usize],
            key: format!("session-{}", seq % 7),
            publish: true,
            at_ms: 1_700_000_000_000 + seq,
            payload: serde_json::value::RawValue::from_string(format!(
                r#"{{"user_id":"usér-{seq}", "n":{seq},"note":"a\tb ✓"}}"#
            ))
            .expect("raw json"),
        })
        .collect()
}

fn all_topics() -> Vec<String> {
    Topics::default().all()
}

async fn read_back(bootstrap: &str, expect: usize, timeout: Duration) -> Vec<Consumed> {
    let bootstrap = bootstrap.to_string();
    let started = Instant::now();
    let got = tokio::task::spawn_blocking(move || {
        let topics = all_topics();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consume(&bootstrap, &topics, expect, timeout)
    })
    .await
    .expect("consumer task");
    eprintln!("read back {} records in {:?}", got.len(), started.elapsed());
    got
}

/// Every record of `sent` was read exactly once, identical, and in order per topic and key.
fn assert_exactly_once(sent: &[Record], got: &[Consumed]) {
    let topics = Topics::default();
    let mut by_id: HashMap<u64, Vec<&Consumed>> = HashMap::new();
    for c in got {
        let id = c.header("event-id").expect("event-id header");
        by_id
            .entry(id.parse().expect("numeric event-id"))
            .or_default()
            .push(c);
    }
    let dups: Vec<_> = by_id
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| *k)
        .collect();
    assert!(dups.is_empty(), "duplicated event-ids: {dups:?}");
    let missing: Vec<_> = sent
        .iter()
        .filter(|r| !by_id.contains_key(&r.seq))
        .map(|r| r.seq)
        .collect();
    assert!(
        missing.is_empty(),
        "{} records missing: {missing:?}",
        missing.len()
    );
    assert_eq!(got.len(), sent.len(), "records read back");
    for rec in sent {
        let c = by_id[&rec.seq][0];
        assert_eq!(c.topic, topics.topic(rec.kind), "topic of {}", rec.seq);
        assert_eq!(
            c.key.as_deref(),
            Some(rec.key.as_str()),
            "key of {}",
            rec.seq
        );
        assert_eq!(
            c.payload,
            rec.payload.get().as_bytes(),
            "payload of {}",
            rec.seq
        );
        assert_eq!(c.header("event-kind"), Some(rec.kind.as_str()));
    }
    // Per topic and key, event ids arrive increasing (one key = one partition).
    let mut last: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for c in got {
        let id: u64 = c
            .header("event-id")
            .expect("event-id")
            .parse()
            .expect("numeric");
        let key = (c.topic.as_str(), c.key.as_deref().unwrap_or(""));
        if let Some(prev) = last.insert(key, id) {
            assert!(prev < id, "{key:?}: {id} after {prev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_idempotently() {
    init_tracing();
    let broker = Tansu::start();
    // One topic exists already (created with tansu's own CLI).
    tokio::task::block_in_place(|| broker.create_topics(&["stream.start"], 3));
    let sink = KafkaSink::new(config(broker.bootstrap())).expect("sink");
    sink.ensure_topics().await.expect("create topics");
    sink.ensure_topics().await.expect("create topics again");
    assert_eq!(sink.health().await, Health::Ok);

    let bootstrap = broker.bootstrap();
    let partitions = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("consumer");
        all_topics()
            .into_iter()
            .map(|t| {
                let meta = c
                    .fetch_metadata(Some(&t), Duration::from_secs(5))
                    .expect("metadata");
                (t, meta.topics()[0].partitions().len())
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("metadata task");
    for (topic, n) in partitions {
        assert_eq!(n, 3, "partitions of {topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_300_is_read_back_exactly() {
    init_tracing();
    let broker = Tansu::start();
    let sink = KafkaSink::new(config(broker.bootstrap())).expect("sink");
    let batch = records(1, 300);
    let started = Instant::now();
    sink.deliver(&batch).await.expect("delivered");
    eprintln!("300 records delivered in {:?}", started.elapsed());
    let got = read_back(&broker.bootstrap(), 300, Duration::from_secs(20)).await;
    assert_exactly_once(&batch, &got);
    sink.flush(Duration::from_secs(5)).await.expect("flush");
}

const STOP_DELAY_MS: u64 = 100;

/// Progress of [`ship`]: finished batches and the failures so far.
#[derive(Default)]
struct Shipped {
    batches: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Shipped {
    fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures").clone()
    }

    async fn wait_for(&self, batches: usize) {
        let started = Instant::now();
        while self.batches() < batches {
            assert!(started.elapsed() < Duration::from_secs(60), "no progress");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// What the shipper does: batches back to back; after a failure, the undelivered rest again.
fn ship(
    sink: Arc<KafkaSink>,
    batches: Vec<Vec<Record>>,
    shipped: Arc<Shipped>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for batch in batches {
            let mut rest = &batch[..];
            while let Err(e) = sink.deliver(rest).await {
                shipped
                    .failures
                    .lock()
                    .expect("failures")
                    .push(e.to_string());
                rest = &rest[e.delivered..];
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shipped.batches.fetch_add(1, Ordering::SeqCst);
        }
    })
}

/// The broker stops in the middle of a stream of deliveries (produce requests in flight, their
/// connections cut) and restarts on the same port and storage after 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_delivery_loses_and_duplicates_nothing() {
    init_tracing();
    let s3 = S3::start("tansu");
    let mut broker = Tansu::start_persistent(&s3);
    let sink = Arc::new(KafkaSink::new(config(broker.bootstrap())).expect("sink"));
    let sent = records(1, 12_000);
    let batches: Vec<Vec<Record>> = sent.chunks(500).map(<[Record]>::to_vec).collect();
    let shipped = Arc::new(Shipped::default());
    let started = Instant::now();
    let shipper = ship(sink.clone(), batches, shipped.clone());
    shipped.wait_for(3).await;
    // A batch takes 100-300 ms against tansu on s3s-fs: produce requests are in flight now.
    tokio::time::sleep(Duration::from_millis(STOP_DELAY_MS)).await;
    let stopping = Instant::now();
    tokio::task::block_in_place(|| broker.stop());
    let at_stop = shipped.batches();
    eprintln!(
        "stopped the broker after {at_stop} batches, {:?} (the stop took {:?})",
        started.elapsed(),
        stopping.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !shipper.is_finished(),
        "deliver must wait while the broker is down"
    );
    assert!(
        shipped.batches() <= at_stop + 1,
        "batches acknowledged without a broker"
    );

    let restarted = Instant::now();
    tokio::task::block_in_place(|| broker.restart());
    shipped.wait_for(at_stop + 1).await;
    eprintln!(
        "the interrupted batch was acknowledged {:?} after the restart",
        restarted.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(120), shipper)
        .await
        .expect("everything delivered within 120 s of the restart")
        .expect("shipper task");
    let failures = shipped.failures();
    eprintln!(
        "all 24 batches delivered {:?} after the restart ({:?} in all); failures: {failures:?}",
        restarted.elapsed(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{failures:?}");
    let got = read_back(&broker.bootstrap(), sent.len(), Duration::from_secs(60)).await;
    assert_exactly_once(&sent, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_created_while_the_broker_is_down_works_once_it_is_up() {
    init_tracing();
    let mut broker = Tansu::start();
    tokio::task::block_in_place(|| broker.stop());
    let cfg = config(broker.bootstrap());
    let timeout = cfg.request_timeout;
    let sink = KafkaSink::new(cfg).expect("sink without a broker");

    let asked = Instant::now();
    let health = sink.health().await;
    eprintln!("health while down: {health:?} after {:?}", asked.elapsed());
    assert!(matches!(health, Health::Unavailable(_)), "{health:?}");
    assert!(
        asked.elapsed() < timeout + Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    let batch = records(1, 50);
    let err = sink
        .deliver(&batch)
        .await
        .expect_err("no broker, no topics");
    assert_eq!(err.delivered, 0);

    tokio::task::block_in_place(|| broker.restart());
    let up = Instant::now();
    while sink.health().await != Health::Ok {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "health still not ok"
        );
    }
    eprintln!("health ok {:?} after the broker started", up.elapsed());
    sink.deliver(&batch)
        .await
        .expect("delivered once the broker is up");
    eprintln!("delivered {:?} after the broker started", up.elapsed());
    let got = read_back(&broker.bootstrap(), batch.len(), Duration::from_secs(20)).await;
    assert_exactly_once(&batch, &got);
}

/// A broker that forgets everything across a restart (its bucket emptied while it is down, as
/// `memory://` storage does): the retried in-flight batches get `UNKNOWN_PRODUCER_ID`, which
/// librdkafka makes a fatal error; the sink reports the failure, builds a new producer,
/// re-creates the topics and delivers the rest. When no produce request happened to be in flight
/// at the stop, librdkafka just takes a new producer id (no fatal error): then again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_producer_id_is_fatal_and_the_producer_is_rebuilt() {
    init_tracing();
    let s3 = S3::start("tansu");
    let mut broker = Tansu::start_persistent(&s3);
    let sink = Arc::new(KafkaSink::new(config(broker.bootstrap())).expect("sink"));
    let sent = records(1, 15_000);
    let batches: Vec<Vec<Record>> = sent.chunks(500).map(<[Record]>::to_vec).collect();
    let shipped = Arc::new(Shipped::default());
    let shipper = ship(sink.clone(), batches, shipped.clone());
    let mut at_stop = 0;
    for cycle in 1..=5 {
        shipped.wait_for(at_stop + 3).await;
        tokio::time::sleep(Duration::from_millis(STOP_DELAY_MS)).await;
        tokio::task::block_in_place(|| broker.stop());
        at_stop = shipped.batches();
        let bucket = s3.root().join("tansu");
        std::fs::remove_dir_all(&bucket).expect("empty the bucket");
        std::fs::create_dir_all(&bucket).expect("bucket dir");
        let restarted = Instant::now();
        tokio::task::block_in_place(|| broker.restart());
        shipped.wait_for(at_stop + 1).await;
        let failures = shipped.failures();
        eprintln!(
            "cycle {cycle}: stopped after {at_stop} batches, the interrupted one done {:?} after the restart; failures: {failures:?}",
            restarted.elapsed()
        );
        if failures.iter().any(|f| f.contains("fatal producer error")) {
            break;
        }
    }
    let failures = shipped.failures();
    assert!(
        failures.iter().any(|f| f.contains("UnknownProducerId")),
        "no fatal UNKNOWN_PRODUCER_ID in 5 restarts: {failures:?}"
    );
    tokio::time::timeout(Duration::from_secs(120), shipper)
        .await
        .expect("everything delivered within 120 s")
        .expect("shipper task");
    // Batches after the interrupted one were sent to the new broker only: all there, once.
    let after = &sent[(at_stop + 1) * 500..];
    let got = read_back(&broker.bootstrap(), after.len(), Duration::from_secs(60)).await;
    let got: Vec<Consumed> = got
        .into_iter()
        .filter(|c| c.header("event-id").and_then(|i| i.parse::<u64>().ok()) >= Some(after[0].seq))
        .collect();
    assert_exactly_once(after, &got);
}
