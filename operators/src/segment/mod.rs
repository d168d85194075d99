//! Segmenting: per-sensor reassembly of audio chunks into a timeline at the model's rate, cut into windows.
//!
//! Each `(space, sensor)` has a timeline on the model's absolute sample clock (samples since the Unix epoch).
//! Chunks that follow each other within `gap_tolerance` extend one *run*; a larger jump in `captured_at`, or a change
//! of sample rate, starts a new run. Runs at another rate pass through a streaming resampler. Windows lie on a fixed
//! grid — multiples of the hop on that clock — so the same audio always yields the same windows and segment ids,
//! however it was chunked and wherever a replay starts. A window is cut once audio past its end has arrived; silence
//! in a gap is zeros, and windows with less than `min_coverage` of recorded audio are skipped.
//!
//! Contiguity is judged on the sample clock: a chunk continues its run when its `captured_at` is within the tolerance
//! (at most half the chunk's length) of the run's start time plus the samples received since. A chunk lying wholly
//! within audio already received is a repeated delivery and is dropped; one that starts inside it keeps only its new
//! part; one that lies wholly before it is out of order — unless it lies more than `max_jump_back` before it: then
//! the sensor's clock jumped back, and its timeline starts again. Overlaps and out-of-order chunks leave dead
//! letters.
//!
//! **Order.** A sensor's chunks may travel on several partitions (producers with different partitioners, a topic
//! that grew), so they can arrive out of `captured_at` order, however fast each partition is read. A chunk that
//! continues the audio received is placed at once; one that would start after a gap (and a sensor's first chunk) is
//! held back, in `captured_at` order, until the gap is filled or no partition can still hold audio sent before it:
//! every partition has been read past the chunk's Kafka timestamp (a partition is read in the order it was written),
//! or has nothing left to read and `lateness_ms` have passed since the chunk was sent (for chunks still on their
//! way). The source workers say how far they have read each partition ([`PartitionProgress`]), and that applies after
//! the chunks read before it. Sooner than that, a worker places what it holds back once it reaches its share of the
//! memory budget ([`Segmenter::with_held_limit`]). The same audio therefore yields the same windows whatever
//! partitions it came from and however fast each is read, within those bounds. While a chunk is held, the operator
//! holds a capability at its arrival and sends windows at that time: the source's read-ahead counts what is held and
//! what it releases, and commits wait.
//!
//! **Pending chunks and commits.** Every chunk whose samples a future window may still need stays *pending* (held
//! chunks too). The timely operator processes chunks in time order, sends each window at the time of the chunk that
//! completed it (or earlier: at the oldest held chunk's arrival, while one is held) — never later than the newest
//! chunk it holds, so the window is durable once that chunk's epoch is — and reports, whenever it changes, the offset
//! of the oldest pending chunk per partition.
//! Offsets are committed up to those reports and no further, so a restart re-reads every chunk a window not yet cut
//! still needs.
//!
//! **The store.** A sensor that sent nothing for `park_after` is moved to the [`Store`], a file per sensor: its
//! chunks no longer pin their partition, and a decommissioned sensor costs neither memory nor commits. When the
//! input ends (a clean stop) every sensor is moved there. A sensor's next chunk loads it back; the chunks its file
//! holds are not pending (their audio is on disk), and once the windows holding them are durable the file is removed.
//! A job that dies leaves the files as they were, and the next one continues from them.

mod sensors;
mod store;
mod timeline;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange as ExchangePact, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{ProbeHandle, StreamVec};

pub use sensors::Segmenter;
pub use store::Store;
use timeline::Timeline;

use crate::FieldError;
use crate::cause::Cause;
use crate::metrics::Metrics;
use crate::record::{AudioChunk, DeadLetter, Nanos, PartitionProgress, PendingReport, Window, route};

/// `[windows]`: how audio is cut into model windows.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// Seconds between window starts (windows overlap when this is below the model's window length).
    pub hop_seconds: f64,
    /// A chunk whose `captured_at` is within this many milliseconds of where the previous chunk ended continues the
    /// same run; a larger jump starts a new run.
    pub gap_tolerance_ms: u64,
    /// Seconds of recorded audio (not gap filler) a window needs to be embedded.
    pub min_coverage_seconds: f64,
    /// A sensor's chunks are placed in `captured_at` order whatever partition they came from: a chunk that starts
    /// after a gap in its sensor's audio (and a sensor's first chunk) waits for the audio before it until every
    /// partition has been read past the time it was sent (its Kafka timestamp), and a partition with nothing left
    /// to read for this many milliseconds after it was sent — for chunks still on their way. Audio of a gap that
    /// arrives later is dead-lettered as `out_of_order`. 0 places every chunk as it arrives, in no particular order.
    pub lateness_ms: u64,
    /// A sensor that sent nothing for this many seconds (and whose job runs as one process) has its unfinished audio
    /// moved to `state_dir`: its partition's commits no longer wait for it, nor does memory hold it. Its next chunk
    /// brings it back.
    pub park_after_seconds: u64,
    /// A chunk that starts more than this many seconds before the audio its sensor already sent (and is not a
    /// repeat) means the sensor's clock jumped back: its timeline ends and a new one starts with the chunk. Less far
    /// back, the chunk is dead-lettered as `out_of_order`.
    pub max_jump_back_seconds: u64,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig {
            hop_seconds: 5.0,
            gap_tolerance_ms: 100,
            min_coverage_seconds: 1.0,
            lateness_ms: 500,
            park_after_seconds: 300,
            max_jump_back_seconds: 600,
        }
    }
}

