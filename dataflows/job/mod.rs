//! The ingest job: Kafka audio chunks → decode → segment → embed → index → archive, segments topic and dead letters,
//! on `W` timely workers, committing source offsets behind the sinks' durability frontier.

mod budget;
mod sinks;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_connectors::Fatal;
use chorus_connectors::kafka::{self, BrokerWatch, Decoded, KafkaSource, Producer};
use chorus_connectors::parquet as archive;
use chorus_connectors::stop::Stop;
use chorus_operators::embed::{self, Embed, Embedder};
use chorus_operators::index::{self, Index, Indexed};
use chorus_operators::metrics::Metrics;
use chorus_operators::record::{AudioChunk, DeadLetter, Segment};
use chorus_operators::refine::SharedRefinements;
use chorus_operators::segment::{Savepoint, Segment as _, Segmenter, Store};
use chorus_operators::throttle::Throttle;
use prometheus::Registry;
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Concat, Concatenate, Operator, Probe};
use timely::progress::Antichain;

use self::budget::{Budget, split_budget};
use self::sinks::{Outputs, SINKS, SinkContext};
use crate::Error;
use crate::config::Config;
use crate::refine::{Arrivals, Pause, Stage};
use crate::serve::{Api, HttpServer, Probes};
use crate::{locks, store};

/// How a run is launched, beyond its config file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads; `None` takes the config's `workers`.
    pub workers: Option<usize>,
    /// When the job stops reading; it then drains, flushes its sinks and commits before returning.
    pub stop: Stop,
    /// This process's place in a timely cluster; `None` runs every worker here.
    pub cluster: Option<Cluster>,
    /// The audio is finished recordings (a backfill): when the input ends, every sensor's tail is cut, padded with
    /// silence, instead of waiting for audio that will not come (see `windows.flush_tail_seconds`).
    pub flush_tails: bool,
}

/// One process of a job spread over several (each with `workers` threads, reading partition `p` on global worker
/// `p mod (processes × workers)`).
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// This process's index, from 0.
    pub process: usize,
    /// `host:port` of every process, in process order, the same list in every process.
    pub addresses: Vec<String>,
}

/// What a finished run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// Audio chunks decoded.
    pub chunks: u64,
    /// Windows cut.
    pub windows: u64,
    /// Vectors of embeddings messages (embedded before they were sent) taken.
    pub vectors: u64,
    /// New segments indexed and archived.
    pub segments: u64,
    /// Segments already indexed (replayed input).
    pub duplicates: u64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Offsets committed at the end, per partition of the audio topic.
    pub committed: BTreeMap<i32, i64>,
}

