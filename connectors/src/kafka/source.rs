//! The audio source: one consumer per worker over its share of the partitions, the offsets read per epoch, commits
//! behind the sinks' durability and the segmenting workers' pending chunks, and the timely operator that reads.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chorus_operators::record::{Nanos, Origin, PartitionProgress, PendingReport};
use chorus_operators::throttle::Throttle;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use super::admin::topic_partitions;
use super::{KafkaSettings, RawMessage, carries_embeddings, kafka};
use crate::Error;
use crate::stop::Stop;
use crate::wav;

/// The part of the read-ahead budget librdkafka takes (1 / this), in payload bytes: its queue of prefetched messages
/// and the fetch response that arrives beyond it, half each. A thirty-second starved the bundled broker's backlogs
/// (28 windows/s against 114 with a quarter: `cargo bench --bench stream`, 40 sensors of 32 kHz audio, balanced).
const PREFETCH_SHARE: usize = 4;

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
    /// Memory the messages read per epoch cost (see [`wav::memory_cost`]) until the embedding stage passes the epoch,
    /// and their sum.
    unembedded: VecDeque<(u64, usize)>,
    in_flight: usize,
    /// Most memory in flight before reading pauses.
    max_in_flight: usize,
    /// What the process's resident memory is over its target, this worker's part: the read-ahead gives it up (see
    /// [`KafkaSource::relieve`]).
    pressure: usize,
    /// The model's sample rate and the copies of audio at that rate the pipeline holds, for [`wav::memory_cost`].
    model_rate: u32,
    copies: usize,
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
    /// Offsets never received, per partition, not yet told to `on_skipped`.
    skipped: Vec<(i32, i64)>,
    on_skipped: Option<Box<dyn Fn(i32, i64)>>,
}