impl WindowsConfig {
    /// Validates against the model's rate and window length (in samples).
    pub fn build(&self, sample_rate: u32, window: u32) -> Result<WindowSpec, FieldError> {
        let hop = self.hop_seconds * f64::from(sample_rate);
        if self.hop_seconds.is_nan() || self.hop_seconds <= 0.0 || (hop - hop.round()).abs() > 1e-6 {
            return Err(FieldError::new(
                "hop_seconds",
                format!(
                    "{} is not a positive whole number of samples at the model's {sample_rate} Hz",
                    self.hop_seconds
                ),
            ));
        }
        let hop = hop.round() as u32;
        if hop > window {
            return Err(FieldError::new(
                "hop_seconds",
                format!(
                    "{} s is longer than the model's window: audio between windows would be skipped",
                    self.hop_seconds
                ),
            ));
        }
        let min_coverage = (self.min_coverage_seconds * f64::from(sample_rate)).round();
        if !(0.0..=f64::from(window)).contains(&min_coverage) || min_coverage < 1.0 {
            return Err(FieldError::new(
                "min_coverage_seconds",
                format!("{} must be above 0 and at most the model's window length", self.min_coverage_seconds),
            ));
        }
        if self.lateness_ms > 600_000 {
            return Err(FieldError::new("lateness_ms", format!("{} is more than 10 minutes", self.lateness_ms)));
        }
        if !(1..=31_536_000).contains(&self.park_after_seconds) {
            return Err(FieldError::new(
                "park_after_seconds",
                format!("{} is outside 1..=31536000 (a year)", self.park_after_seconds),
            ));
        }
        if !(1..=31_536_000).contains(&self.max_jump_back_seconds) {
            return Err(FieldError::new(
                "max_jump_back_seconds",
                format!("{} is outside 1..=31536000 (a year)", self.max_jump_back_seconds),
            ));
        }
        Ok(WindowSpec {
            sample_rate,
            window,
            hop,
            gap_tolerance: self.gap_tolerance_ms as Nanos * 1_000_000,
            min_coverage: min_coverage as u32,
            lateness_ms: self.lateness_ms,
            park_after_ms: self.park_after_seconds * 1_000,
            max_jump_back: self.max_jump_back_seconds as i64 * i64::from(sample_rate),
        })
    }
}

/// Window geometry at the model's rate.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSpec {
    /// Model sample rate in Hz.
    pub sample_rate: u32,
    /// Window length in samples.
    pub window: u32,
    /// Samples between window starts.
    pub hop: u32,
    /// Largest jump in `captured_at` that still continues a run.
    pub gap_tolerance: Nanos,
    /// Recorded samples a window needs to be emitted.
    pub min_coverage: u32,
    /// Milliseconds a chunk after a gap waits for the audio before it.
    pub lateness_ms: u64,
    /// Milliseconds without a chunk after which a sensor is moved to the store.
    pub park_after_ms: u64,
    /// Samples a clock may jump back before a sensor's timeline starts again.
    pub max_jump_back: i64,
}

impl WindowSpec {
    pub(crate) fn grid_floor(&self, pos: i64) -> i64 {
        pos.div_euclid(i64::from(self.hop)) * i64::from(self.hop)
    }

    /// A window's length in microseconds (rounded down): where the outputs that know a segment's start only (the
    /// index, the query API) place its end.
    pub fn window_micros(&self) -> i64 {
        i64::from(self.window) * 1_000_000 / i64::from(self.sample_rate)
    }
}

/// Cuts a standalone clip (a query, a file) into windows starting every hop from its first sample; the last window
/// is zero-padded and kept when it holds at least `min_coverage` samples. A clip shorter than a window gives one
/// padded window. Returns each window's offset in samples with its samples.
pub fn clip_windows(spec: &WindowSpec, samples: &[f32]) -> Vec<(usize, Vec<f32>)> {
    let window = spec.window as usize;
    clip_window_starts(spec, samples.len())
        .into_iter()
        .map(|start| {
            let mut w = samples[start..(start + window).min(samples.len())].to_vec();
            w.resize(window, 0.0);
            (start, w)
        })
        .collect()
}

/// Where [`clip_windows`] starts the windows of a clip of `len` samples, for callers that cut a long clip a batch
/// at a time instead of copying every window at once.
pub fn clip_window_starts(spec: &WindowSpec, len: usize) -> Vec<usize> {
    let (window, hop) = (spec.window as usize, spec.hop as usize);
    let mut starts = Vec::new();
    let mut start = 0;
    while start < len {
        let available = len - start;
        if !starts.is_empty() && available < spec.min_coverage as usize {
            break;
        }
        starts.push(start);
        if available <= window {
            break;
        }
        start += hop;
    }
    starts
}

/// What segmenting produced.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Windows cut.
    pub windows: Vec<Window>,
    /// Audio that could not be placed, with the reason.
    pub rejected: Vec<DeadLetter>,
    /// The space of each chunk that lay wholly within audio already received — a repeated delivery — and was dropped.
    pub duplicates: Vec<String>,
}

const SAVEPOINT_VERSION: u32 = 1;

/// The per-worker savepoint files (`segmenter-<w>-of-<W>.bin`) of earlier releases, which held every sensor's
/// timeline after a clean stop; a job moves what they hold to the [`Store`] before it starts.
#[derive(Default, Serialize, Deserialize)]
pub struct Savepoint {
    version: u32,
    timelines: Vec<((String, String), Timeline)>,
}

impl Savepoint {
    /// Sensors held.
    pub fn len(&self) -> usize {
        self.timelines.len()
    }

    /// Whether no sensor is held.
    pub fn is_empty(&self) -> bool {
        self.timelines.is_empty()
    }

    /// Reads one.
    pub fn read(path: &Path) -> std::io::Result<Savepoint> {
        let savepoint: Savepoint = bincode::deserialize(&std::fs::read(path)?).map_err(std::io::Error::other)?;
        if savepoint.version != SAVEPOINT_VERSION {
            return Err(std::io::Error::other(format!(
                "savepoint version {} is not {SAVEPOINT_VERSION}",
                savepoint.version
            )));
        }
        Ok(savepoint)
    }

    /// Moves every sensor it holds to `store`.
    pub fn into_store(self, store: &mut Store) -> std::io::Result<()> {
        for ((space, sensor), timeline) in self.timelines {
            Segmenter::store_timeline(store, &space, &sensor, timeline)?;
        }
        Ok(())
    }
}

