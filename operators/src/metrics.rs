//! Metric names, label keys and the handles every component updates, registered in a registry the caller owns.

use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::cause::Cause;

/// Records that entered a stage (label `stage`).
pub const RECORDS_IN: &str = "chorus_records_in_total";
/// Records a stage emitted (label `stage`).
pub const RECORDS_OUT: &str = "chorus_records_out_total";
/// Records a stage rejected (labels `stage`, `cause`); each also went to the dead-letter topic.
pub const ERRORS: &str = "chorus_errors_total";
/// Windows per call to the model.
pub const EMBED_BATCH: &str = "chorus_embed_batch_size";
/// Points per space in the in-memory index (label `space`).
pub const INDEX_POINTS: &str = "chorus_index_points";
/// Bytes the index holds in memory, per space and tier (labels `space`, `tier`).
pub const INDEX_BYTES: &str = "chorus_index_bytes";
/// Points waiting in a space's write buffer for the background builder to link them into the graph (label `space`).
pub const INDEX_BUFFERED: &str = "chorus_index_buffered";
/// Segments dropped because their id was already indexed (a replay after a restart).
pub const DUPLICATES: &str = "chorus_duplicate_segments_total";

/// Chunks dropped because their audio had already been received (label `space`).
pub const DUPLICATE_CHUNKS: &str = "chorus_duplicate_chunks_total";
/// Sensors the segmenting workers know (label `state`): `active` in memory, `stored` with unfinished audio on disk
/// (quiet ones, and every sensor after a clean stop).
pub const SENSORS: &str = "chorus_sensors";

/// What the job's memory budget gives each share (label `share`): `resident` (the model and runtime, measured at
/// start), `read_ahead` (audio read ahead of the embedding stage), `sensors` (the segmenting workers' sensors),
/// `writers` (the archive writers' audio), `index` (the index's budget), `refine` (the refinement's bound), `headroom`
/// (left unassigned).
pub const MEMORY_BUDGET: &str = "chorus_memory_budget_bytes";
/// Memory a share holds now, as the job accounts it (label `share`: `read_ahead`, `sensors`); the index's is
/// `chorus_index_bytes`, the process's `process_resident_memory_bytes`.
pub const MEMORY: &str = "chorus_memory_bytes";

/// Items waiting in a queue, per worker summed (label `queue`): `embed` windows waiting for the model, `archive` rows
/// waiting for their file, `refine` segments waiting for a refinement round.
pub const QUEUE_DEPTH: &str = "chorus_queue_depth";
/// Seconds a stage takes over one batch (label `stage`): `decode` one message, `segment` the chunks of one time,
/// `embed` one call to the model, `index` one batch of inserts, `archive` writing its files.
pub const STAGE_SECONDS: &str = "chorus_stage_seconds";
/// Seconds each worker thread spent working rather than parked (label `worker`): its rate is the busy ratio.
pub const WORKER_BUSY: &str = "chorus_worker_busy_seconds_total";
/// Windows dropped under overload (label `priority`); each also went to the dead-letter topic.
pub const SHED: &str = "chorus_shed_windows_total";

/// Seconds per query-API search (label `kind`: `vector` or `audio`).
pub const QUERY_SECONDS: &str = "chorus_query_seconds";
/// Query-API answers from the cache and not (label `result`: `hit`, `miss`).
pub const QUERY_CACHE: &str = "chorus_query_cache_total";

/// Seconds from the close of a refinement round to its outputs settling on every worker.
pub const REFINE_SECONDS: &str = "chorus_refine_update_seconds";
/// Segments the refinement holds in its kNN graph (label `space`): at most `refine.horizon_segments` per space, plus
/// those retired whose last rows wait for their file.
pub const REFINE_NODES: &str = "chorus_refine_graph_nodes";
/// Segments retired from the refinement beyond its horizon, or too old to enter it (label `space`).
pub const REFINE_RETIRED: &str = "chorus_refine_retired_total";
/// 1 while the refinement is paused by a failure (ingestion goes on; `/readyz` gives the reason), else 0.
pub const REFINE_PAUSED: &str = "chorus_refine_paused";
/// Archive files that could not be read, and were set aside by a job or skipped by a reader (label `space`).
pub const ARCHIVE_DAMAGED: &str = "chorus_archive_damaged_files_total";

