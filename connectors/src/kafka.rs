//! Kafka: the audio-chunk message contract, the source (explicit partition assignment, manual commits behind the
//! sinks' durability frontier), the producer, and sinks that report what the broker has acknowledged.
//!
//! Progress follows Materialize's Kafka source: no consumer-group rebalancing inside a job — worker `w` of `W` reads
//! the partitions `p` with `p mod W = w` — and `enable.auto.commit=false`. Messages enter the dataflow at the wall
//! clock's millisecond (a timely time, advanced on every activation, even without messages), and the source
//! remembers, per epoch, the next offset of each partition it read. An epoch's offsets become committable once the
//! probe over every durable sink has passed it; each partition is then committed up to the oldest chunk the segmenting
//! workers still report as pending, and no further.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_operators::FieldError;
use chorus_operators::record::{
    AudioChunk, DeadLetter, Nanos, Origin, PartitionProgress, PendingReport, Priority, SegmentId, rfc3339,
};
use chorus_operators::throttle::Throttle;
use chorus_operators::wakeup::Wakeup;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::stop::Stop;
use crate::wav::{self, DecodeLimits};
use crate::{Error, Fatal};

/// Header naming the tenant ("space") of a chunk; absent means `default`.
pub const HEADER_SPACE: &str = "space";
/// Header with the RFC 3339 capture time of a chunk's first sample; absent means the Kafka timestamp.
pub const HEADER_CAPTURED_AT: &str = "captured_at";
/// Header with a chunk's priority: `critical`, `high`, `normal` (default) or `low`.
pub const HEADER_PRIORITY: &str = "priority";
/// Dead-letter header: why the record was rejected.
pub const HEADER_REASON: &str = "chorus.reason";
/// Dead-letter header: the short cause (`not_wav`, `truncated`, ...).
pub const HEADER_CAUSE: &str = "chorus.cause";
/// Dead-letter header: `topic/partition@offset` of the rejected message.
pub const HEADER_ORIGIN: &str = "chorus.origin";
/// Dead-letter header: present when the original payload was too large to be carried along.
pub const HEADER_PAYLOAD_DROPPED: &str = "chorus.payload_dropped";

/// The space a chunk without a `space` header belongs to.
pub const DEFAULT_SPACE: &str = "default";

/// `[kafka]`: the broker, the topics and the message limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic of audio chunks (key = sensor id, value = one WAV file).
    pub audio_topic: String,
    /// Topic receiving one JSON record per new segment.
    pub segments_topic: String,
    /// Topic receiving rejected input with a `chorus.reason` header.
    pub dead_letter_topic: String,
    /// Topic of given labels (key = segment id, value = the label in UTF-8; an empty or null value takes the
    /// segment's label away). `POST /v1/labels` produces to it; the job reads it from the start at every run.
    pub labels_topic: String,
    /// Consumer group under which the job commits its offsets (it never joins the group).
    pub group_id: String,
    /// Partitions of the audio topic when chorus creates it.
    pub partitions: i32,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Largest message accepted, in bytes (larger chunks are dead-lettered; producers split below it).
    pub max_message_bytes: usize,
    /// Producer compression: `none`, `gzip` or `lz4` (Snappy is refused: the bundled broker cannot read it back).
    pub compression: String,
    /// Milliseconds between checks for the broker's acknowledgements of what the sinks produced.
    pub flush_interval_ms: u64,
    /// Longest a fetch of audio waits at the broker for data (`fetch.wait.max.ms`). Brokers that hold a fetch for
    /// the whole wait even when data arrives (the bundled one does) add up to this much to every chunk's latency;
    /// shorter waits cost more fetch requests.
    pub fetch_wait_ms: u64,
    /// How far a chunk's `captured_at` may lie after its Kafka timestamp (audio cannot be produced before it is
    /// recorded; a sensor clock further ahead is rejected, since it would misplace the sensor's audio).
    pub max_clock_skew_seconds: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            audio_topic: "chorus.audio".into(),
            segments_topic: "chorus.segments".into(),
            dead_letter_topic: "chorus.dead-letter".into(),
            labels_topic: "chorus.labels".into(),
            group_id: "chorus".into(),
            partitions: 4,
            create_topics: true,
            max_message_bytes: 1_000_000,
            compression: "lz4".into(),
            flush_interval_ms: 100,
            fetch_wait_ms: 100,
            max_clock_skew_seconds: 600,
        }
    }
}

impl KafkaConfig {
    /// Validates.
    pub fn build(&self) -> Result<KafkaSettings, FieldError> {
        if self.brokers.trim().is_empty() {
            return Err(FieldError::new("brokers", "is empty"));
        }
        for (field, topic) in [
            ("audio_topic", &self.audio_topic),
            ("segments_topic", &self.segments_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("labels_topic", &self.labels_topic),
        ] {
            let valid = !topic.is_empty()
                && topic.len() <= 249
                && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(FieldError::new(
                    field,
                    format!("'{topic}' is not a valid topic name ([A-Za-z0-9._-]{{1,249}})"),
                ));
            }
        }
        if self.group_id.is_empty() {
            return Err(FieldError::new("group_id", "is empty"));
        }
        if !(1..=10_000).contains(&self.partitions) {
            return Err(FieldError::new("partitions", format!("{} is outside 1..=10000", self.partitions)));
        }
        if self.max_clock_skew_seconds > 31_536_000 {
            return Err(FieldError::new(
                "max_clock_skew_seconds",
                format!("{} is more than a year", self.max_clock_skew_seconds),
            ));
        }
        if !(1_024..=100_000_000).contains(&self.max_message_bytes) {
            return Err(FieldError::new(
                "max_message_bytes",
                format!("{} is outside 1024..=100000000", self.max_message_bytes),
            ));
        }
        if !(1..=10_000).contains(&self.fetch_wait_ms) {
            return Err(FieldError::new("fetch_wait_ms", format!("{} is outside 1..=10000", self.fetch_wait_ms)));
        }
        match self.compression.as_str() {
            "none" | "gzip" | "lz4" => {}
            "snappy" => {
                return Err(FieldError::new(
                    "compression",
                    "snappy is refused: the bundled broker accepts it but can never read such a partition back; use lz4",
                ));
            }
            other => return Err(FieldError::new("compression", format!("'{other}' is not one of none, gzip, lz4"))),
        }
        Ok(KafkaSettings {
            brokers: self.brokers.clone(),
            audio_topic: self.audio_topic.clone(),
            segments_topic: self.segments_topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            labels_topic: self.labels_topic.clone(),
            group_id: self.group_id.clone(),
            partitions: self.partitions,
            create_topics: self.create_topics,
            max_message_bytes: self.max_message_bytes,
            compression: self.compression.clone(),
            flush_interval: Duration::from_millis(self.flush_interval_ms.max(1)),
            fetch_wait: Duration::from_millis(self.fetch_wait_ms),
            max_clock_skew: Duration::from_secs(self.max_clock_skew_seconds),
        })
    }
}

