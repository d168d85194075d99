//! Talking to the broker outside the dataflow: creating the topics, committing offsets under the job's group, reading
//! a topic's partitions, and the thread that watches whether the broker answers and how far the readers lag.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaSettings, kafka};
use crate::Error;

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