impl KafkaSource {
    /// Opens a consumer for worker `worker` of `peers` and assigns its partitions from the committed offsets; messages
    /// costing at most `max_in_flight` bytes of memory are read ahead of the embedding stage (eight times their
    /// payload each, unless [`KafkaSource::costing`] says how to reckon audio).
    pub fn open(settings: &KafkaSettings, worker: usize, peers: usize, max_in_flight: usize) -> Result<Self, Error> {
        let prefetch = max_in_flight / PREFETCH_SHARE / 2;
        // Below librdkafka's limit on a response (receive.message.max.bytes, 100 MB).
        let fetch = prefetch.clamp(1 << 20, 64 << 20).max(settings.max_message_bytes);
        let consumer: BaseConsumer = settings
            .client()
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // The end of a partition is reported: held-back chunks need to know when no partition can hold more.
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", settings.fetch_wait.as_millis().to_string())
            // A fetch takes up to librdkafka's whole read-ahead (and at least one message): the bundled broker reads
            // everything from the fetch offset to the end of the partition for every fetch, so that fewer, larger
            // fetches serve a backlog many times faster.
            .set("max.partition.fetch.bytes", fetch.to_string())
            .set("fetch.max.bytes", fetch.to_string())
            // librdkafka's queue and a fetch beyond it take a quarter of the budget, in payload bytes; the rest is the
            // source's.
            .set("queued.max.messages.kbytes", (prefetch / 1024).max(1_024).to_string())
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
        let mut skipped = Vec::new();
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
                    Offset::Offset(n) => {
                        // Audio committed past nothing the broker still has: it expired before this job read it.
                        let (low, high) = consumer
                            .fetch_watermarks(&topic, element.partition(), Duration::from_secs(10))
                            .map_err(kafka(format!("cannot read the watermarks of {topic}")))?;
                        if high < n {
                            // The bundled broker forgets a partition's end once it has deleted all its records.
                            tracing::warn!(
                                topic = %topic,
                                partition = element.partition(),
                                committed = n,
                                end = high,
                                "The broker holds nothing at or after the committed offset: it deleted every record \
                                 of the partition (its retention), or the topic was made again. Audio produced and \
                                 deleted since the job last ran is lost; the offsets of the next records say how much."
                            );
                        } else if low > n {
                            tracing::error!(
                                topic = %topic,
                                partition = element.partition(),
                                committed = n,
                                oldest_kept = low,
                                lost = low - n,
                                "Audio expired from the broker before the job read it: the broker's retention \
                                 (kafka.audio_retention_hours when chorus created the topic) was shorter than the job \
                                 was behind. Reading resumes at the oldest message kept."
                            );
                            skipped.push((element.partition(), low - n));
                        }
                        // Reading starts at what the broker still has: the offsets before it are counted once,
                        // here, not again as a gap.
                        let start = if high < n { n } else { n.max(low) };
                        (Offset::Offset(start), start)
                    }
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
            max_in_flight: max_in_flight - max_in_flight / PREFETCH_SHARE,
            pressure: 0,
            model_rate: 0,
            copies: 0,
            reports: BTreeMap::new(),
            pending: BTreeMap::new(),
            progress,
            reported: BTreeMap::new(),
            topic_partitions,
            last_commit: Instant::now(),
            high_watermarks_checked: None,
            skipped,
            on_skipped: None,
            consume_warnings: Throttle::default(),
        })
    }

    /// Reckons what a message costs from its WAV header: its audio decoded, and `copies` copies of it at the
    /// model's `model_rate` (see [`wav::memory_cost`]).
    pub fn costing(mut self, model_rate: u32, copies: usize) -> Self {
        (self.model_rate, self.copies) = (model_rate, copies);
        self
    }

    /// Memory `message` costs while it is read ahead of the embedding stage. Embeddings cost their payload three
    /// times over: as read, as vectors, and as the copy the segments topic is sent.
    fn cost(&self, message: &RawMessage) -> usize {
        let payload = message.payload.as_deref().unwrap_or_default();
        if carries_embeddings(message) {
            payload.len() * 3
        } else if self.model_rate == 0 {
            payload.len() * 8
        } else {
            wav::memory_cost(payload, self.model_rate, self.copies)
        }
    }

    /// Partitions this worker reads.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.next.keys().copied()
    }

    /// Reads up to `max` messages, and no more once they cost the read-ahead left; returns what they cost.
    fn poll(&mut self, max: usize, out: &mut Vec<RawMessage>) -> usize {
        let mut cost = 0;
        let mut gaps = Vec::new();
        let limit = self.limit();
        while out.len() < max && self.in_flight + cost < limit {
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
                    if let Some(&next) = self.next.get(&origin.partition)
                        && origin.offset > next
                    {
                        gaps.push((origin.partition, next, origin.offset));
                    }
                    self.next.insert(origin.partition, origin.offset + 1);
                    if let Some(progress) = self.progress.get_mut(&origin.partition) {
                        progress.caught_up = false;
                        progress.read_ms = progress.read_ms.max(message.timestamp().to_millis());
                    }
                    let headers = message
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                        .unwrap_or_default();
                    let message = RawMessage {
                        origin,
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        headers,
                        timestamp_ms: message.timestamp().to_millis(),
                        log_append_time: matches!(message.timestamp(), rdkafka::Timestamp::LogAppendTime(_)),
                    };
                    cost += self.cost(&message);
                    out.push(message);
                }
            }
        }
        for (partition, from, to) in gaps {
            self.skip(partition, from, to);
        }
        cost
    }

    /// Tells `on_skipped` (the job's metric) of the offsets of a partition this source never received, as they are
    /// found: at start, those the broker deleted before the committed offset was read; while reading, any gap.
    pub fn on_skipped(mut self, on_skipped: impl Fn(i32, i64) + 'static) -> Self {
        for (partition, count) in self.skipped.drain(..) {
            on_skipped(partition, count);
        }
        self.on_skipped = Some(Box::new(on_skipped));
        self
    }

    /// Offsets `from..to` of `partition` were never received.
    fn skip(&mut self, partition: i32, from: i64, to: i64) {
        if self.consume_warnings.ready(Duration::from_secs(10)) {
            tracing::warn!(
                topic = %self.topic,
                partition,
                from,
                to,
                "Offsets of the audio topic were never received: the broker deleted them before the job read them \
                 (its retention is shorter than the job was behind), or they are transaction markers."
            );
        }
        match &self.on_skipped {
            Some(on_skipped) => on_skipped(partition, to - from),
            None => self.skipped.push((partition, to - from)),
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

    /// Whether every assigned partition has been read up to its high watermark (checked at most once a second, and
    /// only once the consumer has reported the end of every partition: the broker is not asked while a partition
    /// may still be fetched, which a worker waiting on the answer would hold up).
    fn drained(&mut self) -> bool {
        if self.high_watermarks_checked.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            || !self.progress.values().all(|p| p.caught_up)
        {
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

    /// Says how far the process's resident memory is over its target, for this worker (0 when it is not): the
    /// read-ahead shrinks by as much, down to an eighth of itself, so that memory no share reckons (the allocator's,
    /// a merge in the refinement, a model's arena) is made room for by reading less — the lag grows in Kafka.
    pub fn relieve(&mut self, over: usize) {
        self.pressure = over;
    }

    fn limit(&self) -> usize {
        read_ahead_limit(self.max_in_flight, self.pressure)
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

fn partitions(consumer: &BaseConsumer, settings: &KafkaSettings) -> Result<TopicPartitionList, Error> {
    topic_partitions(consumer, settings, &settings.audio_topic)
}

/// What may be read ahead under `pressure`: the `share`, less the pressure, and never less than an eighth of it, so
/// that reading goes on.
fn read_ahead_limit(share: usize, pressure: usize) -> usize {
    share.saturating_sub(pressure).max(share / 8)
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
            if source.in_flight >= source.limit() {
                // Nothing more is read until the model catches up.
                activator.activate_after(Duration::from_millis(5));
                return;
            }
            let cost = source.poll(4_096, &mut batch);
            let read = !batch.is_empty();
            if read {
                last_message = Instant::now();
                source.record_bytes(*caps[0].time(), cost);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r15_the_read_ahead_gives_up_what_the_process_is_over_its_target_down_to_an_eighth() {
        let share = 64 << 20;
        assert_eq!(read_ahead_limit(share, 0), share);
        assert_eq!(read_ahead_limit(share, 10 << 20), 54 << 20);
        assert_eq!(read_ahead_limit(share, 56 << 20), 8 << 20);
        assert_eq!(read_ahead_limit(share, 1 << 40), 8 << 20);
    }
}