/// Validated Kafka settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Audio chunks.
    pub audio_topic: String,
    /// Segment records.
    pub segments_topic: String,
    /// Dead letters.
    pub dead_letter_topic: String,
    /// Given labels.
    pub labels_topic: String,
    /// Group for committed offsets.
    pub group_id: String,
    /// Partitions of a created audio topic.
    pub partitions: i32,
    /// Create missing topics.
    pub create_topics: bool,
    /// Largest accepted message.
    pub max_message_bytes: usize,
    /// Producer compression codec.
    pub compression: String,
    /// Time between acknowledgement waits.
    pub flush_interval: Duration,
    /// Longest a fetch waits at the broker.
    pub fetch_wait: Duration,
    /// Largest lead of `captured_at` over the Kafka timestamp.
    pub max_clock_skew: Duration,
}

impl KafkaSettings {
    /// What a chunk message may be.
    pub fn chunk_limits(&self) -> ChunkLimits {
        ChunkLimits {
            max_bytes: self.max_message_bytes,
            max_clock_skew: self.max_clock_skew,
            wav: DecodeLimits::default(),
        }
    }
}

/// What a chunk message may be.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkLimits {
    /// Largest payload.
    pub max_bytes: usize,
    /// Largest lead of `captured_at` over the Kafka timestamp.
    pub max_clock_skew: Duration,
    /// What the WAV file may hold.
    pub wav: DecodeLimits,
}

/// Earliest accepted `captured_at`: 1970-01-01T00:00:00Z.
const EARLIEST: Nanos = 0;
/// Latest accepted `captured_at`: 2200-01-01T00:00:00Z (time arithmetic stays far from overflow below it).
const LATEST: Nanos = 7_258_118_400_000_000_000;

impl KafkaSettings {
    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("log_level", "4");
        config
    }
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let what = what.into();
    move |source| Error::Kafka { what, source }
}

/// Creates the audio, segments, dead-letter and labels topics where missing.
pub fn ensure_topics(settings: &KafkaSettings) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> =
        settings.client().create().map_err(kafka(format!("cannot create an admin client for {}", settings.brokers)))?;
    // The dead-letter topic carries chunks as large as the audio topic accepts.
    let max_bytes = settings.max_message_bytes.to_string();
    let topics = [
        NewTopic::new(&settings.audio_topic, settings.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&settings.segments_topic, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&settings.dead_letter_topic, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&settings.labels_topic, 1, TopicReplication::Fixed(1)),
    ]
    .map(|topic| topic.set("max.message.bytes", &max_bytes));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_executor::block_on(admin.create_topics(&topics, &options))
        .map_err(kafka(format!("cannot create topics on {}", settings.brokers)))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Kafka {
                    what: format!("cannot create topic {topic}"),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}

/// Whether the broker answers, as seen by a [`BrokerWatch`].
#[derive(Debug, Default)]
pub struct BrokerStatus {
    last_ok: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    /// The next offset this process reads, per partition of the audio topic it reads.
    reading: Mutex<BTreeMap<i32, i64>>,
}

impl BrokerStatus {
    /// How long since the broker last answered; `None` when it never has.
    pub fn unanswered_for(&self) -> Option<Duration> {
        self.last_ok.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    /// The last error seen while asking.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tells the watch how far a reader has come: the next offset it reads, per partition it reads.
    pub fn reading<'a>(&self, next: impl IntoIterator<Item = (&'a i32, &'a i64)>) {
        self.reading.lock().unwrap_or_else(|p| p.into_inner()).extend(next.into_iter().map(|(p, o)| (*p, *o)));
    }
}

