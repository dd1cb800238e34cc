//! A Kafka-protocol broker (`tansu`) and a plain consumer to read back what was produced.

use crate::{S3, free_port, relay::Relay, wait_for_port};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    producer::{BaseProducer, BaseRecord, Producer},
};
use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// How long [`consume`] waits for more records once it has the expected count.
const QUIET: Duration = Duration::from_secs(1);

const HINT: &str =
    "run deploy/dev/setup.sh --test (cargo install tansu@0.6.0 --features dynostore)";

/// A `tansu broker` process (Kafka wire protocol, tansu 0.6.0) on a free loopback port.
///
/// tansu does not create topics on first use: create them ([`Tansu::create_topics`] or an
/// admin client) before producing. Its output goes to [`Tansu::log_path`].
///
/// Clients reach it through a relay on [`Tansu::port`] (tansu listens on another port and
/// advertises the relay's): [`Tansu::stop`] first cuts every client connection, so tansu ends
/// no request half-way. tansu 0.6.0 is not crash-consistent: a produce request aborted half-way
/// (SIGKILL, or SIGTERM while clients keep sending — it serves open connections for 5 more
/// seconds, then aborts them) may have advanced the producer's sequence without storing the
/// batch, and the client's retry is then acknowledged as a duplicate: records are lost (or,
/// less often, stored twice). [`Tansu::kill`] reproduces that.
#[derive(Debug)]
pub struct Tansu {
    child: Option<Child>,
    port: u16,
    broker_port: u16,
    relay: Relay,
    storage: String,
    env: Vec<(&'static str, String)>,
    dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts a broker with in-memory storage (`memory://tansu/`): everything, producer ids
    /// included, is lost when it stops.
    pub fn start() -> Self {
        Self::launch("memory://tansu/".into(), Vec::new())
    }

    /// Starts a broker storing into bucket `tansu` of `s3` (`s3://tansu/`; the bucket directory
    /// is created under [`S3::root`]): records, offsets and producer state survive
    /// [`Tansu::restart`]. `s3` must outlive the broker.
    pub fn start_persistent(s3: &S3) -> Self {
        std::fs::create_dir_all(s3.root().join("tansu")).expect("bucket dir tansu");
        let env = vec![
            ("AWS_ACCESS_KEY_ID", S3::ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3::SECRET_KEY.to_string()),
            ("AWS_ENDPOINT", s3.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
        ];
        Self::launch("s3://tansu/".into(), env)
    }

    fn launch(storage: String, env: Vec<(&'static str, String)>) -> Self {
        let (port, broker_port) = (free_port(), free_port());
        let mut tansu = Self {
            child: None,
            port,
            broker_port,
            relay: Relay::new(port, broker_port),
            storage,
            env,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        tansu.restart();
        tansu
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file the broker's stdout and stderr are appended to (across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// Stops the broker cleanly: cuts the client connections (the port refuses new ones), then
    /// SIGTERM; tansu exits once the requests it was processing are done (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        self.relay.close();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the broker (SIGKILL: requests in progress end half-way) and cuts the client
    /// connections.
    pub fn kill(&mut self) {
        self.relay.close();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the broker on the same port and storage, and waits until the port accepts
    /// connections. Stops it first if it runs.
    pub fn restart(&mut self) {
        self.stop();
        let listener = format!("tcp://127.0.0.1:{}", self.broker_port);
        let advertised = format!("tcp://127.0.0.1:{}", self.port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("tansu log file");
        let mut child = Command::new("tansu")
            .arg("broker")
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", &self.storage])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run tansu ({e}); {HINT}"));
        wait_for_port(self.broker_port, &mut child, "tansu");
        self.child = Some(child);
        self.relay.open();
    }

    /// Creates `topics` with `partitions` partitions each (`tansu topic create`). Panics when
    /// the command fails (an existing topic is a failure too).
    pub fn create_topics(&self, topics: &[&str], partitions: i32) {
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        for topic in topics {
            let out = Command::new("tansu")
                .args(["topic", "create", "--broker", &broker])
                .args(["--partitions", &partitions.to_string(), topic])
                .output()
                .unwrap_or_else(|e| panic!("cannot run tansu ({e}); {HINT}"));
            assert!(
                out.status.success(),
                "tansu topic create {topic}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A record read back by [`consume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key (UTF-8, lossy).
    pub key: Option<String>,
    /// Payload bytes as stored.
    pub payload: Vec<u8>,
    /// Headers in record order (values UTF-8, lossy; a null value is "").
    pub headers: Vec<(String, String)>,
}

impl Consumed {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `topics` with a real Kafka consumer (librdkafka): every partition assigned from the
/// beginning, no group membership (no 3-7 s group join; librdkafka wants a `group.id` for
/// `assign`, so a unique one is set, but it never joins nor commits). Polls until at least
/// `expect` records arrived and then none for 1 s (so duplicates beyond `expect` show up
/// too), or until `timeout`. Records come in offset order within a partition.
///
/// Not "read up to the end offsets": tansu 0.6.0 answers ListOffsets(latest) with the base
/// offset of the partition's last *batch* plus one, not its high watermark.
pub fn consume(
    bootstrap: &str,
    topics: &[&str],
    expect: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let deadline = Instant::now() + timeout;
    static CONSUMERS: AtomicU32 = AtomicU32::new(0);
    let group = format!(
        "edge-testinfra-{}-{}",
        std::process::id(),
        CONSUMERS.fetch_add(1, Ordering::Relaxed)
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("kafka consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
        for t in meta.topics() {
            assert!(t.error().is_none(), "metadata of {topic}: {:?}", t.error());
            for p in t.partitions() {
                assignment
                    .add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("assign offset");
            }
        }
    }
    consumer.assign(&assignment).expect("assign partitions");
    let mut out = Vec::new();
    let mut last_record = Instant::now();
    while Instant::now() < deadline {
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.expect("consume");
            last_record = Instant::now();
            out.push(Consumed {
                topic: msg.topic().to_string(),
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: msg.payload().unwrap_or_default().to_vec(),
                headers: msg.headers().map_or_else(Vec::new, |hs| {
                    hs.iter()
                        .map(|h| {
                            let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_string(), v.into_owned())
                        })
                        .collect()
                }),
            });
            continue;
        }
        if out.len() >= expect && last_record.elapsed() >= QUIET {
            break;
        }
    }
    out
}

/// Produces one record to `topic` with a plain librdkafka producer (what another service
/// publishing to the edge's topics would run) and waits until the broker took it.
pub fn produce(bootstrap: &str, topic: &str, key: &str, payload: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("kafka producer");
    producer
        .send(BaseRecord::to(topic).key(key).payload(payload))
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("produce to {topic}: {e}"));
    producer
        .flush(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flush to {topic}: {e}"));
}
