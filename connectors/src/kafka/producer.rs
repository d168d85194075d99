//! The producer every sink of a process shares, and the acknowledgements it counts per timely time, so that a sink
//! knows when everything it sent at a time is durable at the broker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
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

/// A message the broker refused with an error it gives for a failure of its own, to be sent again.
struct Retry {
    topic: String,
    timestamp_ms: Option<i64>,
    record: Record,
    tracked: Box<Tracked>,
}

/// Settles each delivery in its [`Acks`], or keeps it for sending again (see [`resent`]).
struct DeliveryReport {
    retries: Arc<Mutex<Vec<Retry>>>,
}

/// Whether a failed delivery is sent again rather than failing its sink: the broker's `UNKNOWN_SERVER_ERROR`, which
/// librdkafka does not retry, is what the bundled broker answers a produce request with while it shuts down; a Kafka
/// broker gives it for failures of its own. Everything librdkafka retries itself never fails here
/// (`message.timeout.ms` is 0), and the rest (a message too large, a topic that is not there) would fail again.
fn resent(error: &KafkaError) -> bool {
    matches!(error, KafkaError::MessageProduction(RDKafkaErrorCode::Unknown))
}

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = Box<Tracked>;

    fn delivery(&self, result: &DeliveryResult<'_>, tracked: Box<Tracked>) {
        match result {
            Ok(_) => tracked.acks.settle(tracked.time, None),
            Err((error, message)) if resent(error) => {
                tracing::warn!(topic = message.topic(), %error, "A delivery failed at the broker; it is sent again.");
                let headers = message.headers().map_or_else(Vec::new, |headers| {
                    headers.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect()
                });
                let record = Record {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                };
                let retry = Retry {
                    topic: message.topic().to_owned(),
                    timestamp_ms: message.timestamp().to_millis(),
                    record,
                    tracked,
                };
                self.retries.lock().unwrap_or_else(|p| p.into_inner()).push(retry);
            }
            Err((error, message)) => {
                let failure = format!("delivery to {} failed: {error}", message.topic());
                tracked.acks.settle(tracked.time, Some(failure));
            }
        }
    }
}

/// Stops the thread that sends failed deliveries again once the last clone of the producer is gone.
struct Resender {
    stop: Arc<AtomicBool>,
}

impl Drop for Resender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A producer shared by every worker of a process (acks=all, one request in flight per connection, so a retry keeps
/// each partition's order). Not idempotent: the bundled broker's idempotence check panics on the retries of an
/// idempotent producer that reach it after a restart (tansu 0.6.0, "more or less than one row"), which leaves it
/// unusable; a retry may then repeat a record, which the at-least-once segments topic allows (readers take the latest
/// record per segment).
#[derive(Clone)]
pub struct Producer {
    inner: ThreadedProducer<DeliveryReport>,
    max_message_bytes: usize,
    _resender: Arc<Resender>,
}

impl Producer {
    /// Connects a producer.
    pub fn open(settings: &KafkaSettings) -> Result<Self, Error> {
        let retries = Arc::new(Mutex::new(Vec::new()));
        let inner: ThreadedProducer<DeliveryReport> = settings
            .client()
            .set("compression.type", &settings.compression)
            .set("message.max.bytes", settings.max_message_bytes.to_string())
            .set("enable.idempotence", "false")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "5")
            // Wait out broker outages instead of failing deliveries; the source's in-flight budget bounds memory.
            .set("message.timeout.ms", "0")
            .create_with_context(DeliveryReport { retries: retries.clone() })
            .map_err(kafka(format!("cannot create a producer for {}", settings.brokers)))?;
        // Deliveries the broker failed (see [`resent`]) are sent again every 200 ms, counted where they were.
        let stop = Arc::new(AtomicBool::new(false));
        let (producer, stopping) = (inner.clone(), stop.clone());
        std::thread::Builder::new()
            .name("chorus-resend".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let due = std::mem::take(&mut *retries.lock().unwrap_or_else(|p| p.into_inner()));
                    for retry in due {
                        resend(&producer, retry);
                    }
                }
            })
            .map_err(|e| Error::Topic(format!("cannot start the producer's resend thread: {e}")))?;
        Ok(Producer { inner, max_message_bytes: settings.max_message_bytes, _resender: Arc::new(Resender { stop }) })
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
        let tracked = Box::new(Tracked { acks: acks.clone(), time });
        enqueue(&self.inner, topic, timestamp_ms, record, tracked).map_err(|(error, tracked)| {
            tracked.acks.settle(time, None);
            Error::Kafka { what: format!("cannot produce to {topic}"), source: error }
        })
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

/// Queues one message with its delivery opaque, waiting while the local queue is full; hands the opaque back with
/// the error when the message cannot be queued.
fn enqueue(
    producer: &ThreadedProducer<DeliveryReport>,
    topic: &str,
    timestamp_ms: Option<i64>,
    record: &Record,
    tracked: Box<Tracked>,
) -> Result<(), (KafkaError, Box<Tracked>)> {
    let mut tracked = tracked;
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header { key, value: Some(value.as_slice()) });
        }
        let mut message =
            BaseRecord::<[u8], [u8], _>::with_opaque_to(topic, tracked).payload(&record.payload).headers(headers);
        if let Some(key) = &record.key {
            message = message.key(key.as_slice());
        }
        if let Some(ts) = timestamp_ms {
            message = message.timestamp(ts);
        }
        match producer.send(message) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), message)) => {
                tracked = message.delivery_opaque;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((error, message)) => return Err((error, message.delivery_opaque)),
        }
    }
}

/// Queues a failed delivery again, still counted in its sink's acknowledgements; one that cannot be queued fails.
fn resend(producer: &ThreadedProducer<DeliveryReport>, retry: Retry) {
    let Retry { topic, timestamp_ms, record, tracked } = retry;
    if let Err((error, tracked)) = enqueue(producer, &topic, timestamp_ms, &record, tracked) {
        tracked.acks.settle(tracked.time, Some(format!("delivery to {topic} failed: {error}")));
    }
}