/// A thread asking the broker for the audio topic's metadata twice a second and, every 2 s, for the high watermark of
/// each partition being read, to report the consumer lag; stops when dropped.
pub struct BrokerWatch {
    status: Arc<BrokerStatus>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BrokerWatch {
    /// Starts watching the brokers of `settings`; `lag(partition, messages)` hears how many messages of each
    /// partition being read (see [`BrokerStatus::reading`]) are not read yet.
    pub fn start(settings: &KafkaSettings, lag: impl Fn(i32, i64) + Send + 'static) -> Result<BrokerWatch, Error> {
        let client: BaseConsumer =
            settings.client().create().map_err(kafka(format!("cannot create a client for {}", settings.brokers)))?;
        let (status, stop) = (Arc::new(BrokerStatus::default()), Arc::new(AtomicBool::new(false)));
        let (watched, stopping, topic) = (status.clone(), stop.clone(), settings.audio_topic.clone());
        let thread = std::thread::Builder::new()
            .name("chorus-broker-watch".into())
            .spawn(move || {
                for turn in 0u64.. {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    match client.fetch_metadata(Some(&topic), Duration::from_secs(1)) {
                        Ok(_) => *watched.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now()),
                        Err(e) => *watched.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string()),
                    }
                    if turn % 4 == 0 {
                        let reading = watched.reading.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        for (partition, next) in reading {
                            // Messages before `low` have expired and will not be read.
                            if let Ok((low, high)) = client.fetch_watermarks(&topic, partition, Duration::from_secs(1))
                            {
                                lag(partition, (high - next.max(low)).max(0));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
            .map_err(|e| Error::Topic(format!("cannot start the broker watch: {e}")))?;
        Ok(BrokerWatch { status, stop, thread: Some(thread) })
    }

    /// What the watch sees.
    pub fn status(&self) -> Arc<BrokerStatus> {
        self.status.clone()
    }
}

impl Drop for BrokerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Commits `offsets` for the audio topic under the job's group.
pub fn commit_offsets(settings: &KafkaSettings, offsets: &BTreeMap<i32, i64>) -> Result<(), Error> {
    if offsets.is_empty() {
        return Ok(());
    }
    let consumer = group_client(settings)?;
    let mut list = TopicPartitionList::new();
    for (&partition, &offset) in offsets {
        list.add_partition_offset(&settings.audio_topic, partition, Offset::Offset(offset))
            .map_err(kafka("cannot build the commit"))?;
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(kafka(format!("cannot commit offsets of {}", settings.audio_topic)))
}

fn group_client(settings: &KafkaSettings) -> Result<BaseConsumer, Error> {
    settings
        .client()
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka(format!("cannot create a consumer for {}", settings.brokers)))
}

fn partitions(consumer: &BaseConsumer, settings: &KafkaSettings) -> Result<TopicPartitionList, Error> {
    topic_partitions(consumer, settings, &settings.audio_topic)
}

fn topic_partitions(
    consumer: &BaseConsumer,
    settings: &KafkaSettings,
    topic: &str,
) -> Result<TopicPartitionList, Error> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka(format!("cannot read metadata of topic {topic} from {}", settings.brokers)))?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic && t.error().is_none()) {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    if list.count() == 0 {
        return Err(Error::Topic(format!(
            "topic {topic} does not exist on {}; run scripts/broker.sh start or set kafka.create_topics = true",
            settings.brokers
        )));
    }
    Ok(list)
}

/// One Kafka message, copied out of the client.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMessage {
    /// Where it was read.
    pub origin: Origin,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub payload: Option<Vec<u8>>,
    /// Headers in order (a header without a value has an empty one).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Kafka timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
    /// Whether the broker set the timestamp when it appended the message (the topic's `LogAppendTime`), rather than
    /// the producer.
    pub log_append_time: bool,
}

impl RawMessage {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// A dead letter carrying this message and `reason`.
    pub fn reject(self, cause: &'static str, reason: String) -> DeadLetter {
        DeadLetter {
            origin: Some(self.origin),
            key: self.key,
            headers: self.headers,
            payload: self.payload.unwrap_or_default(),
            reason,
            cause,
        }
    }
}

/// Decodes an audio-chunk message: key = sensor id, value = WAV, headers `space`, `captured_at`, `priority`; `now` is
/// the job's clock (nanoseconds since the epoch).
///
/// Audio cannot have been recorded after it reached the job, nor after the broker appended it: a `captured_at` more
/// than `max_clock_skew` after the job's clock, or after the broker's timestamp of a `LogAppendTime` topic, is
/// refused. A producer's own timestamp is a second opinion from the sensor's side, checked the same way.
pub fn decode_message(message: RawMessage, limits: &ChunkLimits, now: Nanos) -> Result<AudioChunk, DeadLetter> {
    let sensor = match message.key.as_deref().map(std::str::from_utf8) {
        None => return Err(message.reject("no_key", "the message has no key; the key is the sensor id".into())),
        Some(Err(_)) => return Err(message.reject("bad_key", "the key (sensor id) is not UTF-8".into())),
        Some(Ok(s)) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
            let shown: String = s.chars().take(64).collect();
            let reason = format!(
                "the sensor id {shown:?}{} ({} bytes) must be 1 to 256 bytes without control characters",
                if shown.len() < s.len() { "…" } else { "" },
                s.len()
            );
            return Err(message.reject("bad_key", reason));
        }
        Some(Ok(s)) => s.to_owned(),
    };
    let text = |name: &str| message.header(name).map(|v| std::str::from_utf8(v).map_err(|_| name.to_owned()));
    let space = match text(HEADER_SPACE) {
        None => DEFAULT_SPACE.to_owned(),
        Some(Ok(s)) if valid_space(s) => s.to_owned(),
        Some(Ok(s)) => {
            let reason = format!("space {s:?} must match [A-Za-z0-9_-][A-Za-z0-9._-]{{0,63}}");
            return Err(message.reject("bad_space", reason));
        }
        Some(Err(_)) => return Err(message.reject("bad_space", "the space header is not UTF-8".into())),
    };
    let produced: Option<Nanos> = message.timestamp_ms.filter(|ms| *ms > 0).and_then(|ms| ms.checked_mul(1_000_000));
    let captured_at: Nanos = match text(HEADER_CAPTURED_AT) {
        Some(Ok(s)) => match chrono::DateTime::parse_from_rfc3339(s).ok().and_then(|t| t.timestamp_nanos_opt()) {
            Some(t) if (EARLIEST..LATEST).contains(&t) => t,
            Some(_) => {
                let reason = format!("captured_at {s:?} lies outside 1970..2200");
                return Err(message.reject("bad_captured_at", reason));
            }
            None => {
                let reason = format!("captured_at {s:?} is not an RFC 3339 time (e.g. 2026-05-01T05:00:00Z)");
                return Err(message.reject("bad_captured_at", reason));
            }
        },
        Some(Err(_)) => return Err(message.reject("bad_captured_at", "the captured_at header is not UTF-8".into())),
        None => match produced.filter(|t| (EARLIEST..LATEST).contains(t)) {
            Some(t) => t,
            None => return Err(message.reject("no_time", "no captured_at header and no usable Kafka timestamp".into())),
        },
    };
    let skew = limits.max_clock_skew.as_nanos() as Nanos;
    let clocks = [
        Some((now, "this job's clock")),
        produced.map(|t| {
            (t, if message.log_append_time { "the broker's append time" } else { "the producer's timestamp" })
        }),
    ];
    if let Some((clock, whose)) =
        clocks.into_iter().flatten().find(|(clock, _)| captured_at > clock.saturating_add(skew))
    {
        let reason = format!(
            "captured_at {} is {:.0} s after {whose} ({}): audio cannot be recorded after it is sent, so the sensor's \
             clock is ahead (kafka.max_clock_skew_seconds = {})",
            rfc3339(captured_at),
            (captured_at - clock) as f64 / 1e9,
            rfc3339(clock),
            limits.max_clock_skew.as_secs()
        );
        return Err(message.reject("bad_captured_at", reason));
    }
    let priority = match text(HEADER_PRIORITY) {
        None => Priority::Normal,
        Some(Ok(s)) => match s.parse() {
            Ok(p) => p,
            Err(reason) => return Err(message.reject("bad_priority", reason)),
        },
        Some(Err(_)) => return Err(message.reject("bad_priority", "the priority header is not UTF-8".into())),
    };
    let size = message.payload.as_ref().map_or(0, Vec::len);
    if size > limits.max_bytes {
        let reason = format!("the message is {size} bytes, above max_message_bytes = {}", limits.max_bytes);
        return Err(message.reject("oversized", reason));
    }
    let audio = match wav::decode(message.payload.as_deref().unwrap_or_default(), &limits.wav) {
        Ok(audio) => audio,
        Err(rejection) => return Err(message.reject(rejection.cause, rejection.reason)),
    };
    let now_ms = now.div_euclid(1_000_000);
    let sent_ms = produced.map_or(captured_at.div_euclid(1_000_000), |t| t.div_euclid(1_000_000)).min(now_ms);
    Ok(AudioChunk {
        space,
        sensor,
        captured_at,
        sent_ms,
        priority,
        sample_rate: audio.sample_rate,
        samples: audio.samples,
        origin: message.origin,
    })
}

/// Whether `s` can name a space (it becomes a directory name in the archive).
pub fn valid_space(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// One worker's consumer: its partitions, the offsets read per epoch, and what may be committed.
pub struct KafkaSource {
    consumer: BaseConsumer,
    topic: String,
    /// Next offset to read, per assigned partition.
    next: BTreeMap<i32, i64>,
    /// Per epoch, the next offsets after the messages of that epoch.
    epochs: VecDeque<(u64, BTreeMap<i32, i64>)>,
    /// Next offsets whose derived records are all durable.
    durable: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
    /// Bytes read per epoch that the embedding stage has not yet passed, and their sum.
    unembedded: VecDeque<(u64, usize)>,
    in_flight: usize,
    /// Most bytes in flight before reading pauses.
    max_in_flight: usize,
    /// Pending reports received and not yet applied, by time.
    reports: BTreeMap<u64, Vec<PendingReport>>,
    /// The latest applied report of each worker: its oldest pending chunk per partition.
    pending: BTreeMap<usize, Vec<(i32, i64)>>,
    /// How far each partition read here has been read, and what the segmenting workers were last told.
    progress: BTreeMap<i32, PartitionProgress>,
    reported: BTreeMap<i32, PartitionProgress>,
    /// Partitions of the audio topic.
    topic_partitions: usize,
    last_commit: Instant,
    high_watermarks_checked: Option<Instant>,
    consume_warnings: Throttle,
}

impl KafkaSource {
    /// Opens a consumer for worker `worker` of `peers` and assigns its partitions from the committed offsets; at most
    /// `max_in_flight` bytes of messages are read ahead of the embedding stage.
    pub fn open(settings: &KafkaSettings, worker: usize, peers: usize, max_in_flight: usize) -> Result<Self, Error> {
        let consumer: BaseConsumer = settings
            .client()
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // The end of a partition is reported: held-back chunks need to know when no partition can hold more.
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", settings.fetch_wait.as_millis().to_string())
            .set("max.partition.fetch.bytes", settings.max_message_bytes.max(1 << 20).to_string())
            // librdkafka's own read-ahead counts against the budget too.
            .set("queued.max.messages.kbytes", (max_in_flight / 4 / 1024).max(1_024).to_string())
            .create()
            .map_err(kafka(format!("cannot create a consumer for {}", settings.brokers)))?;
        let topic = settings.audio_topic.clone();
        let partitions: Vec<i32> = partitions(&consumer, settings)?.elements().iter().map(|e| e.partition()).collect();
        let topic_partitions = partitions.len();
        let mine: Vec<i32> = partitions.into_iter().filter(|p| (*p as usize) % peers == worker).collect();
        let progress =
            mine.iter().map(|&p| (p, PartitionProgress { partition: p, read_ms: None, caught_up: false })).collect();
        let mut next = BTreeMap::new();
        // What the group has committed — the commits made from here on are compared with it.
        let mut committed = BTreeMap::new();
        if !mine.is_empty() {
            let mut wanted = TopicPartitionList::new();
            for &p in &mine {
                wanted.add_partition(&topic, p);
            }
            let stored = consumer
                .committed_offsets(wanted, Duration::from_secs(10))
                .map_err(kafka(format!("cannot read committed offsets of group {}", settings.group_id)))?;
            let mut assignment = TopicPartitionList::new();
            for element in stored.elements() {
                if let Offset::Offset(n) = element.offset() {
                    committed.insert(element.partition(), n);
                }
                let (offset, start) = match element.offset() {
                    Offset::Offset(n) => (Offset::Offset(n), n),
                    // Nothing committed: from the oldest message still there.
                    _ => {
                        let (low, _) = consumer
                            .fetch_watermarks(&topic, element.partition(), Duration::from_secs(10))
                            .map_err(kafka(format!("cannot read the watermarks of {topic}")))?;
                        (Offset::Beginning, low)
                    }
                };
                assignment
                    .add_partition_offset(&topic, element.partition(), offset)
                    .map_err(kafka("cannot build the partition assignment"))?;
                next.insert(element.partition(), start);
            }
            consumer.assign(&assignment).map_err(kafka(format!("cannot assign partitions of {topic}")))?;
        }
        Ok(KafkaSource {
            consumer,
            topic,
            durable: next.clone(),
            next,
            epochs: VecDeque::new(),
            committed,
            unembedded: VecDeque::new(),
            in_flight: 0,
            max_in_flight,
            reports: BTreeMap::new(),
            pending: BTreeMap::new(),
            progress,
            reported: BTreeMap::new(),
            topic_partitions,
            last_commit: Instant::now(),
            high_watermarks_checked: None,
            consume_warnings: Throttle::default(),
        })
    }

    /// Partitions this worker reads.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.next.keys().copied()
    }

    fn poll(&mut self, max: usize, out: &mut Vec<RawMessage>) {
        while out.len() < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(progress) = self.progress.get_mut(&partition) {
                        progress.caught_up = true;
                    }
                }
                Some(Err(error)) => {
                    if self.consume_warnings.ready(Duration::from_secs(10)) {
                        tracing::warn!(%error, topic = %self.topic, "Kafka consumer error; retrying.");
                    }
                    break;
                }
                Some(Ok(message)) => {
                    let origin = Origin {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    self.next.insert(origin.partition, origin.offset + 1);
                    if let Some(progress) = self.progress.get_mut(&origin.partition) {
                        progress.caught_up = false;
                        progress.read_ms = progress.read_ms.max(message.timestamp().to_millis());
                    }
                    let headers = message
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                        .unwrap_or_default();
                    out.push(RawMessage {
                        origin,
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        headers,
                        timestamp_ms: message.timestamp().to_millis(),
                        log_append_time: matches!(message.timestamp(), rdkafka::Timestamp::LogAppendTime(_)),
                    });
                }
            }
        }
    }

    /// How far each partition this worker reads has been read, for those whose progress changed since the last
    /// call (all of them at the first).
    pub fn progress_changes(&mut self) -> Vec<PartitionProgress> {
        let changed: Vec<PartitionProgress> =
            self.progress.values().filter(|p| self.reported.get(&p.partition) != Some(p)).copied().collect();
        self.reported.extend(changed.iter().map(|p| (p.partition, *p)));
        changed
    }

    /// Partitions of the audio topic, read by this worker or another.
    pub fn topic_partitions(&self) -> usize {
        self.topic_partitions
    }

    /// Moves each partition's next offset past the control records the consumer passed, which never reach the
    /// dataflow (the consumer's position is local state: no broker round trip).
    fn skip_control_records(&mut self) {
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements() {
                if let (Offset::Offset(at), Some(next)) = (element.offset(), self.next.get_mut(&element.partition())) {
                    *next = (*next).max(at);
                }
            }
        }
    }

    /// Whether every assigned partition has been read up to its high watermark (checked at most once a second).
    fn drained(&mut self) -> bool {
        if self.high_watermarks_checked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        self.high_watermarks_checked = Some(Instant::now());
        self.skip_control_records();
        let topic = &self.topic;
        let consumer = &self.consumer;
        self.next.iter_mut().all(|(&p, next)| match consumer.fetch_watermarks(topic, p, Duration::from_secs(1)) {
            Ok((low, high)) => {
                // Messages before `low` have expired: the consumer resumes at `low`.
                *next = (*next).max(low);
                *next >= high
            }
            Err(_) => false,
        })
    }

    /// Forgets the bytes of epochs the embedding stage has passed (`unembedded(t)`: whether `t` may still be there).
    fn trim_embedded(&mut self, unembedded: impl Fn(&u64) -> bool) {
        while let Some(&(epoch, bytes)) = self.unembedded.front() {
            if unembedded(&epoch) {
                break;
            }
            self.unembedded.pop_front();
            self.in_flight -= bytes;
        }
    }

    fn record_bytes(&mut self, epoch: u64, bytes: usize) {
        match self.unembedded.back_mut() {
            Some((last, total)) if *last == epoch => *total += bytes,
            _ => self.unembedded.push_back((epoch, bytes)),
        }
        self.in_flight += bytes;
    }

    /// The next offset to read, per assigned partition (past the control records passed so far).
    pub fn next_offsets(&mut self) -> &BTreeMap<i32, i64> {
        self.skip_control_records();
        &self.next
    }

    /// Bytes read and not yet embedded.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn record_epoch(&mut self, epoch: u64) {
        match self.epochs.back_mut() {
            Some((last, offsets)) if *last == epoch => offsets.clone_from(&self.next),
            _ => self.epochs.push_back((epoch, self.next.clone())),
        }
    }

    /// Takes a pending report sent at `time`; it applies once every time up to `time` is settled.
    pub fn receive_report(&mut self, time: u64, report: PendingReport) {
        self.reports.entry(time).or_default().push(report);
    }

    /// Marks as durable every epoch, and applies every pending report, at a time the job's frontiers have passed
    /// (`unsettled(t)` says whether time `t` may still change in a sink or in the pending reports).
    pub fn observe_durable(&mut self, unsettled: impl Fn(&u64) -> bool) {
        while let Some((epoch, _)) = self.epochs.front() {
            if unsettled(epoch) {
                break;
            }
            let (_, offsets) = self.epochs.pop_front().expect("checked");
            self.durable.extend(offsets);
        }
        while let Some(entry) = self.reports.first_entry() {
            if unsettled(entry.key()) {
                break;
            }
            for report in entry.remove() {
                self.pending.insert(report.worker, report.pending);
            }
        }
    }

    /// Commits the durable offsets if they moved and `interval` has passed since the last commit.
    pub fn commit(&mut self, interval: Duration) -> Result<(), Error> {
        if self.last_commit.elapsed() < interval {
            return Ok(());
        }
        self.commit_now()
    }

    /// The offsets that may be committed: the durable ones, held back to each partition's oldest pending chunk.
    pub fn committable(&self) -> BTreeMap<i32, i64> {
        let mut offsets = self.durable.clone();
        for &(partition, oldest) in self.pending.values().flatten() {
            if let Some(next) = offsets.get_mut(&partition) {
                *next = (*next).min(oldest);
            }
        }
        offsets
    }

    fn commit_now(&mut self) -> Result<(), Error> {
        let offsets = self.committable();
        let changed: Vec<(i32, i64)> = offsets.into_iter().filter(|(p, o)| self.committed.get(p) != Some(o)).collect();
        self.last_commit = Instant::now();
        if changed.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in &changed {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(kafka("cannot build the commit"))?;
        }
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(kafka(format!("cannot commit offsets of {}", self.topic)))?;
        self.committed.extend(changed);
        Ok(())
    }

    /// After the dataflow has completed: every epoch is durable and every report applied. Commits everything read,
    /// less the chunks still needed (none when the segmenting workers stored their sensors).
    pub fn finish(&mut self) -> Result<(), Error> {
        self.observe_durable(|_| false);
        self.commit_now()
    }

    /// The committed offsets, per partition.
    pub fn committed(&self) -> &BTreeMap<i32, i64> {
        &self.committed
    }
}