/// Messages of the audio topic not read yet, per partition this process reads (label `partition`): the high
/// watermark less the next offset to read, every 2 s.
pub const KAFKA_LAG: &str = "chorus_kafka_consumer_lag";
/// Offsets of the audio topic the job never received, per partition (label `partition`): records the broker deleted
/// before the job read them (`kafka.audio_retention_hours` shorter than the job was behind), or transaction markers.
pub const KAFKA_SKIPPED: &str = "chorus_kafka_skipped_offsets_total";

/// Every metric above: the Grafana dashboard in `config/grafana/` has a panel for each (a test checks both ways).
pub const ALL: &[&str] = &[
    RECORDS_IN,
    RECORDS_OUT,
    ERRORS,
    EMBED_BATCH,
    INDEX_POINTS,
    INDEX_BYTES,
    INDEX_BUFFERED,
    DUPLICATES,
    DUPLICATE_CHUNKS,
    SENSORS,
    MEMORY_BUDGET,
    MEMORY,
    QUEUE_DEPTH,
    STAGE_SECONDS,
    WORKER_BUSY,
    SHED,
    QUERY_SECONDS,
    QUERY_CACHE,
    REFINE_SECONDS,
    REFINE_NODES,
    REFINE_RETIRED,
    REFINE_PAUSED,
    ARCHIVE_DAMAGED,
    KAFKA_LAG,
    KAFKA_SKIPPED,
];

/// Label key: pipeline stage (`source`, `decode`, `segment`, `embed`, `index`, `archive`, `segments_topic`, ...).
pub const STAGE: &str = "stage";
/// Label key: short machine-readable cause of an error (a [`Cause`]).
pub const CAUSE: &str = "cause";
/// Label key: tenant.
pub const SPACE: &str = "space";
/// Label key: index memory tier (`f32`, `f16`, `int8`, `archive`).
pub const TIER: &str = "tier";
/// Label key: what a query searched with.
pub const KIND: &str = "kind";
/// Label key: cache lookup outcome.
pub const RESULT: &str = "result";
/// Label key: Kafka partition.
pub const PARTITION: &str = "partition";
/// Label key: chunk priority.
pub const PRIORITY: &str = "priority";
/// Label key: queue.
pub const QUEUE: &str = "queue";
/// Label key: worker index.
pub const WORKER: &str = "worker";
/// Label key: where a sensor's state is (`active`, `stored`).
pub const STATE: &str = "state";
/// Label key: a share of the memory budget.
pub const SHARE: &str = "share";

/// The metric handles of one job; cheap to clone and shared by every worker.
#[derive(Clone)]
pub struct Metrics {
    /// See [`RECORDS_IN`].
    pub records_in: IntCounterVec,
    /// See [`RECORDS_OUT`].
    pub records_out: IntCounterVec,
    /// See [`ERRORS`].
    pub errors: IntCounterVec,
    /// See [`EMBED_BATCH`].
    pub embed_batch: Histogram,
    /// See [`INDEX_POINTS`].
    pub index_points: IntGaugeVec,
    /// See [`INDEX_BYTES`].
    pub index_bytes: IntGaugeVec,
    /// See [`INDEX_BUFFERED`].
    pub index_buffered: IntGaugeVec,
    /// See [`DUPLICATES`].
    pub duplicates: IntCounterVec,
    /// See [`DUPLICATE_CHUNKS`].
    pub duplicate_chunks: IntCounterVec,
    /// See [`SENSORS`].
    pub sensors: IntGaugeVec,
    /// See [`MEMORY_BUDGET`].
    pub memory_budget: IntGaugeVec,
    /// See [`MEMORY`].
    pub memory: IntGaugeVec,
    /// See [`QUEUE_DEPTH`].
    pub queue_depth: IntGaugeVec,
    /// See [`STAGE_SECONDS`].
    pub stage_seconds: HistogramVec,
    /// See [`WORKER_BUSY`].
    pub worker_busy: CounterVec,
    /// See [`SHED`].
    pub shed: IntCounterVec,
    /// See [`QUERY_SECONDS`].
    pub query_seconds: HistogramVec,
    /// See [`QUERY_CACHE`].
    pub query_cache: IntCounterVec,
    /// See [`REFINE_SECONDS`].
    pub refine_seconds: Histogram,
    /// See [`REFINE_NODES`].
    pub refine_nodes: IntGaugeVec,
    /// See [`REFINE_RETIRED`].
    pub refine_retired: IntCounterVec,
    /// See [`REFINE_PAUSED`].
    pub refine_paused: IntGauge,
    /// See [`ARCHIVE_DAMAGED`].
    pub archive_damaged: IntCounterVec,
    /// See [`KAFKA_LAG`].
    pub kafka_lag: IntGaugeVec,
    /// See [`KAFKA_SKIPPED`].
    pub kafka_skipped: IntCounterVec,
}

