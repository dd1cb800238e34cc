//! [`KafkaSink`]: the producer, topic creation, health, and `Sink::deliver`.

use crate::{Health, KafkaConfig, KafkaError, context::TracingContext};
use edge_events::{Record, Sink, Undelivered};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    error::{KafkaError as RdError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig},
};
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};
use tokio::time::MissedTickBehavior;

type EdgeProducer = FutureProducer<TracingContext>;

/// Delivers edge events to Kafka (see the crate documentation for the guarantees).
///
/// Dropping the sink discards what librdkafka still holds (the spool still has it); call
/// [`KafkaSink::flush`] first on an orderly shutdown.
pub struct KafkaSink {
    cfg: KafkaConfig,
    producer_config: ClientConfig,
    producer: Mutex<Option<EdgeProducer>>,
    admin: Option<AdminClient<TracingContext>>,
    /// Topics are known to exist (set by a successful `ensure_topics`, cleared by a failure).
    topics_ready: AtomicBool,
    /// A delivery stalled (see [`KafkaSink::wait`]): the next one builds a new producer.
    stalled: AtomicBool,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("bootstrap_servers", &self.cfg.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Builds the producer and the admin client. Does not contact the broker: librdkafka
    /// connects in its own threads, and records wait in its queue until a broker answers.
    pub fn new(cfg: KafkaConfig) -> Result<Self, KafkaError> {
        let produce_timeout = crate::produce_request_timeout(&cfg.properties)?;
        if cfg.stall_timeout <= produce_timeout {
            return Err(KafkaError::Config(format!(
                "stall_timeout ({:?}) must be longer than librdkafka's socket.timeout.ms and \
                 request.timeout.ms ({:?}): a produce request still waiting for its answer is \
                 not a stall",
                cfg.stall_timeout, produce_timeout
            )));
        }
        let mut base = ClientConfig::new();
        base.set_log_level(crate::context::log_level())
            .set("bootstrap.servers", &cfg.bootstrap_servers)
            .set("client.id", &cfg.client_id);
        let mut producer_config = base.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            // 0 = never expire: a record is retried until the broker takes it.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            // How long a request waits for its answer (librdkafka's default is 60 s); below
            // `stall_timeout` (60 s), which must outlast it.
            .set("socket.timeout.ms", "30000")
            // The Java client's (and aiokafka's, the replaced service's) partitioner: a key
            // lands on the partition other Kafka clients would choose.
            .set("partitioner", "murmur2_random");
        for (k, v) in &cfg.properties {
            base.set(k, v);
            producer_config.set(k, v);
        }
        let admin = base
            .create_with_context(TracingContext)
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        let producer = build_producer(&producer_config)?;
        Ok(Self {
            cfg,
            producer_config,
            producer: Mutex::new(Some(producer)),
            admin: Some(admin),
            topics_ready: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
        })
    }

    /// Creates every topic of the configured [`Topics`](edge_events::Topics) (partitions and
    /// replication factor from the configuration). A topic that already exists is fine.
    pub async fn ensure_topics(&self) -> Result<(), KafkaError> {
        let names = self.cfg.topics.all();
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.cfg.partitions,
                    TopicReplication::Fixed(self.cfg.replication_factor),
                )
            })
            .collect();
        let opts = AdminOptions::new()
            .request_timeout(Some(self.cfg.request_timeout))
            .operation_timeout(Some(self.cfg.request_timeout));
        let admin = self.admin.as_ref().expect("admin client until drop");
        let results = admin
            .create_topics(&new, &opts)
            .await
            .map_err(|e| KafkaError::Admin(e.to_string()))?;
        let failed: Vec<String> = results
            .into_iter()
            .filter_map(|r| match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                Err((topic, code)) => Some(format!("{topic}: {code}")),
            })
            .collect();
        if failed.is_empty() {
            self.topics_ready.store(true, Ordering::Relaxed);
            Ok(())
        } else {
            Err(KafkaError::Admin(failed.join(", ")))
        }
    }

    /// Asks the brokers for metadata (within the request timeout, on a blocking thread).
    pub async fn health(&self) -> Health {
        self.metadata(self.producer()).await
    }

    async fn metadata(&self, producer: EdgeProducer) -> Health {
        let timeout = self.cfg.request_timeout;
        let res = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
        })
        .await;
        match res {
            Ok(Ok(0)) => Health::Unavailable("no broker in the metadata".into()),
            Ok(Ok(_)) => Health::Ok,
            Ok(Err(e)) => Health::Unavailable(e.to_string()),
            Err(e) => Health::Unavailable(format!("metadata task: {e}")),
        }
    }

    /// Waits (on a blocking thread) until librdkafka has delivered everything it holds, or
    /// `timeout` passes. For an orderly shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| KafkaError::Flush(e.to_string()))?
            .map_err(|e| KafkaError::Flush(e.to_string()))
    }

    fn producer(&self) -> EdgeProducer {
        self.producer.lock().clone().expect("producer until drop")
    }

    /// Replaces a producer that raised a fatal error (it refuses every record from then on) or
    /// whose last delivery stalled. The old one is dropped on a blocking thread: dropping
    /// purges, flushes and joins threads.
    async fn rebuild_if_needed(&self) -> Result<(), String> {
        if let Some((code, reason)) = self.producer().client().fatal_error() {
            tracing::error!(%code, reason, "kafka producer fatal error; building a new producer");
        } else if self.stalled.load(Ordering::Relaxed) {
            tracing::warn!("kafka producer stalled in the last delivery; building a new producer");
        } else {
            return Ok(());
        }
        let fresh = build_producer(&self.producer_config).map_err(|e| e.to_string())?;
        let old = self.producer.lock().replace(fresh);
        self.stalled.store(false, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }

    /// Waits for every delivery report (returned in the order of `pending`). Meanwhile:
    /// - every [`TOPICS_RECHECK`], re-creates missing topics (with `create_topics`): a broker
    ///   that lost them (tansu on `memory://` after a restart) would otherwise keep the records
    ///   waiting forever (`message.timeout.ms=0`);
    /// - every [`FATAL_CHECK`], purges a producer that raised a fatal error: librdkafka purges
    ///   its queues once, but batches whose responses arrive afterwards are re-queued for a
    ///   retry that never comes, and would wait forever too;
    /// - when no report arrived for `stall_timeout` while the broker answered every metadata
    ///   request for that long (asked every [`STALL_CHECK`] once the delivery is quiet), purges
    ///   the producer (again every [`FATAL_CHECK`] until the delivery ends) and marks it for a
    ///   rebuild (see the crate documentation, "stalled producer"). The returned flag says so.
    async fn wait(
        &self,
        producer: &EdgeProducer,
        pending: Vec<DeliveryFuture>,
    ) -> (Vec<<DeliveryFuture as Future>::Output>, bool) {
        let mut results: Vec<Option<<DeliveryFuture as Future>::Output>> =
            std::iter::repeat_with(|| None)
                .take(pending.len())
                .collect();
        let mut running: futures::stream::FuturesUnordered<_> = pending
            .into_iter()
            .enumerate()
            .map(|(i, fut)| async move { (i, fut.await) })
            .collect();
        let every = |period| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        };
        let (mut topics, mut fatal) = (every(TOPICS_RECHECK), every(FATAL_CHECK));
        let mut stall_check = every(STALL_CHECK);
        let purge = |p: &EdgeProducer| {
            let p = p.clone();
            tokio::task::spawn_blocking(move || p.purge(PurgeConfig::default().queue().inflight()))
        };
        let mut watch = StallWatch::new();
        let mut stalled = false;
        loop {
            tokio::select! {
                next = running.next() => match next {
                    Some((i, result)) => {
                        results[i] = Some(result);
                        watch.progress();
                    }
                    None => break,
                },
                _ = topics.tick(), if self.cfg.create_topics => {
                    if let Err(e) = self.ensure_topics().await {
                        tracing::debug!(error = %e, "kafka delivery waiting; topics not checked");
                    }
                }
                _ = fatal.tick() => {
                    if stalled || producer.client().fatal_error().is_some() {
                        let _ = purge(producer).await;
                    }
                }
                _ = stall_check.tick(), if !stalled => {
                    if !watch.quiet_for(STALL_CHECK) {
                        continue;
                    }
                    let answers = match self.metadata(producer.clone()).await {
                        Health::Ok => true,
                        Health::Unavailable(why) => {
                            // An outage: waiting it out is the point of `message.timeout.ms=0`.
                            tracing::debug!(why, "kafka delivery waiting for the broker");
                            false
                        }
                    };
                    // Reports that came while the broker was asked are progress too.
                    while let Some(Some((i, result))) = running.next().now_or_never() {
                        results[i] = Some(result);
                        watch.progress();
                    }
                    if !watch.stalled(answers, self.cfg.stall_timeout) {
                        continue;
                    }
                    tracing::error!(
                        stall_timeout = ?self.cfg.stall_timeout,
                        waiting = running.len(),
                        "kafka delivery stalled: no delivery report while the broker answers; \
                         purging and rebuilding the producer"
                    );
                    stalled = true;
                    self.stalled.store(true, Ordering::Relaxed);
                    let _ = purge(producer).await;
                }
            }
        }
        let results = results
            .into_iter()
            .map(|r| r.expect("every delivery future finished"))
            .collect();
        (results, stalled)
    }

    /// Enqueues `batch` in order; stops at the first record librdkafka refuses (its error is
    /// returned with the futures of the records before it).
    async fn enqueue(
        &self,
        producer: &EdgeProducer,
        batch: &[Record],
    ) -> (Vec<DeliveryFuture>, Option<String>) {
        let mut pending = Vec::with_capacity(batch.len());
        for rec in batch {
            let topic = self.cfg.topics.topic(rec.kind);
            let seq = rec.seq.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "event-id",
                    value: Some(seq.as_str()),
                })
                .insert(Header {
                    key: "event-kind",
                    value: Some(rec.kind.as_str()),
                });
            let mut record = FutureRecord::to(&topic)
                .key(rec.key.as_str())
                .payload(rec.payload.get())
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(fut) => {
                        pending.push(fut);
                        break;
                    }
                    Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err((e, _)) => return (pending, Some(format!("enqueue seq {}: {e}", rec.seq))),
                }
            }
        }
        (pending, None)
    }
}