/// The job's clock: nanoseconds since the Unix epoch.
pub fn now_nanos() -> Nanos {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as Nanos)
}

/// Milliseconds since the Unix epoch: the source's timely time.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads the worker's partitions into the dataflow, at the wall clock's millisecond; the second stream says how far
/// each partition has been read, whenever that changes (see [`PartitionProgress`]).
///
/// Reading pauses while the bytes read at epochs the `embedded` probe has not passed exceed the source's budget: under
/// overload the lag grows in Kafka, not in memory.
pub fn source<'scope>(
    scope: Scope<'scope, u64>,
    state: Rc<RefCell<KafkaSource>>,
    embedded: ProbeHandle<u64>,
    stop: Stop,
) -> (StreamVec<'scope, u64, RawMessage>, StreamVec<'scope, u64, PartitionProgress>) {
    let mut builder = OperatorBuilder::new("KafkaSource".to_owned(), scope);
    let info = builder.operator_info();
    let (messages_out, messages) = builder.new_output::<Vec<RawMessage>>();
    let (progress_out, progress) = builder.new_output::<Vec<PartitionProgress>>();
    let mut messages_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<RawMessage>>>::from(messages_out);
    let mut progress_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<PartitionProgress>>>::from(progress_out);
    let activator = scope.activator_for(info.address.clone());
    builder.build(move |initial| {
        let mut capabilities = Some(initial);
        let mut last_message = Instant::now();
        let mut batch = Vec::new();
        move |_frontiers| {
            let Some(caps) = capabilities.as_mut() else { return };
            let mut source = state.borrow_mut();
            if source.next.is_empty() || stop.requested.load(Ordering::Relaxed) {
                capabilities = None;
                return;
            }
            // Time moves on even without messages, so an idle worker never holds back the others' commits.
            let now = now_ms();
            for cap in caps.iter_mut() {
                if now > *cap.time() {
                    cap.downgrade(&now);
                }
            }
            source.trim_embedded(|t| embedded.less_equal(t));
            if source.in_flight >= source.max_in_flight {
                activator.activate_after(Duration::from_millis(5));
                return;
            }
            source.poll(4_096, &mut batch);
            let read = !batch.is_empty();
            if read {
                last_message = Instant::now();
                let bytes = batch.iter().map(|m| m.payload.as_ref().map_or(0, Vec::len)).sum();
                source.record_bytes(*caps[0].time(), bytes);
                messages_out.activate().session(&caps[0]).give_iterator(batch.drain(..));
                source.record_epoch(*caps[0].time());
            }
            let changes = source.progress_changes();
            if !changes.is_empty() {
                progress_out.activate().session(&caps[1]).give_iterator(changes.into_iter());
            }
            if read {
                activator.activate();
                return;
            }
            if let Some(idle) = stop.idle
                && last_message.elapsed() >= idle
                && source.drained()
            {
                capabilities = None;
                return;
            }
            activator.activate_after(Duration::from_millis(5));
        }
    });
    (messages, progress)
}

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