impl Metrics {
    /// Creates the handles and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let metrics = Metrics {
            records_in: IntCounterVec::new(Opts::new(RECORDS_IN, "Records that entered a stage."), &[STAGE])?,
            records_out: IntCounterVec::new(Opts::new(RECORDS_OUT, "Records a stage emitted."), &[STAGE])?,
            errors: IntCounterVec::new(
                Opts::new(ERRORS, "Records a stage rejected, by cause; each went to the dead-letter topic."),
                &[STAGE, CAUSE],
            )?,
            embed_batch: Histogram::with_opts(
                HistogramOpts::new(EMBED_BATCH, "Windows per call to the model.")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            )?,
            index_points: IntGaugeVec::new(Opts::new(INDEX_POINTS, "Points per space in the index."), &[SPACE])?,
            index_buffered: IntGaugeVec::new(
                Opts::new(
                    INDEX_BUFFERED,
                    "Points in a space's write buffer, searched by a scan until the background builder links them.",
                ),
                &[SPACE],
            )?,
            index_bytes: IntGaugeVec::new(
                Opts::new(INDEX_BYTES, "Bytes the index holds in memory, per space and tier."),
                &[SPACE, TIER],
            )?,
            duplicates: IntCounterVec::new(
                Opts::new(DUPLICATES, "Segments dropped because their id was already indexed."),
                &[SPACE],
            )?,
            duplicate_chunks: IntCounterVec::new(
                Opts::new(DUPLICATE_CHUNKS, "Chunks dropped because their audio had already been received."),
                &[SPACE],
            )?,
            sensors: IntGaugeVec::new(
                Opts::new(SENSORS, "Sensors known to the segmenting workers: active in memory, stored on disk."),
                &[STATE],
            )?,
            memory_budget: IntGaugeVec::new(
                Opts::new(MEMORY_BUDGET, "What the memory budget gives each share, in bytes."),
                &[SHARE],
            )?,
            memory: IntGaugeVec::new(Opts::new(MEMORY, "Memory a share holds now, in bytes."), &[SHARE])?,
            queue_depth: IntGaugeVec::new(
                Opts::new(QUEUE_DEPTH, "Items waiting in a queue: embed windows, archive rows, refine segments."),
                &[QUEUE],
            )?,
            stage_seconds: HistogramVec::new(
                HistogramOpts::new(STAGE_SECONDS, "Seconds a stage takes over one batch.").buckets(vec![
                    0.000_01, 0.000_1, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                ]),
                &[STAGE],
            )?,
            worker_busy: CounterVec::new(
                Opts::new(WORKER_BUSY, "Seconds each worker spent working rather than parked."),
                &[WORKER],
            )?,
            shed: IntCounterVec::new(Opts::new(SHED, "Windows dropped under overload."), &[PRIORITY])?,
            query_seconds: HistogramVec::new(
                HistogramOpts::new(QUERY_SECONDS, "Seconds per query-API search.")
                    .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]),
                &[KIND],
            )?,
            query_cache: IntCounterVec::new(
                Opts::new(QUERY_CACHE, "Query-API answers from the cache and not."),
                &[RESULT],
            )?,
            refine_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    REFINE_SECONDS,
                    "Seconds from the close of a refinement round to its outputs settling.",
                )
                .buckets(vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            )?,
            refine_nodes: IntGaugeVec::new(
                Opts::new(REFINE_NODES, "Segments the refinement holds in its kNN graph."),
                &[SPACE],
            )?,
            refine_retired: IntCounterVec::new(
                Opts::new(REFINE_RETIRED, "Segments retired from the refinement beyond its horizon."),
                &[SPACE],
            )?,
            refine_paused: IntGauge::new(REFINE_PAUSED, "1 while the refinement is paused by a failure.")?,
            archive_damaged: IntCounterVec::new(
                Opts::new(
                    ARCHIVE_DAMAGED,
                    "Archive files that could not be read: set aside by a job, skipped by a reader.",
                ),
                &[SPACE],
            )?,
            kafka_lag: IntGaugeVec::new(
                Opts::new(KAFKA_LAG, "Messages of the audio topic not read yet, per partition read here."),
                &[PARTITION],
            )?,
            kafka_skipped: IntCounterVec::new(
                Opts::new(
                    KAFKA_SKIPPED,
                    "Offsets of the audio topic never received: deleted by the broker before they were read, or \
                     transaction markers.",
                ),
                &[PARTITION],
            )?,
        };
        for collector in metrics.collectors() {
            registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// Every handle, to register.
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.records_in.clone()),
            Box::new(self.records_out.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.embed_batch.clone()),
            Box::new(self.index_points.clone()),
            Box::new(self.index_bytes.clone()),
            Box::new(self.index_buffered.clone()),
            Box::new(self.duplicates.clone()),
            Box::new(self.duplicate_chunks.clone()),
            Box::new(self.sensors.clone()),
            Box::new(self.memory_budget.clone()),
            Box::new(self.memory.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.stage_seconds.clone()),
            Box::new(self.worker_busy.clone()),
            Box::new(self.shed.clone()),
            Box::new(self.query_seconds.clone()),
            Box::new(self.query_cache.clone()),
            Box::new(self.refine_seconds.clone()),
            Box::new(self.refine_nodes.clone()),
            Box::new(self.refine_retired.clone()),
            Box::new(self.refine_paused.clone()),
            Box::new(self.archive_damaged.clone()),
            Box::new(self.kafka_lag.clone()),
            Box::new(self.kafka_skipped.clone()),
        ]
    }

    /// Observes the seconds `stage` took over one batch, from `started`.
    pub fn time(&self, stage: &str, started: Instant) {
        self.stage_seconds.with_label_values(&[stage]).observe(started.elapsed().as_secs_f64());
    }

    /// Moves the depth of `queue` by `delta` (each worker adds its own changes).
    pub fn queued(&self, queue: &str, delta: i64) {
        if delta != 0 {
            self.queue_depth.with_label_values(&[queue]).add(delta);
        }
    }

    /// Handles registered in a registry of their own, for tests and tools that do not export metrics.
    pub fn unregistered() -> Metrics {
        Metrics::register(&Registry::new()).expect("a fresh registry accepts every metric")
    }

    /// Counts a batch through `stage`.
    pub fn count(&self, stage: &str, records_in: usize, records_out: usize) {
        if records_in > 0 {
            self.records_in.with_label_values(&[stage]).inc_by(records_in as u64);
        }
        if records_out > 0 {
            self.records_out.with_label_values(&[stage]).inc_by(records_out as u64);
        }
    }

    /// Counts `n` records `stage` rejected for `cause`.
    pub fn reject(&self, stage: &str, cause: Cause, n: usize) {
        if n > 0 {
            self.errors.with_label_values(&[stage, cause.as_str()]).inc_by(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_metric_is_listed_in_all_and_no_other() {
        let metrics = Metrics::unregistered();
        let mut registered: Vec<String> = metrics
            .collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()).collect::<Vec<_>>())
            .collect();
        registered.sort();
        let mut listed: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(registered, listed);
    }
}