/// Runs the job until it stops by itself (see [`RunOptions::until`]) or fails.
pub fn run(config: &Config, options: &RunOptions) -> Result<RunSummary, Error> {
    let workers = options.workers.unwrap_or(config.workers).max(1);
    let process = options.cluster.as_ref().map_or(0, |c| c.process);
    let _lock = locks::lock(config, process)?;
    // Files a writer killed mid-write left behind. A single process holds the archive alone; in a cluster the other
    // processes may be writing right now, so only files older than any write takes are theirs to lose.
    let min_age = options.cluster.as_ref().map(|_| Duration::from_secs(3_600));
    let removed = archive::remove_temporary_files(&config.archive.dir, min_age)
        + archive::remove_temporary_files(&config.refine.dir, min_age);
    if removed > 0 {
        tracing::info!(removed, "Removed the temporary files of writes cut short.");
    }
    // A broker that refuses this client (TLS, credentials) fails the job now, saying what was refused.
    kafka::check_connection(&config.kafka, Duration::from_secs(30))?;
    if config.kafka.create_topics {
        kafka::ensure_topics(&config.kafka)?;
    }
    // Everything that can be checked before the workers start is checked here, so a bad config fails at once.
    let environment = embed::runtime(&config.embed.library)?;
    let mut settings = config.embed.per_worker(workers);
    settings.keep_audio = config.archive.audio;
    let embedders =
        (0..workers).map(|_| Embedder::open(environment, &config.model, &settings)).collect::<Result<Vec<_>, _>>()?;
    let mut embedders = embedders;
    for embedder in &mut embedders {
        embedder.warm_up()?;
    }
    let budget = split_budget(config, workers)?;
    // The sensor store holds one process's view of every sensor: a cluster re-reads pending audio from Kafka instead.
    if options.cluster.is_none() {
        move_savepoints_to_store(config)?;
    }
    let producer = Producer::open(&config.kafka)?;
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).map_err(|e| Error::Job(format!("cannot register metrics: {e}")))?;
    budget.report(&metrics, workers);
    let spaces = index::Registry::default();
    let refinements = SharedRefinements::default();
    let fatal = Fatal::default();
    let lag = metrics.kafka_lag.clone();
    let watch = BrokerWatch::start(&config.kafka, move |partition, messages| {
        lag.with_label_values(&[&partition.to_string()]).set(messages);
    })?;
    let refine_pause = Pause::default();
    let _server = match config.http {
        Some(listen) => {
            let probes = Probes {
                registry: registry.clone(),
                broker: Some(watch.status()),
                fatal: fatal.clone(),
                refinement: Some(refine_pause.clone()),
            };
            let api = Api::new(config, spaces.clone(), metrics.clone(), refinements.clone(), Some(producer.clone()));
            // The processes of a cluster on one machine each take the next port.
            let listen = if listen.port() == 0 {
                listen
            } else {
                std::net::SocketAddr::new(listen.ip(), listen.port() + process as u16)
            };
            Some(HttpServer::start(listen, probes, Some(api))?)
        }
        None => None,
    };
    tracing::info!(
        workers,
        topic = %config.kafka.audio_topic,
        brokers = %config.kafka.brokers,
        kafka_security = %config.kafka.security.describe(),
        model = %config.model.name,
        dim = config.model.dim,
        archive = %config.archive.dir.display(),
        "Job starting."
    );

    let shared = Arc::new(Shared {
        config: config.clone(),
        stop: options.stop.clone(),
        embedders: Mutex::new(embedders),
        budget,
        clustered: options.cluster.is_some(),
        flush_tails: options.flush_tails,
        producer,
        metrics: metrics.clone(),
        fatal,
        spaces,
        refinements,
        broker: watch.status(),
        refine_pause,
    });
    let timely_config = match &options.cluster {
        None => timely::Config::process(workers),
        Some(cluster) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: cluster.process,
                addresses: cluster.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
    };
    // Merging the flushes' small files runs beside the workers (each process compacts the spaces no other holds).
    let compaction = crate::compact::Background::start(config);
    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let result = catching_panics(index, || run_worker(worker, &shared));
        if let Err(message) = &result {
            shared.fatal.raise(message.clone());
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
        }
        result
    })
    .map_err(Error::Job)?;

    let mut summary = RunSummary::default();
    let mut failures = Vec::new();
    for result in guards.join() {
        match result {
            Ok(Ok(committed)) => summary.committed.extend(committed),
            Ok(Err(message)) | Err(message) => failures.push(message),
        }
    }
    drop(compaction);
    if let Some(first) = failures.into_iter().next() {
        return Err(Error::Job(first));
    }
    let counter = |vec: &prometheus::IntCounterVec, stage: &str| vec.with_label_values(&[stage]).get();
    summary.chunks = counter(&metrics.records_out, "decode");
    summary.windows = counter(&metrics.records_out, "segment");
    summary.vectors = counter(&metrics.records_out, "embeddings");
    summary.segments = counter(&metrics.records_out, "index");
    summary.dead_letters = counter(&metrics.records_in, "dead_letters");
    summary.duplicates = duplicates(&metrics);
    Ok(summary)
}