/// Produces each record of `stream` to `topic`. The returned stream carries no data: its frontier is what the broker
/// has acknowledged, time by time, for the probe that gates offset commits.
pub fn sink<'scope, D: 'static>(
    stream: StreamVec<'scope, u64, D>,
    name: &str,
    producer: Producer,
    topic: String,
    check_interval: Duration,
    fatal: Fatal,
    mut encode: impl FnMut(D) -> Record + 'static,
) -> StreamVec<'scope, u64, ()> {
    let scope = stream.scope();
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let mut input = builder.new_input(stream, Pipeline);
    let (acked_out, acked) = builder.new_output::<Vec<()>>();
    let _acked_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<()>>>::from(acked_out);
    let mut wakeup = Wakeup::new(scope.activator_for(info.address.clone()));
    builder.build(move |_initial| {
        let acks = Arc::new(Acks::default());
        let mut unacknowledged: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
        move |_frontiers| {
            input.for_each(|capability, records| {
                let time = *capability.least().expect("records travel with a time");
                for record in records.drain(..) {
                    if let Err(error) = producer.send(&topic, &encode(record), &acks, time) {
                        fatal.raise(error.to_string());
                    }
                }
                unacknowledged.entry(time).or_insert_with(|| capability.delayed(&time, 0));
            });
            if let Some(failure) = acks.failure() {
                fatal.raise(failure);
            }
            // A time is done once all its messages are acknowledged, whatever else the shared producer carries.
            unacknowledged.retain(|time, _| !acks.settled(*time));
            if !unacknowledged.is_empty() {
                wakeup.within(check_interval);
            }
        }
    });
    acked
}