pub(crate) fn rejection(chunk: &AudioChunk, cause: Cause, reason: String) -> DeadLetter {
    DeadLetter {
        origin: Some(chunk.origin.clone()),
        key: Some(chunk.sensor.as_bytes().to_vec()),
        headers: Vec::new(),
        payload: Vec::new(),
        reason,
        cause,
    }
}

/// Cuts a stream of audio chunks into model windows; see the module documentation.
pub trait Segment<'scope> {
    /// Returns the windows, the dead letters of audio that could not be placed, and the pending reports of every
    /// worker (broadcast: each worker receives them all). `progress` says how far the partitions have been read, as
    /// every source worker reports it (broadcast to every worker): held-back chunks wait for it.
    ///
    /// # Examples
    /// ```
    /// use chorus_operators::metrics::Metrics;
    /// use chorus_operators::record::{AudioChunk, Origin, PartitionProgress, Priority};
    /// use chorus_operators::segment::{Segment, Segmenter, WindowsConfig};
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::{Map, ToStream};
    /// use timely::dataflow::operators::Capture;
    ///
    /// let spec = WindowsConfig { hop_seconds: 1.0, ..Default::default() }.build(1_000, 2_000).unwrap();
    /// let (starts, pending) = timely::example(move |scope| {
    ///     let chunk = AudioChunk {
    ///         space: "default".into(), sensor: "s1".into(), captured_at: 0, sent_ms: 0, priority: Priority::Normal,
    ///         sample_rate: 1_000, samples: vec![0.1; 5_000],
    ///         origin: Origin { topic: "audio".into(), partition: 3, offset: 7 },
    ///     };
    ///     let progress = Vec::<PartitionProgress>::new().to_stream(scope);
    ///     let (windows, _dead_letters, reports) = vec![chunk].to_stream(scope).segment(
    ///         progress,
    ///         Segmenter::new(spec).with_partitions(1),
    ///         None,
    ///         Metrics::unregistered(),
    ///     );
    ///     (windows.map(|w| w.key.start).capture(), reports.map(|r| r.pending).capture())
    /// });
    /// let starts: Vec<i64> = starts.extract().into_iter().flat_map(|(_, s)| s).collect();
    /// // A sensor's first chunk waits until no partition can hold audio sent before it — here, until the input ends,
    /// // since no partition reports. Then the windows it completes are cut; the window at 4 s waits for audio
    /// // past 6 s...
    /// assert_eq!(starts, vec![0, 1_000, 2_000, 3_000]);
    /// // ... so the chunk holding it stays pending: offset 7 of partition 3 must not be committed yet (without a
    /// // store, the input's end does not change that).
    /// assert_eq!(pending.extract(), vec![(0, vec![vec![(3, 7)]])]);
    /// ```
    ///
    /// Two chunks of one sensor, the second continuing the first: with `lateness_ms = 0` each is placed as it
    /// arrives, and the windows run across the boundary between them (the second chunk's samples are 0.2). Each
    /// window has the model's length, the origin of its first sample, and an id that follows from its space, sensor
    /// and first sample alone; the window at 4 s waits for more audio, as above.
    /// ```
    /// use chorus_operators::metrics::Metrics;
    /// use chorus_operators::record::{AudioChunk, Origin, PartitionProgress, Priority, SegmentId, Window};
    /// use chorus_operators::segment::{Segment, Segmenter, WindowsConfig};
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::{Map, ToStream};
    ///
    /// let spec = WindowsConfig { hop_seconds: 1.0, lateness_ms: 0, ..Default::default() };
    /// let spec = spec.build(1_000, 2_000).unwrap();
    /// let chunk = |offset: i64, samples: Vec<f32>| AudioChunk {
    ///     space: "default".into(),
    ///     sensor: "s1".into(),
    ///     captured_at: offset * 2_500_000_000,
    ///     sent_ms: offset * 2_500,
    ///     priority: Priority::Normal,
    ///     sample_rate: 1_000,
    ///     samples,
    ///     origin: Origin { topic: "audio".into(), partition: 0, offset },
    /// };
    /// let chunks = vec![chunk(0, vec![0.1; 2_500]), chunk(1, vec![0.2; 2_500])];
    /// let windows = timely::example(move |scope| {
    ///     let progress = Vec::<PartitionProgress>::new().to_stream(scope);
    ///     let (windows, _dead_letters, _reports) =
    ///         chunks.to_stream(scope).segment(progress, Segmenter::new(spec), None, Metrics::unregistered());
    ///     let second = |w: &Window| w.samples.iter().filter(|s| **s == 0.2).count();
    ///     windows.map(move |w| (w.key.start, w.key.id(), w.samples.len(), w.origin.offset, second(&w))).capture()
    /// });
    /// let windows: Vec<_> = windows.extract().into_iter().flat_map(|(_, w)| w).collect();
    /// let id = |start: i64| SegmentId::of("default", "s1", start);
    /// assert_eq!(
    ///     windows,
    ///     [
    ///         (0, id(0), 2_000, 0, 0),
    ///         (1_000, id(1_000), 2_000, 0, 500),
    ///         (2_000, id(2_000), 2_000, 0, 1_500),
    ///         (3_000, id(3_000), 2_000, 1, 2_000),
    ///     ]
    /// );
    /// ```
    ///
    /// With a store ([`Segmenter::with_store`]), quiet sensors move there and every sensor does when the input ends
    /// (see the module documentation); a sensor file whose audio is used up is removed once `durable` (the probe over
    /// the sinks) has passed the time its windows went out.
    fn segment(
        self,
        progress: StreamVec<'scope, u64, PartitionProgress>,
        segmenter: Segmenter,
        durable: Option<ProbeHandle<u64>>,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Window>, StreamVec<'scope, u64, DeadLetter>, StreamVec<'scope, u64, PendingReport>);
}

/// What arrived at one time: chunks (with capabilities for the outputs) and partition progress.
#[derive(Default)]
struct Arrived {
    capabilities: Option<[Capability<u64>; 3]>,
    chunks: Vec<AudioChunk>,
    progress: Vec<PartitionProgress>,
}