/// How often a delivery still waiting re-creates missing topics (with `create_topics`).
const TOPICS_RECHECK: Duration = Duration::from_secs(10);
/// How often a delivery still waiting checks the producer for a fatal error.
const FATAL_CHECK: Duration = Duration::from_secs(1);
/// How often a quiet delivery asks the broker for metadata, to tell a stall (`stall_timeout`)
/// from an outage.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// Tells a stalled delivery from a waiting one: quiet (no delivery report) for `stall_timeout`
/// while the broker answered every metadata request over that time (one per [`STALL_CHECK`],
/// the first and the last `stall_timeout` apart). An outage, or a report, starts the count
/// again, so a broker that just came back has that long to take what waited for it.
struct StallWatch {
    quiet_since: Instant,
    /// Metadata requests answered in a row since the last report or outage.
    answered: u32,
}

impl StallWatch {
    fn new() -> Self {
        Self {
            quiet_since: Instant::now(),
            answered: 0,
        }
    }

    fn progress(&mut self) {
        self.quiet_since = Instant::now();
        self.answered = 0;
    }

    fn quiet_for(&self, period: Duration) -> bool {
        self.quiet_since.elapsed() >= period
    }

    /// Records whether the broker answered now; true when the delivery has stalled.
    fn stalled(&mut self, answered: bool, stall_timeout: Duration) -> bool {
        if !answered {
            self.answered = 0;
            return false;
        }
        self.answered += 1;
        // The first and the last answered request are `stall_timeout` apart.
        STALL_CHECK * (self.answered - 1) >= stall_timeout && self.quiet_for(stall_timeout)
    }
}