/// The JSON value published for each new segment (key: the segment id).
#[derive(Clone, Debug, PartialEq, serde::Serialize, Deserialize)]
pub struct SegmentRecord {
    /// 16 hex digits, deterministic for (space, sensor, start sample).
    pub segment_id: String,
    /// Tenant.
    pub space: String,
    /// Sensor id.
    pub sensor: String,
    /// RFC 3339 UTC time of the first sample.
    pub start_time: String,
    /// RFC 3339 UTC time just past the last sample.
    pub end_time: String,
    /// Fraction of the window that is recorded audio.
    pub coverage: f32,
    /// Model that embedded the segment.
    pub model: String,
    /// Audio topic, partition and offset of the message holding the segment's first recorded sample.
    pub source: Origin,
}

/// The segments-topic record of a new segment.
pub fn segment_record(segment: &chorus_operators::record::Segment, model: &str) -> Record {
    let id = segment.key.id().to_string();
    let value = SegmentRecord {
        segment_id: id.clone(),
        space: segment.key.space.clone(),
        sensor: segment.key.sensor.clone(),
        start_time: rfc3339(segment.key.start_time()),
        end_time: rfc3339(segment.key.end_time()),
        coverage: segment.coverage,
        model: model.to_owned(),
        source: segment.origin.clone(),
    };
    Record {
        key: Some(id.into_bytes()),
        payload: serde_json::to_vec(&value).expect("a segment record serialises"),
        headers: vec![(HEADER_SPACE.into(), segment.key.space.as_bytes().to_vec())],
    }
}

/// The record of a dead letter: original key, payload and headers, plus the reason, cause and origin headers.
///
/// The record always fits `max_message_bytes`: the payload is dropped first (`chorus.payload_dropped`), then the
/// original headers, then the key is cut (`chorus.key_truncated`); the reason, cause and origin are always kept.
pub fn dead_letter_record(letter: DeadLetter, max_message_bytes: usize) -> Record {
    let size = |headers: &[(String, Vec<u8>)]| headers.iter().map(|(k, v)| 16 + k.len() + v.len()).sum::<usize>();
    let budget = max_message_bytes.saturating_sub(1_024);
    let mut own = vec![(HEADER_REASON.to_owned(), truncated(letter.reason.into_bytes(), (budget / 4).min(2_048)))];
    own.push((HEADER_CAUSE.into(), letter.cause.as_bytes().to_vec()));
    if let Some(origin) = &letter.origin {
        own.push((HEADER_ORIGIN.into(), origin.to_string().into_bytes()));
    }
    let (mut key, mut headers, mut payload) = (letter.key, letter.headers, letter.payload);
    let used = |key: &Option<Vec<u8>>, headers: &[(String, Vec<u8>)], own: &[(String, Vec<u8>)], payload: &[u8]| {
        key.as_ref().map_or(0, Vec::len) + size(headers) + size(own) + payload.len()
    };
    if used(&key, &headers, &own, &payload) > budget {
        own.push((HEADER_PAYLOAD_DROPPED.into(), format!("{} bytes", payload.len()).into_bytes()));
        payload = Vec::new();
    }
    if used(&key, &headers, &own, &payload) > budget {
        headers.clear();
    }
    if used(&key, &headers, &own, &payload) > budget
        && let Some(k) = key.as_mut()
    {
        own.push(("chorus.key_truncated".into(), format!("{} bytes", k.len()).into_bytes()));
        k.truncate(256);
    }
    headers.extend(own);
    Record { key, payload, headers }
}

