//! Talking to the broker outside the dataflow: creating the topics, committing offsets under the job's group, reading
//! a topic's partitions, and the thread that watches whether the broker answers and how far the readers lag.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaSettings, kafka};
use crate::Error;

/// A client context that keeps what librdkafka last reported as an error — a refused TLS handshake, a failed SASL
/// authentication, a broker down — in librdkafka's words (which never hold a password), so that messages can say
/// what was refused.
#[derive(Clone, Default)]
pub struct Reported(Arc<Mutex<VecDeque<String>>>);

/// Messages a [`Reported`] keeps, the latest last.
const REPORTED: usize = 16;

impl Reported {
    fn push(&self, text: String) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() == REPORTED {
            kept.pop_front();
        }
        kept.push_back(text);
    }

    /// The latest error reported that says the broker refused this client, else the latest error, if any.
    pub fn last(&self) -> Option<String> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter().rev().find(|m| refused(m)).or_else(|| kept.back()).cloned()
    }
}

impl ClientContext for Reported {
    fn error(&self, error: KafkaError, reason: &str) {
        self.push(if reason.is_empty() { error.to_string() } else { reason.to_owned() });
    }

    // librdkafka tells of a refused handshake or authentication in its log (a broker that closes the connection
    // leaves the error itself a bare transport failure).
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) || facility == "FAIL" {
            tracing::debug!(facility, message, "librdkafka");
            self.push(message.to_owned());
        }
    }
}

impl ConsumerContext for Reported {}

/// Whether librdkafka's error text says the broker refused this client (its certificate, its credentials, its
/// protocol), which waiting will not change.
fn refused(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    [
        "ssl handshake failed",
        "certificate verify failed",
        "sasl authentication",
        "authentication failed",
        "disconnected while requesting apiversion",
        "incorrect security.protocol",
    ]
    .iter()
    .any(|needle| reason.contains(needle))
        // Cut off before the broker said which protocol versions it speaks: a TLS listener drops a plaintext client so.
        || (reason.contains("disconnected") && reason.contains("in state apiversion_query"))
}

/// Checks that the brokers answer a client of `settings`: a broker that refuses it (TLS, SASL, a protocol it does
/// not speak) fails at once, one that does not answer within `timeout` fails then; either error names the brokers,
/// how the client connects and what librdkafka reported.
pub fn check_connection(settings: &KafkaSettings, timeout: Duration) -> Result<(), Error> {
    let reported = Reported::default();
    // Disconnections are logged at level 6 (info): this client hears them.
    let client: BaseConsumer<Reported> = settings
        .client()
        .set("log_level", "6")
        .set_log_level(RDKafkaLogLevel::Info)
        .create_with_context(reported.clone())
        .map_err(kafka(format!("cannot create a client for {}", settings.brokers)))?;
    let started = Instant::now();
    let failed = |what: &str, reason: String| {
        Error::Connection(format!(
            "the Kafka brokers {} {what} this client ({}): {reason}",
            settings.brokers,
            settings.security.describe()
        ))
    };
    loop {
        match client.fetch_metadata(None, Duration::from_millis(500)) {
            Ok(_) => return Ok(()),
            Err(error) => {
                // Errors reach the context when the client is polled.
                let _ = client.poll(Duration::from_millis(100));
                let reason = reported.last().unwrap_or_else(|| error.to_string());
                if refused(&reason) {
                    let hint = if reason.to_ascii_lowercase().contains("apiversion_query") {
                        " (a broker that expects TLS, or another SASL setting, drops a client so: check \
                         kafka.security_protocol)"
                    } else {
                        ""
                    };
                    return Err(failed("refused", format!("{reason}{hint}")));
                }
                if started.elapsed() >= timeout {
                    return Err(failed(&format!("did not answer within {timeout:?}"), reason));
                }
            }
        }
    }
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
    // The audio topic keeps what kafka.audio_retention_* say. The bundled broker deletes records by time only, and only
    // on a topic with cleanup.policy = delete set, where it reads retention.ms = -1 as "delete everything": so a
    // topic kept forever has the policy left at the broker's default.
    let retention_ms = settings.audio_retention.map_or(-1, |d| d.as_millis() as i64).to_string();
    let retention_bytes = settings.audio_retention_bytes.map_or(-1, |b| b as i64).to_string();
    let [audio, segments, dead_letters, labels] = topics;
    let audio = audio.set("retention.ms", &retention_ms).set("retention.bytes", &retention_bytes);
    let audio = if settings.audio_retention.is_some() { audio.set("cleanup.policy", "delete") } else { audio };
    let topics = [audio, segments, dead_letters, labels];
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
        let reported = Reported::default();
        let client: BaseConsumer<Reported> = settings
            .client()
            .create_with_context(reported.clone())
            .map_err(kafka(format!("cannot create a client for {}", settings.brokers)))?;
        let (status, stop) = (Arc::new(BrokerStatus::default()), Arc::new(AtomicBool::new(false)));
        let how = format!("{} over {}", settings.brokers, settings.security.describe());
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
                        Err(e) => {
                            let _ = client.poll(Duration::ZERO);
                            let reason = reported.last().unwrap_or_else(|| e.to_string());
                            *watched.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(format!("{how}: {reason}"));
                        }
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

/// The partitions of `topic`, from the broker's metadata; an error when the topic does not exist.
pub(super) fn topic_partitions(
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
