//! The producer every sink of a process shares, and the acknowledgements it counts per timely time, so that a sink
//! knows when everything it sent at a time is durable at the broker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};

use super::{KafkaSettings, kafka};
use crate::Error;

/// What a sink sends for one record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Acknowledgements still outstanding per time, for one sink (or one `produce` run).
#[derive(Debug, Default)]
pub struct Acks {
    outstanding: Mutex<BTreeMap<u64, usize>>,
    failure: Mutex<Option<String>>,
}

impl Acks {
    fn sent(&self, time: u64) {
        *self.outstanding.lock().unwrap_or_else(|p| p.into_inner()).entry(time).or_default() += 1;
    }

    fn settle(&self, time: u64, failure: Option<String>) {
        let mut outstanding = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = outstanding.get_mut(&time) {
            *count -= 1;
            if *count == 0 {
                outstanding.remove(&time);
            }
        }
        if let Some(failure) = failure {
            self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(failure);
        }
    }

    /// Whether every message sent at `time` has been acknowledged (or has failed: see [`Acks::failure`]).
    pub fn settled(&self, time: u64) -> bool {
        !self.outstanding.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&time)
    }

    /// Messages not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.outstanding.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    /// The first delivery that failed for good (after librdkafka's retries), if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What travels with each message to its delivery report.
struct Tracked {
    acks: Arc<Acks>,
    time: u64,
}

struct DeliveryReport;

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = Box<Tracked>;

    fn delivery(&self, result: &DeliveryResult<'_>, tracked: Box<Tracked>) {
        let failure =
            result.as_ref().err().map(|(error, message)| format!("delivery to {} failed: {error}", message.topic()));
        tracked.acks.settle(tracked.time, failure);
    }
}

/// A producer shared by every worker of a process (idempotent, acks=all).
#[derive(Clone)]
pub struct Producer {
    inner: ThreadedProducer<DeliveryReport>,
    max_message_bytes: usize,
}

impl Producer {
    /// Connects a producer.
    pub fn open(settings: &KafkaSettings) -> Result<Self, Error> {
        let inner = settings
            .client()
            .set("compression.type", &settings.compression)
            .set("message.max.bytes", settings.max_message_bytes.to_string())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // Wait out broker outages instead of failing deliveries; the source's in-flight budget bounds memory.
            .set("message.timeout.ms", "0")
            .create_with_context(DeliveryReport)
            .map_err(kafka(format!("cannot create a producer for {}", settings.brokers)))?;
        Ok(Producer { inner, max_message_bytes: settings.max_message_bytes })
    }

    /// Largest message the producer accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Queues one message, counted in `acks` under `time` until the broker acknowledges it; waits while the local
    /// queue is full.
    pub fn send(&self, topic: &str, record: &Record, acks: &Arc<Acks>, time: u64) -> Result<(), Error> {
        self.send_to(topic, None, record, acks, time)
    }

    /// Like [`Producer::send`], with a message timestamp.
    pub fn send_to(
        &self,
        topic: &str,
        timestamp_ms: Option<i64>,
        record: &Record,
        acks: &Arc<Acks>,
        time: u64,
    ) -> Result<(), Error> {
        acks.sent(time);
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header { key, value: Some(value.as_slice()) });
            }
            let tracked = Box::new(Tracked { acks: acks.clone(), time });
            let mut message =
                BaseRecord::<[u8], [u8], _>::with_opaque_to(topic, tracked).payload(&record.payload).headers(headers);
            if let Some(key) = &record.key {
                message = message.key(key.as_slice());
            }
            if let Some(ts) = timestamp_ms {
                message = message.timestamp(ts);
            }
            match self.inner.send(message) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => {
                    acks.settle(time, None);
                    return Err(Error::Kafka { what: format!("cannot produce to {topic}"), source: error });
                }
            }
        }
    }

    /// Waits up to `timeout` for every message queued by this process to be acknowledged or to fail: `true` when
    /// none is left in flight.
    pub fn flush(&self, timeout: Duration) -> Result<bool, Error> {
        match self.inner.flush(timeout) {
            Ok(()) => Ok(true),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => Ok(false),
            Err(error) => Err(Error::Kafka { what: "cannot flush the producer".into(), source: error }),
        }
    }
}
