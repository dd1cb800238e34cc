//! librdkafka callbacks → `tracing`.

use rdkafka::{ClientContext, config::RDKafkaLogLevel, error::KafkaError};

/// librdkafka's log level from what `tracing` records for target `edge_kafka::librdkafka`
/// (rdkafka would ask the `log` crate, which has no logger here).
pub(crate) fn log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "edge_kafka::librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "edge_kafka::librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    }
}

/// Sends librdkafka's log lines and global errors to `tracing` (target `edge_kafka::librdkafka`)
/// instead of the `log` crate.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "edge_kafka::librdkafka", fac, "{message}")
            }
            // Errors are mostly failed connections while Kafka is down: the records wait in
            // librdkafka's queue meanwhile, so an outage is a warning.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "edge_kafka::librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "edge_kafka::librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "edge_kafka::librdkafka", fac, "{message}")
            }
        }
    }

    // Global errors repeat what `log` just said (a failed connection, all brokers down), except
    // a fatal error, which the sink logs itself when it rebuilds the producer.
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "edge_kafka::librdkafka", %error, "{reason}");
    }
}