fn truncated(mut bytes: Vec<u8>, limit: usize) -> Vec<u8> {
    if bytes.len() > limit {
        bytes.truncate(limit);
        bytes.extend_from_slice("…".as_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job's clock in these tests: 2026-05-01T06:00:00Z, an hour after the messages' Kafka timestamp.
    const NOW: Nanos = 1_777_615_200_000_000_000;

    #[test]
    fn r13_captured_at_is_bounded_by_the_jobs_clock_and_the_brokers_append_time() {
        let wav = || wav::encode_f32(32_000, &[0.0; 10]);
        let at = |captured_at: &str, timestamp_ms: i64, log_append_time: bool, now: Nanos| {
            let mut m = message(Some("s"), &[("captured_at", captured_at)], wav());
            (m.timestamp_ms, m.log_append_time) = (Some(timestamp_ms), log_append_time);
            decode_message(m, &limits(100_000), now).map(|c| c.captured_at).map_err(|l| (l.cause, l.reason))
        };
        // A chunk from 2199 whose producer stamped it 2199 too: the two producer-set clocks agree, the job's does not.
        let (cause, reason) = at("2199-06-01T00:00:00Z", IN_2199_MS, false, NOW).unwrap_err();
        assert_eq!(cause, "bad_captured_at");
        assert!(reason.contains("after this job's clock (2026-05-01T06:00:00Z)"), "{reason}");
        // Within the skew of both clocks, it is taken.
        assert_eq!(at("2026-05-01T06:05:00Z", 1_777_615_200_000, false, NOW), Ok(1_777_615_500_000_000_000));
        // A broker that stamps appends bounds it too, even when the job's clock runs ahead.
        let (cause, reason) = at("2026-05-01T05:30:00Z", 1_777_611_600_000, true, NOW).unwrap_err();
        assert_eq!(cause, "bad_captured_at");
        assert!(reason.contains("after the broker's append time (2026-05-01T05:00:00Z)"), "{reason}");
    }

    /// 2199-06-01T00:00:00Z in milliseconds.
    const IN_2199_MS: i64 = 7_239_628_800_000;

    fn limits(max_bytes: usize) -> ChunkLimits {
        ChunkLimits { max_bytes, max_clock_skew: Duration::from_secs(600), wav: DecodeLimits::default() }
    }

    fn message(key: Option<&str>, headers: &[(&str, &str)], payload: Vec<u8>) -> RawMessage {
        RawMessage {
            origin: Origin { topic: "audio".into(), partition: 3, offset: 42 },
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: Some(payload),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            timestamp_ms: Some(1_777_611_600_000),
            log_append_time: false,
        }
    }

    #[test]
    fn a_chunk_message_decodes_with_its_headers() {
        let wav = wav::encode_f32(32_000, &[0.5; 100]);
        let m = message(
            Some("sensor-7"),
            &[("space", "forest"), ("captured_at", "2026-05-01T05:00:00.5Z"), ("priority", "high")],
            wav,
        );
        let chunk = decode_message(m, &limits(1_000_000), NOW).unwrap();
        assert_eq!((chunk.space.as_str(), chunk.sensor.as_str()), ("forest", "sensor-7"));
        assert_eq!(chunk.captured_at, 1_777_611_600_500_000_000);
        assert_eq!(chunk.priority, Priority::High);
        assert_eq!(chunk.samples.len(), 100);
    }

    #[test]
    fn defaults_come_from_the_kafka_timestamp_and_the_default_space() {
        let chunk = decode_message(message(Some("s"), &[], wav::encode_f32(8_000, &[0.0; 8])), &limits(1_000_000), NOW)
            .unwrap();
        assert_eq!((chunk.space.as_str(), chunk.captured_at), ("default", 1_777_611_600_000_000_000));
    }

    #[test]
    fn bad_messages_become_dead_letters_naming_the_fault() {
        let wav = || wav::encode_f32(32_000, &[0.0; 10]);
        let cause = |m| decode_message(m, &limits(1_000), NOW).unwrap_err().cause;
        assert_eq!(cause(message(None, &[], wav())), "no_key");
        assert_eq!(cause(message(Some("s"), &[("space", "../etc")], wav())), "bad_space");
        assert_eq!(cause(message(Some("s"), &[("captured_at", "yesterday")], wav())), "bad_captured_at");
        assert_eq!(cause(message(Some("s"), &[("captured_at", "1700-01-01T00:00:00Z")], wav())), "bad_captured_at");
        // The Kafka timestamp says 2026-05-01T05:00Z: a chunk cannot have been recorded a day later.
        assert_eq!(cause(message(Some("s"), &[("captured_at", "2026-05-02T05:00:00Z")], wav())), "bad_captured_at");
        let mut far = message(Some("s"), &[], wav());
        far.timestamp_ms = Some(i64::MAX);
        assert_eq!(cause(far), "no_time");
        assert_eq!(cause(message(Some("s"), &[("priority", "urgent")], wav())), "bad_priority");
        assert_eq!(cause(message(Some("s"), &[], vec![0; 2_000])), "oversized");
        assert_eq!(cause(message(Some("s"), &[], b"RIFF\x08\0\0\0WAVEjunk".to_vec())), "not_wav");
        let letter =
            decode_message(message(Some("s"), &[("priority", "urgent")], wav()), &limits(1_000), NOW).unwrap_err();
        assert_eq!(letter.origin.unwrap().offset, 42);
        assert_eq!(letter.payload, wav());
    }

    #[test]
    fn dead_letter_records_carry_the_reason_and_drop_oversized_payloads() {
        let letter = DeadLetter {
            origin: Some(Origin { topic: "audio".into(), partition: 1, offset: 9 }),
            key: Some(b"s".to_vec()),
            headers: vec![("space".into(), b"x".to_vec())],
            payload: vec![1; 5_000],
            reason: "too big".into(),
            cause: "oversized",
        };
        let record = dead_letter_record(letter, 4_000);
        let header =
            |k: &str| record.headers.iter().find(|(h, _)| h == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(header(HEADER_REASON).as_deref(), Some("too big"));
        assert_eq!(header(HEADER_ORIGIN).as_deref(), Some("audio/1@9"));
        assert_eq!(header(HEADER_PAYLOAD_DROPPED).as_deref(), Some("5000 bytes"));
        assert!(record.payload.is_empty());

        // A huge key, headers and reason still make a record within the limit.
        let huge = DeadLetter {
            origin: None,
            key: Some(vec![b'k'; 600_000]),
            headers: vec![("h".into(), vec![0; 300_000])],
            payload: vec![],
            reason: "r".repeat(100_000),
            cause: "bad_key",
        };
        let record = dead_letter_record(huge, 100_000);
        let size = record.key.as_ref().unwrap().len()
            + record.payload.len()
            + record.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        assert!(size < 100_000, "{size}");
    }
}

/// Longest label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// A label given to a segment, or taken away (`label: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelEvent {
    /// The labelled segment.
    pub segment: SegmentId,
    /// The label; `None` retracts the segment's label.
    pub label: Option<String>,
}

/// Checks a label as a person typed it: not empty, at most [`MAX_LABEL_BYTES`], no control characters.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err("the label is empty (to take a label away, send no value)".into());
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(format!("the label is {} bytes, more than {MAX_LABEL_BYTES}", label.len()));
    }
    if label.chars().any(char::is_control) {
        return Err("the label holds a control character".into());
    }
    Ok(())
}