impl<'scope> Segment<'scope> for StreamVec<'scope, u64, AudioChunk> {
    fn segment(
        self,
        progress: StreamVec<'scope, u64, PartitionProgress>,
        mut segmenter: Segmenter,
        durable: Option<ProbeHandle<u64>>,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Window>, StreamVec<'scope, u64, DeadLetter>, StreamVec<'scope, u64, PendingReport>)
    {
        let scope = self.scope();
        let worker = scope.index();
        let mut builder = OperatorBuilder::new("Segment".to_owned(), scope);
        let mut input = builder.new_input(self, ExchangePact::new(|c: &AudioChunk| route(&c.space) ^ route(&c.sensor)));
        let mut progress_input = builder.new_input(progress, Pipeline);
        let (windows_out, windows) = builder.new_output::<Vec<Window>>();
        let (dead_out, dead) = builder.new_output::<Vec<DeadLetter>>();
        let (reports_out, reports) = builder.new_output::<Vec<PendingReport>>();
        let mut windows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Window>>>::from(windows_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
        let mut reports_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<PendingReport>>>::from(reports_out);

        builder.build(move |initial| {
            // One capability per output following the input frontier: windows placed when a held chunk's wait is over
            // go out at the frontier (or earlier: see `holding`), as does the last report once the input has ended.
            let mut following: Option<Vec<Capability<u64>>> = Some(initial);
            // At the arrival of the oldest chunk held back: the source's read-ahead counts it, and commits wait for it.
            let mut holding: Option<Capability<u64>> = None;
            let stores = segmenter.stores();
            // What arrived waits here until nothing earlier can arrive: each sensor's audio is placed in time order, a
            // window goes out at the time of the chunk that completed it (never before a chunk it holds), and the
            // partitions' progress applies after the chunks read before it.
            let mut stash: BTreeMap<u64, Arrived> = BTreeMap::new();
            let mut reported = BTreeMap::new();
            let mut revision = 0;
            let mut last_park = 0u64;
            let mut counted = (0i64, 0i64);
            move |frontiers| {
                input.for_each(|capability, chunks| {
                    let time = *capability.least().expect("chunks travel with a time");
                    let arrived = stash.entry(time).or_default();
                    arrived.capabilities.get_or_insert_with(|| [0, 1, 2].map(|port| capability.delayed(&time, port)));
                    arrived.chunks.append(chunks);
                });
                progress_input.for_each(|capability, reports| {
                    let time = *capability.least().expect("progress travels with a time");
                    stash.entry(time).or_default().progress.append(reports);
                });
                let mut windows_session = windows_out.activate();
                let mut dead_session = dead_out.activate();
                let mut reports_session = reports_out.activate();
                // While a chunk is held back, windows go out at its arrival: the embedding stage's progress, which
                // the source's read-ahead follows, then waits for them too (an earlier time is as good for durability).
                let mut send = |pushed: Pushed, holding: &Option<Capability<u64>>, caps: &[Capability<u64>]| {
                    for space in &pushed.duplicates {
                        metrics.duplicate_chunks.with_label_values(&[space.as_str()]).inc();
                    }
                    for letter in &pushed.rejected {
                        metrics.reject("segment", letter.cause, 1);
                    }
                    let windows_cap = holding.as_ref().unwrap_or(&caps[0]);
                    windows_session.session(windows_cap).give_iterator(pushed.windows.into_iter());
                    dead_session.session(&caps[1]).give_iterator(pushed.rejected.into_iter());
                };
                // The pending offsets are a walk over every sensor: taken again only after a change that may move them.
                let mut report = |segmenter: &Segmenter, cap: &Capability<u64>| {
                    if segmenter.revision() == revision {
                        return;
                    }
                    revision = segmenter.revision();
                    let pending = segmenter.pending_offsets();
                    if pending != reported {
                        let report = PendingReport { worker, pending: pending.iter().map(|(p, o)| (*p, *o)).collect() };
                        reports_session.session(cap).give(report);
                        reported = pending;
                    }
                };
                // The earliest time either input may still bring.
                let frontier =
                    [&frontiers[0], &frontiers[1]].iter().filter_map(|f| f.frontier().first().copied()).min();
                while let Some(entry) = stash.first_entry() {
                    if frontier.is_some_and(|f| *entry.key() >= f) {
                        break;
                    }
                    let time = *entry.key();
                    let arrived = entry.remove();
                    let now = frontier.unwrap_or(time);
                    let started = Instant::now();
                    let received = arrived.chunks.len();
                    let mut pushed = Pushed::default();
                    for chunk in arrived.chunks {
                        segmenter.push(chunk, time, now, &mut pushed);
                    }
                    // What was read with these chunks may end some waits; only then does the memory limit apply.
                    for progress in arrived.progress {
                        segmenter.progress(progress);
                    }
                    segmenter.release(Some(now), time, &mut pushed);
                    segmenter.fit_held_limit(time, &mut pushed);
                    metrics.count("segment", received, pushed.windows.len());
                    metrics.time("segment", started);
                    // Progress alone brings no capability: the ones following the frontier give this time, so that
                    // the report of what it released goes out no earlier than the windows that used it.
                    let capabilities = arrived.capabilities.unwrap_or_else(|| {
                        let following = following.as_ref().expect("held until the input ends");
                        [0, 1, 2].map(|port| following[port].delayed(&time))
                    });
                    let caps = &capabilities[..];
                    send(pushed, &holding, caps);
                    if holding.is_none() && segmenter.oldest_held().is_some() {
                        holding = Some(caps[0].delayed(&time));
                    }
                    report(&segmenter, &caps[2]);
                }
                match frontier {
                    Some(now) => {
                        let caps = following.as_mut().expect("held until the input ends");
                        for cap in caps.iter_mut() {
                            if *cap.time() < now {
                                cap.downgrade(&now);
                            }
                        }
                        let mut pushed = Pushed::default();
                        segmenter.release(Some(now), now, &mut pushed);
                        metrics.count("segment", 0, pushed.windows.len());
                        send(pushed, &holding, caps);
                        if stores && now >= last_park.saturating_add(1_000) {
                            last_park = now;
                            segmenter.park_quiet(now);
                            if let Some(durable) = &durable {
                                segmenter.remove_obsolete(|t| durable.less_equal(t));
                            }
                        }
                        report(&segmenter, &caps[2]);
                        match segmenter.oldest_held() {
                            Some(oldest) => {
                                if let Some(cap) = holding.as_mut()
                                    && *cap.time() < oldest
                                {
                                    cap.downgrade(&oldest);
                                }
                            }
                            None => holding = None,
                        }
                    }
                    None => {
                        if let Some(following) = following.take() {
                            // The chunks still held may have arrived after the frontier last moved: what they complete
                            // and the report that releases them go out no earlier than they arrived.
                            let last = holding.as_ref().map_or(*following[0].time(), |h| *h.time());
                            let caps: Vec<Capability<u64>> =
                                following.iter().map(|cap| cap.delayed(&last.max(*cap.time()))).collect();
                            let mut pushed = Pushed::default();
                            segmenter.release(None, *caps[0].time(), &mut pushed);
                            metrics.count("segment", 0, pushed.windows.len());
                            send(pushed, &holding, &caps);
                            if stores {
                                let parked = segmenter.park_all();
                                tracing::info!(worker, sensors = parked, "Sensors' unfinished audio stored.");
                            }
                            report(&segmenter, &caps[2]);
                            holding = None;
                        }
                    }
                }
                let now_counted = (segmenter.active() as i64, segmenter.stored() as i64);
                metrics.sensors.with_label_values(&["active"]).add(now_counted.0 - counted.0);
                metrics.sensors.with_label_values(&["stored"]).add(now_counted.1 - counted.1);
                counted = now_counted;
            }
        });
        (windows, dead, reports.broadcast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Origin, Priority, samples_to_nanos};

    const RATE: u32 = 1_000;

    fn config(hop: f64) -> WindowsConfig {
        WindowsConfig {
            hop_seconds: hop,
            gap_tolerance_ms: 5,
            min_coverage_seconds: 0.5,
            lateness_ms: 0,
            ..Default::default()
        }
    }

    /// Places every chunk as it arrives.
    fn spec(hop: f64, window: u32) -> WindowSpec {
        config(hop).build(RATE, window).unwrap()
    }

    /// What one chunk arriving at time 0 produces.
    fn push(segmenter: &mut Segmenter, chunk: AudioChunk) -> Pushed {
        let mut out = Pushed::default();
        segmenter.push(chunk, 0, 0, &mut out);
        out
    }

    fn chunk(sensor: &str, at_sample: i64, samples: Vec<f32>, rate: u32, offset: i64) -> AudioChunk {
        AudioChunk {
            space: "default".into(),
            sensor: sensor.into(),
            captured_at: samples_to_nanos(at_sample, rate),
            sent_ms: samples_to_nanos(at_sample, rate) / 1_000_000,
            priority: Priority::Normal,
            sample_rate: rate,
            samples,
            origin: Origin { topic: "audio".into(), partition: 0, offset },
        }
    }

    fn starts(pushed: &Pushed) -> Vec<i64> {
        pushed.windows.iter().map(|w| w.key.start).collect()
    }

    /// Feeds `signal` (one value per sample, at RATE) in chunks of `sizes` (cycled) and returns the windows.
    fn segment_in_chunks(spec: &WindowSpec, signal: &[f32], start: i64, sizes: &[usize]) -> Vec<Window> {
        let mut segmenter = Segmenter::new(spec.clone());
        let (mut at, mut offset, mut windows) = (0usize, 0i64, Vec::new());
        for &size in sizes.iter().cycle() {
            if at >= signal.len() {
                break;
            }
            let end = (at + size).min(signal.len());
            let pushed = push(&mut segmenter, chunk("s", start + at as i64, signal[at..end].to_vec(), RATE, offset));
            assert!(pushed.rejected.is_empty() && pushed.duplicates.is_empty());
            windows.extend(pushed.windows);
            at = end;
            offset += 1;
        }
        windows
    }

    #[test]
    fn clips_are_cut_from_their_first_sample_and_padded_at_the_end() {
        let spec = spec(1.0, 2_000);
        let starts = |n: usize| clip_windows(&spec, &vec![1.0; n]).into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(starts(700), vec![0]);
        assert_eq!(starts(2_000), vec![0]);
        assert_eq!(starts(3_400), vec![0, 1_000, 2_000]);
        assert_eq!(starts(3_000), vec![0, 1_000]);
        let last = clip_windows(&spec, &vec![1.0; 3_600]).pop().unwrap().1;
        assert_eq!((last[1_599], last[1_600]), (1.0, 0.0));
    }

    #[test]
    fn windows_do_not_depend_on_chunk_boundaries() {
        let spec = spec(0.5, 2_000);
        let signal: Vec<f32> = (0..10_300).map(|i| (i as f32 * 0.01).sin()).collect();
        let whole = segment_in_chunks(&spec, &signal, 40_000, &[signal.len()]);
        let chunked = segment_in_chunks(&spec, &signal, 40_000, &[1_300, 777, 2_001]);
        let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
        assert!(whole.iter().map(content).eq(chunked.iter().map(content)), "windows differ");
        let starts: Vec<i64> = whole.iter().map(|w| w.key.start - 40_000).collect();
        assert_eq!(starts, (0..=16).map(|k| k * 500).collect::<Vec<_>>());
        assert_eq!(whole[3].samples[..], signal[1_500..3_500]);
        assert!(whole.iter().all(|w| w.coverage == 1.0));
    }

    #[test]
    fn windows_sit_on_the_absolute_grid() {
        let spec = spec(1.0, 2_000);
        let windows = segment_in_chunks(&spec, &vec![0.5; 6_000], 10_250, &[1_000]);
        // The first window starts at the grid point before the first sample and is zero-padded at its head.
        assert_eq!(windows[0].key.start, 10_000);
        assert_eq!(windows[0].samples[..250], vec![0.0; 250][..]);
        assert_eq!(windows[0].coverage, 0.875);
        assert!(windows.iter().all(|w| w.key.start % 1_000 == 0));
    }

    #[test]
    fn a_gap_starts_a_new_run_and_skips_silent_windows() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        let mut cut = Vec::new();
        for (at, n, offset) in [(0, 3_000, 0), (23_000, 3_000, 1), (26_000, 1_000, 2)] {
            let pushed = push(&mut segmenter, chunk("s", at, vec![1.0; n], RATE, offset));
            cut.extend(pushed.windows.iter().map(|w| (w.key.start, w.coverage)));
        }
        // The window [2000, 4000) holds the first run's tail and is cut as soon as the gap is known.
        assert_eq!(cut, vec![(0, 1.0), (1_000, 1.0), (2_000, 0.5), (23_000, 1.0), (24_000, 1.0), (25_000, 1.0)]);
    }

    #[test]
    fn overlapping_audio_keeps_its_new_part_and_leaves_a_dead_letter() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        push(&mut segmenter, chunk("s", 0, vec![1.0; 3_000], RATE, 0));
        let pushed = push(&mut segmenter, chunk("s", 2_000, vec![2.0; 2_000], RATE, 1));
        let letter = &pushed.rejected[0];
        assert_eq!(letter.cause, "overlap");
        assert!(letter.reason.contains("1.000 s"), "{}", letter.reason);
        // The kept second half continues the timeline at 3000.
        let pushed = push(&mut segmenter, chunk("s", 4_000, vec![3.0; 1_000], RATE, 2));
        let w = pushed.windows.last().unwrap();
        assert_eq!(w.key.start, 3_000);
        assert_eq!(w.samples[..1_000], vec![2.0; 1_000][..]);
    }

    #[test]
    fn a_repeated_chunk_is_dropped_without_breaking_the_run() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        push(&mut segmenter, chunk("s", 0, vec![1.0; 1_500], RATE, 0));
        let again = push(&mut segmenter, chunk("s", 0, vec![1.0; 1_500], RATE, 1));
        assert!(again.duplicates == ["default"] && again.rejected.is_empty() && again.windows.is_empty());
        let next = push(&mut segmenter, chunk("s", 1_500, vec![1.0; 1_500], RATE, 2));
        assert!(next.duplicates.is_empty());
        assert_eq!(starts(&next), vec![0, 1_000]);
        // A repeated chunk shorter than the tolerance is still a repeat, not a successor.
        let short = push(&mut segmenter, chunk("s", 2_997, vec![1.0; 3], RATE, 3));
        assert_eq!(short.duplicates, ["default"]);
    }

    #[test]
    fn a_first_chunk_shorter_than_the_tolerance_is_kept() {
        let spec = WindowsConfig { gap_tolerance_ms: 100, min_coverage_seconds: 0.001, ..config(1.0) }
            .build(RATE, 2_000)
            .unwrap();
        let mut segmenter = Segmenter::new(spec);
        let first = push(&mut segmenter, chunk("s", 0, vec![1.0; 50], RATE, 0));
        assert!(first.duplicates.is_empty() && first.rejected.is_empty());
        assert_eq!(segmenter.pending_chunks(), 1);
    }

    #[test]
    fn audio_from_before_everything_received_is_out_of_order() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        // A chunk stamped a minute and a half ahead, then the sensor's real audio: reported, never silently dropped
        // (further back than windows.max_jump_back_seconds, the timeline would start again instead).
        push(&mut segmenter, chunk("s", 100_000, vec![1.0; 1_000], RATE, 0));
        let late = push(&mut segmenter, chunk("s", 0, vec![1.0; 1_000], RATE, 1));
        assert!(late.duplicates.is_empty());
        assert_eq!(late.rejected[0].cause, "out_of_order");
        assert!(late.rejected[0].reason.contains("1970-01-01T00:00:00Z"), "{}", late.rejected[0].reason);
    }

    #[test]
    fn chunks_stay_pending_until_no_window_needs_them() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        let first = push(&mut segmenter, chunk("s", 0, vec![1.0; 1_500], RATE, 0));
        assert!(first.windows.is_empty());
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
        let second = push(&mut segmenter, chunk("s", 1_500, vec![1.0; 1_000], RATE, 1));
        // Window [0, 2000) is cut; chunk 0 is still needed by [1000, 3000).
        assert_eq!(starts(&second), vec![0]);
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
        let third = push(&mut segmenter, chunk("s", 2_500, vec![1.0; 1_500], RATE, 2));
        assert_eq!(starts(&third), vec![1_000, 2_000]);
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 2)]));
        // Another sensor's pending chunk on another partition is reported alongside.
        let mut other = chunk("t", 0, vec![1.0; 500], RATE, 9);
        other.origin.partition = 1;
        push(&mut segmenter, other);
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 2), (1, 9)]));
    }

    #[test]
    fn a_stored_sensor_continues_as_if_never_stopped() {
        let signal: Vec<f32> = (0..9_000).map(|i| (i as f32 * 0.003).sin()).collect();
        let spec = spec(1.0, 2_000);
        let whole = segment_in_chunks(&spec, &signal, 0, &[1_000]);
        let dir = tempfile::tempdir().unwrap();
        let mut first = Segmenter::new(spec.clone()).with_store(Store::open(dir.path(), 0, 1).unwrap());
        let mut windows = Vec::new();
        for (i, part) in signal.chunks(1_000).enumerate().take(4) {
            windows.extend(push(&mut first, chunk("s", i as i64 * 1_000, part.to_vec(), RATE, i as i64)).windows);
        }
        // Windows up to [2000, 4000) are cut; the next one needs chunk 3 and more.
        assert_eq!(first.pending_offsets(), BTreeMap::from([(0, 3)]));
        assert_eq!(first.park_all(), 1);
        assert_eq!((first.active(), first.stored(), first.pending_offsets()), (0, 1, BTreeMap::new()));
        let mut second = Segmenter::new(spec).with_store(Store::open(dir.path(), 0, 1).unwrap());
        for (i, part) in signal.chunks(1_000).enumerate().skip(4) {
            windows.extend(push(&mut second, chunk("s", i as i64 * 1_000, part.to_vec(), RATE, i as i64)).windows);
        }
        let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
        assert!(whole.iter().map(content).eq(windows.iter().map(content)), "windows differ");
    }

    #[test]
    fn a_resampled_run_is_flushed_into_the_store_and_resumes_without_a_gap() {
        let spec = config(1.0).build(32_000, 64_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut first = Segmenter::new(spec.clone()).with_store(Store::open(dir.path(), 0, 1).unwrap());
        for i in 0..2 {
            push(&mut first, chunk("s", 48_000 * i, vec![0.25; 48_000], 48_000, i));
        }
        first.park_all();
        let mut second = Segmenter::new(spec).with_store(Store::open(dir.path(), 0, 1).unwrap());
        let mut windows = Vec::new();
        for i in 2..4 {
            windows.extend(push(&mut second, chunk("s", 48_000 * i, vec![0.25; 48_000], 48_000, i)).windows);
        }
        // The flush completed window 0 (the resampler had held its last milliseconds back); it is cut on the first
        // push after the sensor comes back, and the run goes on from there.
        assert_eq!(windows.iter().map(|w| w.key.start).collect::<Vec<_>>(), vec![0, 32_000]);
        assert!(windows.iter().all(|w| w.coverage == 1.0 && !w.resumed));
    }

    #[test]
    fn contiguity_follows_the_sample_clock() {
        // Each chunk's captured_at is 4 ms late against the previous one's end: within the 5 ms tolerance each time,
        // but the drift adds up and eventually starts a new run instead of silently shifting the audio.
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        let mut rejected = 0;
        for i in 0..4i64 {
            let pushed = push(&mut segmenter, chunk("s", i * 1_004, vec![1.0; 1_000], RATE, i));
            rejected += pushed.rejected.len();
        }
        assert_eq!(rejected, 0);
        // Chunk 2 is 8 ms behind the sample clock: a new run with an 8 ms gap; chunk 3 continues it.
        assert_eq!(segmenter.write_pos("default", "s"), Some(4_008));
    }

    #[test]
    fn other_rates_are_resampled_onto_the_same_grid() {
        let spec = config(1.0).build(32_000, 64_000).unwrap();
        let mut segmenter = Segmenter::new(spec);
        let mut windows = Vec::new();
        for (i, part) in vec![0.25f32; 48_000 * 4].chunks(48_000).enumerate() {
            windows
                .extend(push(&mut segmenter, chunk("s", 48_000 * i as i64, part.to_vec(), 48_000, i as i64)).windows);
        }
        assert_eq!(windows.iter().map(|w| w.key.start).collect::<Vec<_>>(), vec![0, 32_000]);
        let middle = &windows[1].samples[16_000..48_000];
        assert!(middle.iter().all(|x| (x - 0.25).abs() < 1e-3));
    }

    /// `signal` at RATE from sample 0 in chunks of `size`, as `(partition, chunk)`: chunks alternate between
    /// partitions 0 and 1, each partition in its own offset order.
    fn alternating(signal: &[f32], size: usize) -> Vec<AudioChunk> {
        signal
            .chunks(size)
            .enumerate()
            .map(|(i, part)| {
                let mut c = chunk("s", (i * size) as i64, part.to_vec(), RATE, (i / 2) as i64);
                c.origin.partition = (i % 2) as i32;
                c
            })
            .collect()
    }

    fn progress(partition: i32, read_ms: Option<i64>, caught_up: bool) -> PartitionProgress {
        PartitionProgress { partition, read_ms, caught_up }
    }

    #[test]
    fn r13_chunks_from_several_partitions_are_placed_in_captured_at_order_however_fast_each_is_read() {
        let in_order_spec = spec(1.0, 2_000);
        let spec = WindowsConfig { lateness_ms: 1_000, ..config(1.0) }.build(RATE, 2_000).unwrap();
        let signal: Vec<f32> = (0..12_000).map(|i| (i as f32 * 0.01).sin()).collect();
        let in_order = segment_in_chunks(&in_order_spec, &signal, 0, &[700]);
        // Sent one after the other (a millisecond apart), every other one to the other partition.
        let chunks: Vec<AudioChunk> = alternating(&signal, 700)
            .into_iter()
            .enumerate()
            .map(|(i, c)| AudioChunk { sent_ms: 10_000 + i as i64, ..c })
            .collect();
        let last_sent =
            |partition: i32| chunks.iter().filter(|c| c.origin.partition == partition).map(|c| c.sent_ms).max();
        let (even, odd): (Vec<_>, Vec<_>) = chunks.iter().cloned().partition(|c| c.origin.partition == 0);
        let mut segmenter = Segmenter::new(spec.clone()).with_partitions(2);
        let mut out = Pushed::default();
        // Partition 0 is read to its end long before partition 1 (a worker busy with something else): every chunk
        // waits for the gap before it, whatever the clock says.
        for (i, c) in even.into_iter().enumerate() {
            segmenter.push(c, 100 + i as u64, 100 + i as u64, &mut out);
        }
        segmenter.progress(progress(0, last_sent(0), true));
        segmenter.release(Some(1_000_000), 1_000_000, &mut out);
        assert!(out.windows.is_empty(), "partition 1 has not been read: audio sent before may be there");
        assert_eq!(segmenter.oldest_held(), Some(100));
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
        for (i, c) in odd.into_iter().enumerate() {
            segmenter.push(c, 2_000_000 + i as u64, 2_000_000 + i as u64, &mut out);
        }
        segmenter.progress(progress(1, last_sent(1), false));
        segmenter.release(Some(2_000_100), 2_000_100, &mut out);
        assert!(out.rejected.is_empty() && out.duplicates.is_empty(), "{:?}", out.rejected);
        let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
        assert!(in_order.iter().map(content).eq(out.windows.iter().map(content)), "windows differ from in order");
        assert_eq!(segmenter.oldest_held(), None);

        // With every partition read to its end, a chunk after a gap waits `lateness_ms` from when it was sent for
        // the audio before it; audio of the gap arriving later is out of order.
        let mut segmenter = Segmenter::new(spec).with_partitions(2);
        segmenter.progress(progress(0, None, true));
        segmenter.progress(progress(1, None, true));
        let mut out = Pushed::default();
        segmenter.push(AudioChunk { sent_ms: 0, ..chunk("s", 0, vec![1.0; 1_000], RATE, 0) }, 0, 0, &mut out);
        segmenter.push(AudioChunk { sent_ms: 10, ..chunk("s", 2_000, vec![1.0; 3_000], RATE, 2) }, 10, 10, &mut out);
        segmenter.release(Some(1_009), 1_009, &mut out);
        assert!(out.windows.is_empty(), "the first chunk waited its lateness, the second not yet");
        segmenter.release(Some(1_010), 1_010, &mut out);
        // (The window at 1 s holds no audio of the first run and starts before the second's grid point: skipped.)
        assert_eq!(
            out.windows.iter().map(|w| (w.key.start, w.coverage)).collect::<Vec<_>>(),
            [(0, 0.5), (2_000, 1.0), (3_000, 1.0)]
        );
        segmenter.push(chunk("s", 1_000, vec![1.0; 1_000], RATE, 1), 2_000, 2_000, &mut out);
        assert_eq!(out.rejected.iter().map(|l| l.cause).collect::<Vec<_>>(), ["out_of_order"]);
    }

    #[test]
    fn r13_a_clock_that_jumps_back_far_starts_a_new_timeline_and_a_short_jump_is_out_of_order() {
        let spec = WindowsConfig { max_jump_back_seconds: 100, ..config(1.0) }.build(RATE, 2_000).unwrap();
        let mut segmenter = Segmenter::new(spec);
        // The first chunk's clock was far ahead (a poisoned timestamp, a clock set wrong, then corrected).
        let future = push(&mut segmenter, chunk("s", 1_000_000, vec![1.0; 3_500], RATE, 0));
        assert_eq!(starts(&future), [1_000_000, 1_001_000]);
        let back = push(&mut segmenter, chunk("s", 0, vec![1.0; 3_500], RATE, 1));
        assert!(back.rejected.is_empty());
        // The old timeline's tail is cut padded, and the new one begins at the chunk.
        assert_eq!(starts(&back), [1_002_000, 1_003_000, 0, 1_000]);
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 1)]));
        // 50 s back is within the bound: out of order.
        push(&mut segmenter, chunk("s", 60_000, vec![1.0; 1_000], RATE, 2));
        let late = push(&mut segmenter, chunk("s", 10_000, vec![1.0; 1_000], RATE, 3));
        assert_eq!(late.rejected.iter().map(|l| l.cause).collect::<Vec<_>>(), ["out_of_order"]);
    }

    #[test]
    fn r13_a_quiet_sensor_moves_to_the_store_and_its_file_goes_once_its_audio_is_durable() {
        let spec = WindowsConfig { park_after_seconds: 2, ..config(1.0) }.build(RATE, 2_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut segmenter = Segmenter::new(spec.clone()).with_store(Store::open(dir.path(), 0, 1).unwrap());
        let mut out = Pushed::default();
        segmenter.push(chunk("quiet", 0, vec![1.0; 2_500], RATE, 0), 1_000, 1_000, &mut out);
        segmenter.push(chunk("busy", 0, vec![1.0; 2_500], RATE, 1), 1_000, 1_000, &mut out);
        assert_eq!(starts(&out), [0, 0]);
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
        segmenter.push(chunk("busy", 2_500, vec![1.0; 1_000], RATE, 2), 2_500, 2_500, &mut out);
        assert_eq!(segmenter.park_quiet(2_999), 0);
        assert_eq!(segmenter.park_quiet(3_000), 1, "quiet for 2 s");
        // Only the busy sensor's chunks hold their partition back now.
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 1)]));
        assert_eq!((segmenter.active(), segmenter.stored()), (1, 1));

        // A new job (the same store) brings the quiet sensor back with its next chunk.
        let mut segmenter = Segmenter::new(spec).with_store(Store::open(dir.path(), 0, 1).unwrap());
        let mut out = Pushed::default();
        segmenter.push(chunk("quiet", 2_500, vec![2.0; 2_000], RATE, 9), 10_000, 10_000, &mut out);
        let windows: Vec<(i64, f32)> = out.windows.iter().map(|w| (w.key.start, w.coverage)).collect();
        assert_eq!(windows, [(1_000, 1.0), (2_000, 1.0)]);
        assert_eq!(out.windows[0].samples[1_499..1_501], [1.0, 2.0], "the stored audio and the new audio, joined");
        // The stored chunk is used up at 10 000; its file goes once that time is durable.
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 9)]));
        segmenter.remove_obsolete(|t| *t >= 10_000);
        assert_eq!(segmenter.stored(), 1);
        segmenter.remove_obsolete(|t| *t > 10_000);
        assert_eq!(segmenter.stored(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn r13_audio_held_back_beyond_its_limit_is_placed_at_once() {
        let spec = WindowsConfig { lateness_ms: 60_000, ..config(1.0) }.build(RATE, 2_000).unwrap();
        // 3 000 samples may be held: the second sensor's first chunk makes the first one's wait end.
        let mut segmenter = Segmenter::new(spec).with_held_limit(3_000 * 4);
        let mut out = Pushed::default();
        segmenter.push(chunk("a", 0, vec![1.0; 2_500], RATE, 0), 0, 0, &mut out);
        assert!(out.windows.is_empty());
        segmenter.push(chunk("b", 0, vec![1.0; 2_500], RATE, 1), 1, 1, &mut out);
        assert!(out.windows.is_empty());
        segmenter.fit_held_limit(1, &mut out);
        assert_eq!(out.windows.iter().map(|w| w.key.sensor.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(segmenter.oldest_held(), Some(1));
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
    }
}
