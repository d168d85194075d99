//! The job's segment sinks, in one plain list. Each builds itself on the stream it reads from the dataflow's
//! [`Outputs`] and returns a stream whose frontier passes a time only when everything it received at that time is
//! durable; the worker probes every stream the list returns before it commits offsets. A new sink is a function
//! here (or a file of its own) and a line in [`SINKS`].

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_connectors::Fatal;
use chorus_connectors::kafka::{self, Producer};
use chorus_connectors::parquet::{self as archive, ArchiveWriter};
use chorus_operators::metrics::Metrics;
use chorus_operators::record::{DeadLetter, Segment};
use chorus_operators::throttle::Throttle;
use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::Map;

use crate::config::Config;

/// What the dataflow hands to the sinks; each sink reads the stream it needs.
pub struct Outputs<'scope> {
    /// Segments the archive does not hold yet.
    pub to_archive: StreamVec<'scope, u64, Segment>,
    /// Every segment offered to the index, replays included.
    pub to_publish: StreamVec<'scope, u64, Segment>,
    /// Every record refused on the way: undecodable, unplaced, not embedded, not indexed.
    pub dead_letters: StreamVec<'scope, u64, DeadLetter>,
}

/// What a sink may use besides its stream.
pub struct SinkContext<'a> {
    /// The job's settings.
    pub config: &'a Config,
    /// This worker's index.
    pub worker: usize,
    /// The process's Kafka producer.
    pub producer: &'a Producer,
    /// Raised when a sink cannot go on.
    pub fatal: &'a Fatal,
    /// The job's metrics.
    pub metrics: &'a Metrics,
    /// Audio bytes this worker's archive writer may hold before it writes its files.
    pub archive_audio: usize,
}

/// A sink: built on the outputs, it returns its durability stream.
pub type Sink = for<'scope> fn(&SinkContext<'_>, &Outputs<'scope>) -> StreamVec<'scope, u64, ()>;

/// Every sink of the job.
pub const SINKS: &[Sink] = &[archive, segments_topic, dead_letter_topic];

/// The Parquet archive: new segments, durable once their file is written, synced and renamed.
fn archive<'scope>(context: &SinkContext<'_>, outputs: &Outputs<'scope>) -> StreamVec<'scope, u64, ()> {
    let config = context.config;
    let mut writer = ArchiveWriter::new(
        config.archive.clone(),
        &config.model.name,
        config.model.dim,
        &format!("{}-w{}", std::process::id(), context.worker),
    );
    writer.limit_audio(context.archive_audio);
    archive::sink(outputs.to_archive.clone(), writer, context.fatal.clone(), context.metrics.clone())
}

/// The segments topic: every segment offered, durable once the broker acknowledged it.
fn segments_topic<'scope>(context: &SinkContext<'_>, outputs: &Outputs<'scope>) -> StreamVec<'scope, u64, ()> {
    let config = context.config;
    // A replayed window whose head predates the audio this job received may have been cut by an earlier run
    // from more audio: the archive holds that version, and it is the one published. Not in the archive, it was
    // archived and published by this job already.
    let archive_dir = config.archive.dir.clone();
    let to_publish = outputs.to_publish.clone().flat_map(move |segment| {
        if !segment.resumed {
            return Some(segment);
        }
        let key = &segment.key;
        match archive::archived_segment(&archive_dir, &key.space, key.id(), &key.sensor, key.start_micros()) {
            Ok(Some(row)) => Some(Segment { coverage: row.coverage, origin: row.origin, ..segment }),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, segment = %key.id(), "A replayed segment's archived row cannot be read; it is published as replayed.");
                Some(segment)
            }
        }
    });
    let model = config.model.name.clone();
    let publish_metrics = context.metrics.clone();
    kafka::sink(
        to_publish,
        "SegmentsTopic",
        context.producer.clone(),
        config.kafka.segments_topic.clone(),
        config.kafka.flush_interval,
        context.fatal.clone(),
        move |segment| {
            publish_metrics.count("segments_topic", 1, 1);
            kafka::segment_record(&segment, &model)
        },
    )
}

/// The dead-letter topic: every refused record with its reason, durable once the broker acknowledged it.
fn dead_letter_topic<'scope>(context: &SinkContext<'_>, outputs: &Outputs<'scope>) -> StreamVec<'scope, u64, ()> {
    let config = context.config;
    let max_message_bytes = config.kafka.max_message_bytes;
    let dead_metrics = context.metrics.clone();
    let mut dead_log = DeadLetterLog::default();
    kafka::sink(
        outputs.dead_letters.clone(),
        "DeadLetters",
        context.producer.clone(),
        config.kafka.dead_letter_topic.clone(),
        config.kafka.flush_interval,
        context.fatal.clone(),
        move |letter| {
            dead_metrics.count("dead_letters", 1, 1);
            dead_log.note(&letter);
            kafka::dead_letter_record(letter, max_message_bytes)
        },
    )
}

/// Logs dead letters without flooding the log: the first one in full, then a count by cause every ten seconds.
#[derive(Default)]
struct DeadLetterLog {
    throttle: Throttle,
    since: BTreeMap<&'static str, u64>,
}

impl DeadLetterLog {
    fn note(&mut self, letter: &DeadLetter) {
        *self.since.entry(letter.cause.as_str()).or_default() += 1;
        if self.throttle.ready(Duration::from_secs(10)) {
            let origin = letter.origin.as_ref().map(ToString::to_string).unwrap_or_default();
            let counts = std::mem::take(&mut self.since);
            tracing::warn!(cause = letter.cause.as_str(), reason = %letter.reason, %origin, ?counts, "Dead letters (counts by cause since the last report; the topic holds each with its reason).");
        }
    }
}