thread_local! {
    /// The message and place of the last panic on this thread, recorded by the hook [`catching_panics`] installs.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs worker `worker`'s body and turns a panic in it into an error naming the panic's message and place, so that
/// the job ends with what an operator needs to know (timely itself only reports a panicked worker as `Any { .. }`).
/// The panic is still printed by the previous hook, with its backtrace when `RUST_BACKTRACE` asks for one.
pub(crate) fn catching_panics<T>(worker: usize, body: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.payload_as_str().unwrap_or("a panic without a message");
            let place = info.location().map_or_else(|| "an unknown place".to_owned(), ToString::to_string);
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("{message} (at {place})")));
            previous(info);
        }));
    });
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(_) => {
            let what = LAST_PANIC.with(|last| last.borrow_mut().take()).unwrap_or_else(|| "an unknown panic".into());
            Err(format!("worker {worker} panicked: {what}"))
        }
    }
}

/// Where the segmenting workers store sensors' unfinished audio.
pub fn sensor_store_dir(config: &Config) -> std::path::PathBuf {
    config.state_dir.join("sensors")
}

/// Moves the savepoint files of earlier releases (`segmenter-<w>-of-<W>.bin`, written at a clean stop) into the
/// sensor store, whose files the workers load as their sensors come back.
fn move_savepoints_to_store(config: &Config) -> Result<(), Error> {
    let failed = |message: String| Error::Job(format!("{}: {message}", config.state_dir.display()));
    let files: Vec<std::path::PathBuf> = match std::fs::read_dir(&config.state_dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("segmenter-") && n.ends_with(".bin"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(failed(format!("cannot read the state directory: {e}"))),
    };
    if files.is_empty() {
        return Ok(());
    }
    let mut store = Store::open(&sensor_store_dir(config), 0, 1)
        .map_err(|e| failed(format!("cannot open the sensor store: {e}")))?;
    for file in &files {
        let savepoint = Savepoint::read(file).map_err(|e| {
            failed(format!(
                "savepoint {} cannot be read ({e}); move it away to start without it (the audio it holds is then lost)",
                file.display()
            ))
        })?;
        let sensors = savepoint.len();
        savepoint.into_store(&mut store).map_err(|e| failed(format!("cannot store {}: {e}", file.display())))?;
        std::fs::remove_file(file).map_err(|e| failed(format!("cannot remove {}: {e}", file.display())))?;
        tracing::info!(savepoint = %file.display(), sensors, "Savepoint moved to the sensor store.");
    }
    Ok(())
}

fn duplicates(metrics: &Metrics) -> u64 {
    use prometheus::core::Collector;
    metrics
        .duplicates
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// What every worker of the process shares.
struct Shared {
    config: Config,
    stop: Stop,
    embedders: Mutex<Vec<Embedder>>,
    /// The memory budget's shares.
    budget: Budget,
    /// Whether other processes run workers of this job.
    clustered: bool,
    /// Whether every sensor's tail is cut when the input ends.
    flush_tails: bool,
    producer: Producer,
    metrics: Metrics,
    fatal: Fatal,
    /// Every space's index in this process, for queries.
    spaces: index::Registry,
    /// What the refinement says per segment, for queries.
    refinements: SharedRefinements,
    /// The broker watch, told how far the sources have read (for the consumer lag).
    broker: Arc<kafka::BrokerStatus>,
    /// Set when the refinement failed: every worker then drops its part of it.
    refine_pause: Pause,
}

/// How often a worker measures the process's resident memory; its peak over [`budget::PEAK_WINDOW`] is held to the
/// budget's target.
const PRESSURE_EVERY: Duration = Duration::from_millis(250);

fn run_worker(worker: &mut timely::worker::Worker, shared: &Shared) -> Result<BTreeMap<i32, i64>, String> {
    let config = &shared.config;
    let (index, peers) = (worker.index(), worker.peers());
    // Chunks held back for the audio before them take at most a quarter of the read-ahead, reckoned as the source
    // reckons a message; the source reads with the rest. The two are apart: a held chunk holds back neither the
    // embedding stage's progress nor the reads that end its wait.
    let held = shared.budget.read_ahead / 4;
    let read_ahead = shared.budget.read_ahead - held;
    let skipped = shared.metrics.kafka_skipped.clone();
    let source = KafkaSource::open(&config.kafka, index, peers, read_ahead)
        .map_err(|e| e.to_string())?
        .costing(config.model.sample_rate, config.windows.copies())
        .on_skipped(move |partition, count| {
            skipped.with_label_values(&[&partition.to_string()]).inc_by(count.max(0) as u64);
        });
    let store = if shared.clustered {
        None
    } else {
        let dir = sensor_store_dir(config);
        Some(
            Store::open(&dir, index, peers)
                .map_err(|e| format!("{}: cannot open the sensor store: {e}", dir.display()))?,
        )
    };
    let partitions: Vec<i32> = source.partitions().collect();
    let topic_partitions = source.topic_partitions();
    let source = Rc::new(RefCell::new(source));
    let embedder = shared.embedders.lock().unwrap_or_else(|p| p.into_inner()).pop().expect("one embedder per worker");
    let indices =
        store::open_indices(config, index, peers, &shared.spaces, &shared.metrics).map_err(|e| e.to_string())?;
    tracing::info!(worker = index, ?partitions, "Worker reading.");

    let probe = ProbeHandle::new();
    let arrivals = Arrivals::default();
    // How far the embedding stage has come: the source's read-ahead is counted against it.
    let embedded = ProbeHandle::new();
    // How far the pending reports of every worker have arrived: commits wait for them as for the sinks.
    let reports_frontier = Rc::new(RefCell::new(Antichain::from_elem(0u64)));
    worker.dataflow::<u64, _, _>(|scope| {
        let metrics = shared.metrics.clone();
        let limits = config.kafka.chunk_limits();
        let decode_metrics = metrics.clone();
        let (messages, progress) = kafka::source(scope, source.clone(), embedded.clone(), shared.stop.clone());
        // A message with a `model` header carries embeddings made before it was sent: its segments skip the
        // segmenting and the model and join the embedded ones before the index.
        let contract = kafka::EmbeddingContract {
            model: config.model.name.clone(),
            dim: config.model.dim,
            sample_rate: config.windows.sample_rate,
            window: config.windows.window,
            hop: config.windows.hop,
        };
        let (decoded, undecodable) = messages.ok_err(move |message| {
            let started = Instant::now();
            let stage = if kafka::carries_embeddings(&message) { "embeddings" } else { "decode" };
            let decoded = kafka::decode(message, &limits, Some(&contract), kafka::now_nanos());
            decode_metrics.time(stage, started);
            match &decoded {
                Ok(Decoded::Audio(_)) => decode_metrics.count(stage, 1, 1),
                Ok(Decoded::Embeddings(segments)) => decode_metrics.count(stage, 1, segments.len()),
                Err(letter) => {
                    decode_metrics.count(stage, 1, 0);
                    decode_metrics.reject(stage, letter.cause, 1);
                }
            }
            decoded
        });
        let (chunks, precomputed) = decoded.container::<Vec<Decoded>>().ok_err(|decoded| match decoded {
            Decoded::Audio(chunk) => Ok(chunk),
            Decoded::Embeddings(segments) => Err(segments),
        });
        let chunks = chunks.container::<Vec<AudioChunk>>();
        let precomputed = precomputed.container::<Vec<Vec<Segment>>>().flat_map(|segments| segments);
        let undecodable = undecodable.container::<Vec<DeadLetter>>();

        let mut segmenter = Segmenter::new(config.windows.clone())
            .with_held_limit(held)
            .with_sensor_limit(shared.budget.sensors)
            .with_partitions(topic_partitions)
            .with_tails_cut_at_end(shared.flush_tails);
        if let Some(store) = store {
            segmenter = segmenter.with_store(store);
        }
        let (windows, unplaced, reports) =
            chunks.segment(progress.broadcast(), segmenter, Some(probe.clone()), metrics.clone());
        let (tracker, tracked) = (source.clone(), reports_frontier.clone());
        reports.sink(Pipeline, "PendingReports", move |(input, frontier)| {
            let mut source = tracker.borrow_mut();
            input.for_each(|capability, reports| {
                let time = *capability.least().expect("reports travel with a time");
                for report in reports.drain(..) {
                    source.receive_report(time, report);
                }
            });
            *tracked.borrow_mut() = frontier.frontier().to_owned();
        });
        let (segments, unembedded) = windows.embed(embedder, config.scheduling.clone(), metrics.clone());
        let segments = segments.concat(precomputed).probe_with(&embedded);
        let Indexed { to_archive, to_publish, dead_letters: unindexed } = segments.index(indices, metrics.clone());
        if config.refine.enabled {
            let (queue, queue_metrics) = (arrivals.clone(), metrics.clone());
            to_archive.clone().sink(Pipeline, "RefineQueue", move |(input, _)| {
                let mut queue = queue.borrow_mut();
                input.for_each(|_, segments| {
                    queue_metrics.queued("refine", segments.len() as i64);
                    queue.extend(segments.iter().map(|s| (s.key.space.clone(), s.key.id().0, s.embedding.clone())));
                });
            });
        }

        let outputs = Outputs {
            to_archive,
            to_publish,
            dead_letters: scope.concatenate(vec![undecodable, unplaced, unembedded, unindexed]),
        };
        let context = SinkContext {
            config,
            worker: index,
            producer: &shared.producer,
            fatal: &shared.fatal,
            metrics: &metrics,
            archive_audio: shared.budget.archive_audio,
        };
        for sink in SINKS {
            sink(&context, &outputs).probe_with(&probe);
        }
    });

    // The refinement is a second dataflow on the same workers, behind the index. Should it fail, it pauses on every
    // worker and ingestion goes on.
    let refinement = if config.refine.enabled {
        let started = Stage::start(
            worker,
            config,
            shared.spaces.clone(),
            shared.refinements.clone(),
            shared.producer.clone(),
            shared.metrics.clone(),
            arrivals,
        );
        started.map_err(|reason| shared.refine_pause.pause(reason, &shared.metrics)).ok()
    } else {
        None
    };
    step_until_done(worker, shared, &probe, &source, &reports_frontier, refinement)
}

/// Steps the worker until its dataflows end or the job fails: closes refinement rounds between steps, marks what
/// the sinks made durable, commits offsets and reports progress.
fn step_until_done(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    probe: &ProbeHandle<u64>,
    source: &RefCell<KafkaSource>,
    reports_frontier: &RefCell<Antichain<u64>>,
    mut refinement: Option<Stage>,
) -> Result<BTreeMap<i32, i64>, String> {
    let config = &shared.config;
    let index = worker.index();
    let parked = park_clock(worker);
    let busy = shared.metrics.worker_busy.with_label_values(&[&index.to_string()]);
    let mut last_report = Instant::now();
    let mut last_position = Instant::now();
    let (read_ahead_gauge, mut read_ahead) = (shared.metrics.memory.with_label_values(&["read_ahead"]), 0i64);
    let process_gauge = shared.metrics.memory.with_label_values(&["process"]);
    let (mut last_pressure, mut recent_peak) = (Instant::now(), budget::RecentPeak::default());
    let mut commit_warnings = Throttle::default();
    let mut stopping_since: Option<Instant> = None;
    loop {
        if let Some(message) = shared.fatal.get() {
            return Err(message);
        }
        if shared.stop.requested.load(std::sync::atomic::Ordering::Relaxed) {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if since.elapsed() > config.shutdown_timeout {
                let message = format!(
                    "the stop did not complete within shutdown_timeout_seconds = {}; offsets are committed up to \
                     what was durable, and a restart re-reads the rest",
                    config.shutdown_timeout.as_secs()
                );
                shared.fatal.raise(message.clone());
                return Err(message);
            }
        }
        let running = worker.step_or_park(Some(Duration::from_millis(20)));
        if let Some(stage) = refinement.as_mut() {
            // Once ingestion has ended everywhere, the refinement takes what is left and ends too.
            let ended = probe.done();
            let stepped = if ended { stage.finish(worker) } else { stage.tick() };
            if let Err(reason) = stepped {
                shared.refine_pause.pause(reason, &shared.metrics);
            }
            if ended || shared.refine_pause.reason().is_some() {
                refinement = None;
            }
        }
        {
            let mut source = source.borrow_mut();
            let reports = reports_frontier.borrow();
            source.observe_durable(|time| probe.less_equal(time) || reports.less_equal(time));
            if let Err(error) = source.commit(Duration::from_secs(1))
                && commit_warnings.ready(Duration::from_secs(10))
            {
                tracing::warn!(%error, "Offset commit failed; it is retried.");
            }
            if last_pressure.elapsed() >= PRESSURE_EVERY
                && let Some(resident) = budget::resident_bytes()
            {
                last_pressure = Instant::now();
                let peak = recent_peak.observe(last_pressure, resident);
                source.relieve(shared.budget.pressure(peak, worker.peers()));
                process_gauge.set(resident as i64);
            }
            if last_position.elapsed() >= Duration::from_secs(1) {
                busy.inc_by(last_position.elapsed().saturating_sub(parked.replace(Duration::ZERO)).as_secs_f64());
                last_position = Instant::now();
                shared.broker.reading(source.next_offsets());
                read_ahead_gauge.add(source.in_flight() as i64 - read_ahead);
                read_ahead = source.in_flight() as i64;
            }
        }
        if index == 0 && last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            report_progress(&shared.metrics);
        }
        if !running {
            break;
        }
    }
    if let Some(message) = shared.fatal.get() {
        return Err(message);
    }
    let mut source = source.borrow_mut();
    source.finish().map_err(|e| e.to_string())?;
    Ok(source.committed().clone())
}

/// Time the worker spends parked, summed from timely's park and unpark events (read and reset by the caller). Only
/// the worker's own events are logged: the dataflows are built before the logger is registered.
fn park_clock(worker: &mut timely::worker::Worker) -> Rc<Cell<Duration>> {
    use timely::logging::{ParkEvent, TimelyEvent, TimelyEventBuilder};
    let parked = Rc::new(Cell::new(Duration::ZERO));
    if let Some(mut registry) = worker.log_register() {
        let total = parked.clone();
        let mut since: Option<Duration> = None;
        registry.insert::<TimelyEventBuilder, _>("timely", move |_, events| {
            for (at, event) in events.iter().flatten() {
                match event {
                    TimelyEvent::Park(ParkEvent::Park(_)) => since = Some(*at),
                    TimelyEvent::Park(ParkEvent::Unpark) => {
                        if let Some(start) = since.take() {
                            total.set(total.get() + at.saturating_sub(start));
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    parked
}

fn report_progress(metrics: &Metrics) {
    let get = |vec: &prometheus::IntCounterVec, stage: &str| vec.with_label_values(&[stage]).get();
    tracing::info!(
        chunks = get(&metrics.records_out, "decode"),
        windows = get(&metrics.records_out, "segment"),
        segments = get(&metrics.records_out, "index"),
        archived = get(&metrics.records_out, "archive"),
        dead_letters = get(&metrics.records_in, "dead_letters"),
        "Progress."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r13_a_worker_panic_ends_the_run_with_its_message_and_place() {
        let line = line!() + 5;
        let guards = timely::execute(timely::Config::process(2), |worker| {
            let index = worker.index();
            catching_panics(index, || {
                let held: Vec<u32> = vec![1, 2];
                let wanted = held[index * 3];
                Ok(wanted)
            })
        })
        .unwrap();
        let results: Vec<Result<u32, String>> = guards.join().into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(results[0], Ok(1));
        let error = results[1].as_ref().unwrap_err();
        let want = format!(
            "worker 1 panicked: index out of bounds: the len is 2 but the index is 3 (at dataflows/job/mod.rs:{line}:34)"
        );
        assert_eq!(error, &want);
    }
}