/// Reads the labels topic from its start, without a consumer group: every run sees every label given, in order,
/// so the last value per segment is its label.
pub struct LabelsSource {
    consumer: BaseConsumer,
    topic: String,
}

impl LabelsSource {
    /// Assigns every partition of the labels topic from the beginning.
    pub fn open(settings: &KafkaSettings) -> Result<Self, Error> {
        let consumer: BaseConsumer = settings
            .client()
            .set("group.id", format!("{}-labels", settings.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", settings.fetch_wait.as_millis().to_string())
            .create()
            .map_err(kafka(format!("cannot create a labels consumer for {}", settings.brokers)))?;
        let topic = settings.labels_topic.clone();
        let mut list = TopicPartitionList::new();
        for element in topic_partitions(&consumer, settings, &topic)?.elements() {
            list.add_partition_offset(&topic, element.partition(), Offset::Beginning)
                .map_err(kafka(format!("cannot assign {topic}")))?;
        }
        consumer.assign(&list).map_err(kafka(format!("cannot assign {topic}")))?;
        Ok(LabelsSource { consumer, topic })
    }

    /// Up to `max` label messages that are ready now, each parsed or rejected with the reason.
    pub fn poll(&mut self, max: usize) -> Vec<Result<LabelEvent, DeadLetter>> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(result) = self.consumer.poll(Duration::ZERO) else { break };
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, "Labels topic read failed; it is retried.");
                    break;
                }
            };
            let origin =
                Origin { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset() };
            out.push(parse_label(origin, message.key(), message.payload()));
        }
        out
    }
}

fn parse_label(origin: Origin, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<LabelEvent, DeadLetter> {
    let reject = |cause: &'static str, reason: String| DeadLetter {
        origin: Some(origin.clone()),
        key: key.map(<[u8]>::to_vec),
        headers: Vec::new(),
        payload: payload.map(<[u8]>::to_vec).unwrap_or_default(),
        reason,
        cause,
    };
    let key = key.ok_or_else(|| reject("label_key", "a label message needs the segment id as its key".into()))?;
    let segment = std::str::from_utf8(key).ok().and_then(|k| k.parse::<SegmentId>().ok()).ok_or_else(|| {
        reject("label_key", format!("key {:?} is not a segment id (16 hex digits)", String::from_utf8_lossy(key)))
    })?;
    let label = match payload {
        None | Some([]) => None,
        Some(bytes) => {
            let label = std::str::from_utf8(bytes)
                .map_err(|_| reject("label_value", format!("the label of segment {segment} is not UTF-8")))?;
            check_label(label).map_err(|reason| reject("label_value", format!("segment {segment}: {reason}")))?;
            Some(label.to_owned())
        }
    };
    Ok(LabelEvent { segment, label })
}

/// The labels-topic record that gives `segment` a label, or takes it away.
pub fn label_record(event: &LabelEvent) -> Record {
    Record {
        key: Some(event.segment.to_string().into_bytes()),
        payload: event.label.clone().unwrap_or_default().into_bytes(),
        headers: Vec::new(),
    }
}

/// The JSON value published to the segments topic when the refinement changes what it says about a segment (key:
/// the segment id; header `chorus.record` = `refinement`). The latest record per segment holds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, Deserialize)]
pub struct RefinementRecord {
    /// The segment.
    pub segment_id: String,
    /// Tenant.
    pub space: String,
    /// The label that reached it, if any.
    pub label: Option<String>,
    /// The label's share of the label mass at the segment, in [0, 1].
    pub label_score: Option<f32>,
    /// Its cluster: the smallest segment id in its component of mutual near neighbours.
    pub cluster: Option<String>,
    /// Refinement round that produced this state.
    pub round: u64,
}

/// Header naming the kind of a segments-topic record that is not a new segment.
pub const HEADER_RECORD: &str = "chorus.record";

/// The segments-topic record of a refinement.
pub fn refinement_record(record: &RefinementRecord) -> Record {
    Record {
        key: Some(record.segment_id.clone().into_bytes()),
        payload: serde_json::to_vec(record).expect("a refinement record serialises"),
        headers: vec![
            (HEADER_SPACE.into(), record.space.as_bytes().to_vec()),
            (HEADER_RECORD.into(), b"refinement".to_vec()),
        ],
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn label_messages_parse_retract_or_are_refused_with_the_reason() {
        let origin = Origin { topic: "chorus.labels".into(), partition: 0, offset: 7 };
        let id = "00000000000000ff";
        let given = parse_label(origin.clone(), Some(id.as_bytes()), Some(b"owl")).unwrap();
        assert_eq!(given, LabelEvent { segment: SegmentId(255), label: Some("owl".into()) });
        assert_eq!(label_record(&given).key.as_deref(), Some(id.as_bytes()));
        assert_eq!(parse_label(origin.clone(), Some(id.as_bytes()), None).unwrap().label, None);
        assert_eq!(parse_label(origin.clone(), Some(id.as_bytes()), Some(b"")).unwrap().label, None);
        let bad = parse_label(origin.clone(), Some(b"owl"), Some(b"x")).unwrap_err();
        assert_eq!(bad.cause, "label_key");
        assert!(bad.reason.contains("16 hex digits"), "{}", bad.reason);
        assert_eq!(parse_label(origin.clone(), None, Some(b"x")).unwrap_err().cause, "label_key");
        let bad = parse_label(origin.clone(), Some(id.as_bytes()), Some(&[0xff, 0xfe])).unwrap_err();
        assert_eq!(bad.cause, "label_value");
        assert!(parse_label(origin, Some(id.as_bytes()), Some(&[b'a'; 300])).unwrap_err().reason.contains("300 bytes"));
        assert!(check_label("a\u{7}b").is_err() && check_label("  ").is_err() && check_label("Turdus merula").is_ok());
    }
}