fn build_producer(config: &ClientConfig) -> Result<EdgeProducer, KafkaError> {
    config
        .create_with_context(TracingContext)
        .map_err(|e| KafkaError::Config(e.to_string()))
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        "kafka"
    }

    async fn deliver(&self, batch: &[Record]) -> Result<(), Undelivered> {
        let undelivered = |delivered, reason| Undelivered { delivered, reason };
        self.rebuild_if_needed()
            .await
            .map_err(|r| undelivered(0, r))?;
        if self.cfg.create_topics && !self.topics_ready.load(Ordering::Relaxed) {
            self.ensure_topics()
                .await
                .map_err(|e| undelivered(0, e.to_string()))?;
        }
        let started = Instant::now();
        let producer = self.producer();
        let (pending, enqueue_error) = self.enqueue(&producer, batch).await;
        let (results, stalled) = self.wait(&producer, pending).await;
        let fatal = producer.client().fatal_error();
        drop(producer);
        let delivered = results
            .iter()
            .take_while(|r| matches!(r, Ok(Ok(_))))
            .count();
        let reason = match results.into_iter().find(|r| !matches!(r, Ok(Ok(_)))) {
            Some(Ok(Err((e, _)))) => Some(e.to_string()),
            Some(Err(_)) => Some("producer dropped before the delivery report".into()),
            Some(Ok(Ok(_))) | None => enqueue_error,
        };
        match reason {
            None => {
                let elapsed = started.elapsed();
                tracing::debug!(records = batch.len(), ?elapsed, "kafka batch delivered");
                Ok(())
            }
            Some(reason) => {
                let reason = match fatal {
                    Some((code, fatal)) => {
                        format!("fatal producer error {code:?} ({fatal}); {reason}")
                    }
                    None if stalled => format!(
                        "producer stalled (no delivery report in {:?} while the broker \
                         answered), purged; {reason}",
                        self.cfg.stall_timeout
                    ),
                    None => reason,
                };
                // A fatal or stalled producer is rebuilt (and logged) by the next delivery.
                self.topics_ready.store(false, Ordering::Relaxed);
                Err(undelivered(delivered, reason))
            }
        }
    }
}

impl Drop for KafkaSink {
    // Dropping librdkafka clients blocks (purge, a 500 ms flush, thread joins): never on an
    // async worker thread.
    fn drop(&mut self) {
        let producer = self.producer.lock().take();
        let admin = self.admin.take();
        std::thread::spawn(move || drop((producer, admin)));
    }
}
