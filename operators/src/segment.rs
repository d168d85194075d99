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
//! part; one that lies wholly before it is out of order. The last two leave dead letters.
//!
//! Every chunk whose samples a future window may still need stays *pending*. The timely operator processes chunks in
//! time order, sends each window at the time of the chunk that completed it (never earlier than any chunk it holds),
//! and reports, whenever it changes, the offset of the oldest pending chunk per partition. Offsets are committed up
//! to those reports and no further, so a restart re-reads every chunk a window not yet cut still needs.

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;

use crate::FieldError;
use crate::metrics::Metrics;
use crate::record::{
    AudioChunk, DeadLetter, Nanos, Origin, PendingReport, Priority, SegmentKey, Window, nanos_to_samples, rfc3339,
    route, samples_to_nanos,
};
use crate::resample::StreamResampler;

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
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig { hop_seconds: 5.0, gap_tolerance_ms: 100, min_coverage_seconds: 1.0 }
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
        Ok(WindowSpec {
            sample_rate,
            window,
            hop,
            gap_tolerance: self.gap_tolerance_ms as Nanos * 1_000_000,
            min_coverage: min_coverage as u32,
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
}

impl WindowSpec {
    fn grid_floor(&self, pos: i64) -> i64 {
        pos.div_euclid(i64::from(self.hop)) * i64::from(self.hop)
    }
}

/// Cuts a standalone clip (a query, a file) into windows starting every hop from its first sample; the last window
/// is zero-padded and kept when it holds at least `min_coverage` samples. A clip shorter than a window gives one
/// padded window. Returns each window's offset in samples with its samples.
pub fn clip_windows(spec: &WindowSpec, samples: &[f32]) -> Vec<(usize, Vec<f32>)> {
    let (window, hop) = (spec.window as usize, spec.hop as usize);
    let mut out = Vec::new();
    let mut start = 0;
    while start < samples.len() {
        let available = samples.len() - start;
        if !out.is_empty() && available < spec.min_coverage as usize {
            break;
        }
        let mut w = samples[start..start + available.min(window)].to_vec();
        w.resize(window, 0.0);
        out.push((start, w));
        if available <= window {
            break;
        }
        start += hop;
    }
    out
}

/// What segmenting one chunk produced.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Windows cut.
    pub windows: Vec<Window>,
    /// Audio that could not be placed, with the reason.
    pub rejected: Vec<DeadLetter>,
    /// The chunk lay wholly within audio already received — a repeated delivery — and was dropped.
    pub duplicate: bool,
}

/// Reassembles chunks per sensor and cuts windows; dataflow-agnostic.
pub struct Segmenter {
    spec: WindowSpec,
    timelines: HashMap<(String, String), Timeline>,
}

/// Spans of received audio remembered per sensor to recognise repeated deliveries.
const RECEIVED_SPANS: usize = 16;

#[derive(Serialize, Deserialize)]
struct Run {
    rate_in: u32,
    /// Present when `rate_in` differs from the model's rate (a saved run has none: see [`Segmenter::save`]).
    #[serde(skip)]
    resampler: Option<StreamResampler>,
    /// Where the run's first kept sample lies on the model clock.
    start: i64,
    /// `captured_at` of the run's first kept sample.
    start_time: Nanos,
    /// Input samples kept so far.
    input_samples: u64,
}

impl Run {
    /// Where the next chunk of this run should start, by the sample clock.
    fn expected_next(&self) -> Nanos {
        self.start_time + (u128::from(self.input_samples) * 1_000_000_000 / u128::from(self.rate_in)) as Nanos
    }
}

#[derive(Serialize, Deserialize)]
struct PendingChunk {
    /// Model-clock position just past the chunk's last sample.
    end: i64,
    origin: Origin,
}

#[derive(Serialize, Deserialize)]
struct Timeline {
    run: Option<Run>,
    /// Samples from `buf_start` to `write_pos`.
    buf: VecDeque<f32>,
    buf_start: i64,
    write_pos: i64,
    /// Recorded (non-filler) stretches at or after `buf_start`, sorted and disjoint.
    recorded: VecDeque<(i64, i64)>,
    /// The latest stretches of audio received, merged, oldest first.
    received: VecDeque<(i64, i64)>,
    /// The first sample received, on the model clock.
    first_received: i64,
    next_window: i64,
    /// Windows starting in `[from, to)` hold no audio of an earlier run and start before the grid point of a later
    /// run's first sample: they are skipped when reached.
    skip: Option<(i64, i64)>,
    chunks: VecDeque<PendingChunk>,
}

impl Segmenter {
    /// A segmenter cutting windows of `spec`.
    pub fn new(spec: WindowSpec) -> Self {
        Segmenter { spec, timelines: HashMap::new() }
    }

    /// Adds one chunk to its sensor's timeline and cuts every window it completes.
    pub fn push(&mut self, chunk: AudioChunk) -> Pushed {
        let spec = &self.spec;
        let timeline = self
            .timelines
            .entry((chunk.space.clone(), chunk.sensor.clone()))
            .or_insert_with(|| Timeline::starting_at(spec, nanos_to_samples(chunk.captured_at, spec.sample_rate)));
        let (space, sensor, priority) = (chunk.space.clone(), chunk.sensor.clone(), chunk.priority);
        let mut pushed = Pushed::default();
        timeline.push(spec, chunk, &mut pushed);
        for window in &mut pushed.windows {
            window.key.space.clone_from(&space);
            window.key.sensor.clone_from(&sensor);
            window.priority = priority;
        }
        pushed
    }

    /// The oldest chunk still needed per partition of the audio topic: where a restart must resume to lose nothing.
    pub fn pending_offsets(&self) -> BTreeMap<i32, i64> {
        let mut oldest = BTreeMap::new();
        for chunk in self.timelines.values().flat_map(|t| &t.chunks) {
            let offset = oldest.entry(chunk.origin.partition).or_insert(chunk.origin.offset);
            *offset = (*offset).min(chunk.origin.offset);
        }
        oldest
    }

    /// Number of chunks held.
    pub fn pending_chunks(&self) -> usize {
        self.timelines.values().map(|t| t.chunks.len()).sum()
    }

    /// Takes every timeline out, for a restart to continue where this job stopped. A resampler cannot be saved, so
    /// each resampled run is flushed first: its tail joins the buffer and the next chunk starts a run right after it.
    pub fn save(&mut self) -> Savepoint {
        let mut timelines = Vec::with_capacity(self.timelines.len());
        for (key, mut timeline) in self.timelines.drain() {
            if timeline.run.as_ref().is_some_and(|run| run.resampler.is_some()) {
                let mut run = timeline.run.take().expect("checked");
                let mut tail = Vec::new();
                if run.resampler.as_mut().expect("checked").finish(&mut tail).is_ok() {
                    timeline.append(&tail, true);
                }
            }
            timelines.push((key, timeline));
        }
        Savepoint { version: SAVEPOINT_VERSION, timelines }
    }

    /// Continues the timelines of a savepoint.
    pub fn restore(&mut self, savepoint: Savepoint) {
        self.timelines.extend(savepoint.timelines);
    }
}

const SAVEPOINT_VERSION: u32 = 1;

/// Per-sensor reassembly state saved by a job that stopped cleanly, so that the next one re-reads nothing.
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

    /// The oldest chunk each partition's saved timelines still need: where reading must resume should the savepoint
    /// be lost.
    pub fn pending_offsets(&self) -> BTreeMap<i32, i64> {
        let mut oldest = BTreeMap::new();
        for chunk in self.timelines.iter().flat_map(|(_, t)| &t.chunks) {
            let offset = oldest.entry(chunk.origin.partition).or_insert(chunk.origin.offset);
            *offset = (*offset).min(chunk.origin.offset);
        }
        oldest
    }

    /// Moves in another savepoint's timelines.
    pub fn merge(&mut self, other: Savepoint) {
        self.timelines.extend(other.timelines);
    }

    /// Takes out the timelines of the sensors `owns(space, sensor)` says are wanted.
    pub fn take(&mut self, owns: impl Fn(&str, &str) -> bool) -> Savepoint {
        let (taken, kept) =
            std::mem::take(&mut self.timelines).into_iter().partition(|((space, sensor), _)| owns(space, sensor));
        self.timelines = kept;
        Savepoint { version: SAVEPOINT_VERSION, timelines: taken }
    }

    /// Writes it to `path` durably (temporary file, sync, rename, directory sync).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = bincode::serialize(self).map_err(std::io::Error::other)?;
        crate::durable::replace(path, &bytes)
    }

    /// Reads one written by [`Savepoint::write`].
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
}

fn rejection(chunk: &AudioChunk, cause: &'static str, reason: String) -> DeadLetter {
    DeadLetter {
        origin: Some(chunk.origin.clone()),
        key: Some(chunk.sensor.as_bytes().to_vec()),
        headers: Vec::new(),
        payload: Vec::new(),
        reason,
        cause,
    }
}

impl Timeline {
    /// A timeline whose first sample is at `pos`: its first window starts at the grid point at or before `pos`.
    fn starting_at(spec: &WindowSpec, pos: i64) -> Self {
        let start = spec.grid_floor(pos);
        let mut timeline = Timeline {
            run: None,
            buf: VecDeque::new(),
            buf_start: start,
            write_pos: start,
            recorded: VecDeque::new(),
            received: VecDeque::new(),
            first_received: pos,
            next_window: start,
            skip: None,
            chunks: VecDeque::new(),
        };
        timeline.append(&vec![0.0; (pos - start) as usize], false);
        timeline
    }

    fn push(&mut self, spec: &WindowSpec, chunk: AudioChunk, out: &mut Pushed) {
        let rate = chunk.sample_rate;
        let duration = (chunk.samples.len() as u128 * 1_000_000_000 / u128::from(rate)) as Nanos;
        // Jitter up to the tolerance is absorbed, but never half a chunk: a repeated short chunk is not a successor.
        let tolerance = spec.gap_tolerance.min(duration / 2);
        let continues = self
            .run
            .as_ref()
            .is_some_and(|run| run.rate_in == rate && (chunk.captured_at - run.expected_next()).abs() <= tolerance);
        let mut samples = chunk.samples.as_slice();
        let mut start_time = chunk.captured_at;
        if !continues {
            let tolerance = nanos_to_samples(tolerance, spec.sample_rate);
            let mut pos = nanos_to_samples(chunk.captured_at, spec.sample_rate);
            let end = pos + (samples.len() as u128 * u128::from(spec.sample_rate) / u128::from(rate)) as i64;
            if end <= self.write_pos + tolerance {
                if self.received.iter().any(|&(a, b)| a - tolerance <= pos && end <= b + tolerance) {
                    out.duplicate = true;
                } else {
                    let reason = format!(
                        "chunk of sensor '{}' ({} to {}) lies before audio already received up to {} and outside \
                         every stretch received: out of order, or its captured_at is wrong; dropped",
                        chunk.sensor,
                        rfc3339(chunk.captured_at),
                        rfc3339(chunk.captured_at + duration),
                        rfc3339(samples_to_nanos(self.write_pos, spec.sample_rate)),
                    );
                    out.rejected.push(rejection(&chunk, "out_of_order", reason));
                }
                return;
            }
            self.end_run(spec, out);
            if (pos - self.write_pos).abs() <= tolerance {
                pos = self.write_pos;
            }
            if pos < self.write_pos {
                // Audio for the start of this chunk was already received: keep the first copy, drop the overlap.
                let overlap = self.write_pos - pos;
                let dropped = ((overlap as u128 * u128::from(rate)).div_ceil(u128::from(spec.sample_rate)) as usize)
                    .min(samples.len());
                let reason = format!(
                    "chunk of sensor '{}' starts {:.3} s before the end of audio already received; the first \
                     {:.3} s of it were dropped",
                    chunk.sensor,
                    overlap as f64 / f64::from(spec.sample_rate),
                    dropped as f64 / f64::from(rate),
                );
                out.rejected.push(rejection(&chunk, "overlap", reason));
                samples = &samples[dropped..];
                start_time += (dropped as u128 * 1_000_000_000 / u128::from(rate)) as Nanos;
                pos = self.write_pos;
            }
            if let Err(reason) = self.start_run(spec, pos, start_time, rate, out) {
                out.rejected.push(rejection(&chunk, "resample", reason));
                return;
            }
        }
        if samples.is_empty() {
            return;
        }
        let run = self.run.as_mut().expect("a run is under way");
        let resampled = match run.resampler.as_mut() {
            Some(resampler) => {
                let mut resampled = Vec::with_capacity(samples.len() * spec.sample_rate as usize / rate as usize + 1);
                if let Err(error) = resampler.push(samples, &mut resampled) {
                    // The resampler's state is unknown after a failure: the run ends here.
                    self.run = None;
                    out.rejected.push(rejection(&chunk, "resample", error.to_string()));
                    return;
                }
                Some(resampled)
            }
            None => None,
        };
        run.input_samples += samples.len() as u64;
        // Where the chunk's last sample lands, even while the resampler still holds it back.
        let end = run.start
            + (u128::from(run.input_samples) * u128::from(spec.sample_rate)).div_ceil(u128::from(run.rate_in)) as i64;
        self.chunks.push_back(PendingChunk { end, origin: chunk.origin.clone() });
        self.append(resampled.as_deref().unwrap_or(samples), true);
        self.cut(spec, out);
    }

    fn start_run(
        &mut self,
        spec: &WindowSpec,
        pos: i64,
        start_time: Nanos,
        rate_in: u32,
        out: &mut Pushed,
    ) -> Result<(), String> {
        let resampler = if rate_in == spec.sample_rate {
            None
        } else {
            Some(StreamResampler::new(rate_in, spec.sample_rate).map_err(|e| e.to_string())?)
        };
        let previous_end = self.write_pos;
        if pos > previous_end {
            // A gap: known silence, materialised only as far as a window holding earlier audio can reach.
            let fill = (pos - previous_end).min(i64::from(spec.window));
            self.append(&vec![0.0; fill as usize], false);
            let run_grid = spec.grid_floor(pos);
            if run_grid > previous_end {
                self.skip = Some((previous_end, run_grid));
            }
        }
        self.run = Some(Run { rate_in, resampler, start: pos, start_time, input_samples: 0 });
        if pos > self.write_pos {
            // The gap is longer than a window: the windows holding earlier audio are all known now, and the timeline
            // restarts at the new run's grid point.
            self.cut(spec, out);
            self.apply_skip();
            let start = spec.grid_floor(pos).max(self.next_window);
            debug_assert!(start <= pos, "every window before the gap was cut");
            self.buf.clear();
            self.recorded.clear();
            self.buf_start = start;
            self.write_pos = start;
            self.next_window = start;
            self.release_before_next_window();
            self.append(&vec![0.0; (pos - start) as usize], false);
        }
        Ok(())
    }

    /// Flushes the current run's resampler, so its last samples take their place before a new run starts.
    fn end_run(&mut self, spec: &WindowSpec, out: &mut Pushed) {
        let Some(mut run) = self.run.take() else { return };
        if let Some(resampler) = run.resampler.as_mut() {
            let mut tail = Vec::new();
            // A failure here loses at most the resampler's few milliseconds of latency; the run ends either way.
            if resampler.finish(&mut tail).is_ok() {
                self.append(&tail, true);
            }
        }
        // Windows lying wholly before the gap can be cut now; those reaching into it wait for the gap to be filled.
        self.cut(spec, out);
    }

    fn append(&mut self, samples: &[f32], recorded: bool) {
        if samples.is_empty() {
            return;
        }
        let from = self.write_pos;
        let to = from + samples.len() as i64;
        self.buf.extend(samples);
        if recorded {
            for spans in [&mut self.recorded, &mut self.received] {
                match spans.back_mut() {
                    Some(last) if last.1 == from => last.1 = to,
                    _ => spans.push_back((from, to)),
                }
            }
            if self.received.len() > RECEIVED_SPANS {
                self.received.pop_front();
            }
        }
        self.write_pos = to;
    }

    fn apply_skip(&mut self) {
        if let Some((from, to)) = self.skip
            && self.next_window >= from
        {
            self.next_window = self.next_window.max(to);
            self.skip = None;
        }
    }

    /// Cuts every window whose samples are all known.
    fn cut(&mut self, spec: &WindowSpec, out: &mut Pushed) {
        let window = i64::from(spec.window);
        loop {
            self.apply_skip();
            let start = self.next_window;
            if start + window > self.write_pos {
                break;
            }
            let covered = self.recorded_in(start, start + window);
            if covered >= i64::from(spec.min_coverage)
                && let Some(first) = self.chunks.iter().find(|c| c.end > start).or(self.chunks.front())
            {
                let offset = (start - self.buf_start) as usize;
                out.windows.push(Window {
                    key: SegmentKey {
                        space: String::new(),
                        sensor: String::new(),
                        start,
                        sample_rate: spec.sample_rate,
                        len: spec.window,
                    },
                    samples: self.buf.range(offset..offset + spec.window as usize).copied().collect(),
                    coverage: covered as f32 / window as f32,
                    origin: first.origin.clone(),
                    resumed: start < self.first_received,
                    priority: Priority::Normal,
                });
            }
            self.next_window += i64::from(spec.hop);
            self.forget_before(self.next_window.min(self.write_pos));
        }
    }

    fn recorded_in(&self, from: i64, to: i64) -> i64 {
        self.recorded.iter().map(|&(a, b)| (b.min(to) - a.max(from)).max(0)).sum()
    }

    /// Drops samples before `pos` and the chunks no future window needs.
    fn forget_before(&mut self, pos: i64) {
        if pos > self.buf_start {
            let n = ((pos - self.buf_start) as usize).min(self.buf.len());
            self.buf.drain(..n);
            self.buf_start = pos;
        }
        while let Some(first) = self.recorded.front_mut() {
            if first.1 <= pos {
                self.recorded.pop_front();
            } else {
                first.0 = first.0.max(pos);
                break;
            }
        }
        self.release_before_next_window();
    }

    fn release_before_next_window(&mut self) {
        while self.chunks.front().is_some_and(|c| c.end <= self.next_window) {
            self.chunks.pop_front();
        }
    }
}

/// Cuts a stream of audio chunks into model windows; see the module documentation.
pub trait Segment<'scope> {
    /// Returns the windows, the dead letters of audio that could not be placed, and the pending reports of every
    /// worker (broadcast: each worker receives them all).
    ///
    /// # Examples
    /// ```
    /// use chorus_operators::metrics::Metrics;
    /// use chorus_operators::record::{AudioChunk, Origin, Priority};
    /// use chorus_operators::segment::{Segment, WindowsConfig};
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::{Map, ToStream};
    /// use timely::dataflow::operators::Capture;
    ///
    /// let spec = WindowsConfig { hop_seconds: 1.0, ..Default::default() }.build(1_000, 2_000).unwrap();
    /// let (starts, pending) = timely::example(move |scope| {
    ///     let chunk = AudioChunk {
    ///         space: "default".into(), sensor: "s1".into(), captured_at: 0, priority: Priority::Normal,
    ///         sample_rate: 1_000, samples: vec![0.1; 5_000],
    ///         origin: Origin { topic: "audio".into(), partition: 3, offset: 7 },
    ///     };
    ///     let (windows, _dead_letters, reports) =
    ///         vec![chunk].to_stream(scope).segment(spec, Default::default(), None, Metrics::unregistered());
    ///     (windows.map(|w| w.key.start).capture(), reports.map(|r| r.pending).capture())
    /// });
    /// let starts: Vec<i64> = starts.extract().into_iter().flat_map(|(_, s)| s).collect();
    /// assert_eq!(starts, vec![0, 1_000, 2_000, 3_000]); // the window at 4 s waits for audio past 6 s
    /// // ... so the chunk holding it stays pending: offset 7 of partition 3 must not be committed yet, and the input's
    /// // end (with no savepoint to write) does not change that.
    /// assert_eq!(pending.extract(), vec![(0, vec![vec![(3, 7)], vec![(3, 7)]])]);
    /// ```
    ///
    /// The segmenter starts from `restored`; when the input ends it saves its timelines to `savepoint` (if given)
    /// and says so in its last report.
    fn segment(
        self,
        spec: WindowSpec,
        restored: Savepoint,
        savepoint: Option<PathBuf>,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Window>, StreamVec<'scope, u64, DeadLetter>, StreamVec<'scope, u64, PendingReport>);
}

impl<'scope> Segment<'scope> for StreamVec<'scope, u64, AudioChunk> {
    fn segment(
        self,
        spec: WindowSpec,
        restored: Savepoint,
        savepoint: Option<PathBuf>,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Window>, StreamVec<'scope, u64, DeadLetter>, StreamVec<'scope, u64, PendingReport>)
    {
        let scope = self.scope();
        let worker = scope.index();
        let mut builder = OperatorBuilder::new("Segment".to_owned(), scope);
        let mut input = builder.new_input(self, ExchangePact::new(|c: &AudioChunk| route(&c.space) ^ route(&c.sensor)));
        let (windows_out, windows) = builder.new_output::<Vec<Window>>();
        let (dead_out, dead) = builder.new_output::<Vec<DeadLetter>>();
        let (reports_out, reports) = builder.new_output::<Vec<PendingReport>>();
        let mut windows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Window>>>::from(windows_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
        let mut reports_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<PendingReport>>>::from(reports_out);

        builder.build(move |mut initial| {
            // Follows the input frontier, to send the last report (after the savepoint) once the input has ended.
            let mut report_capability = initial.pop();
            drop(initial);
            let mut segmenter = Segmenter::new(spec);
            segmenter.restore(restored);
            // Chunks wait here until no earlier chunk can arrive: each sensor's audio is placed in time order, and
            // a window goes out at the time of the chunk that completed it, never before a chunk it holds.
            let mut stash: BTreeMap<u64, ([Capability<u64>; 3], Vec<AudioChunk>)> = BTreeMap::new();
            let mut reported = BTreeMap::new();
            move |frontiers| {
                input.for_each(|capability, chunks| {
                    let time = *capability.least().expect("chunks travel with a time");
                    stash
                        .entry(time)
                        .or_insert_with(|| ([0, 1, 2].map(|port| capability.delayed(&time, port)), Vec::new()))
                        .1
                        .append(chunks);
                });
                let mut windows_session = windows_out.activate();
                let mut dead_session = dead_out.activate();
                let mut reports_session = reports_out.activate();
                while let Some(entry) = stash.first_entry() {
                    if frontiers[0].less_equal(entry.key()) {
                        break;
                    }
                    let (capabilities, chunks) = entry.remove();
                    let started = std::time::Instant::now();
                    let (received, mut cut, mut failed) = (chunks.len(), 0, Vec::new());
                    for chunk in chunks {
                        let space = chunk.space.clone();
                        let pushed = segmenter.push(chunk);
                        cut += pushed.windows.len();
                        if pushed.duplicate {
                            metrics.duplicate_chunks.with_label_values(&[space.as_str()]).inc();
                        }
                        windows_session.session(&capabilities[0]).give_iterator(pushed.windows.into_iter());
                        failed.extend(pushed.rejected);
                    }
                    metrics.count("segment", received, cut);
                    metrics.time("segment", started);
                    for letter in &failed {
                        metrics.reject("segment", letter.cause, 1);
                    }
                    dead_session.session(&capabilities[1]).give_iterator(failed.into_iter());
                                        let pending = segmenter.pending_offsets();
                    if pending != reported {
                        let report = PendingReport {
                            worker,
                            pending: pending.iter().map(|(p, o)| (*p, *o)).collect(),
                            saved: false,
                        };
                        reports_session.session(&capabilities[2]).give(report);
                        reported = pending;
                    }
                }
                match frontiers[0].frontier().first() {
                    Some(time) => {
                        if let Some(capability) = report_capability.as_mut()
                            && capability.time() < time
                        {
                            capability.downgrade(time);
                        }
                    }
                    None => {
                        if let Some(capability) = report_capability.take() {
                            let pending: Vec<(i32, i64)> = segmenter.pending_offsets().into_iter().collect();
                            let saved = savepoint.as_ref().is_some_and(|path| {
                                let saved = segmenter.save();
                                match saved.write(path) {
                                    Ok(()) => {
                                        tracing::info!(worker, sensors = saved.len(), path = %path.display(), "Savepoint written.");
                                        true
                                    }
                                    Err(error) => {
                                        tracing::error!(%error, path = %path.display(), "Savepoint not written; a restart re-reads the audio it would have held.");
                                        false
                                    }
                                }
                            });
                            reports_session.session(&capability).give(PendingReport { worker, pending, saved });
                        }
                    }
                }
            }
        });
        (windows, dead, reports.broadcast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 1_000;

    fn spec(hop: f64, window: u32) -> WindowSpec {
        WindowsConfig { hop_seconds: hop, gap_tolerance_ms: 5, min_coverage_seconds: 0.5 }.build(RATE, window).unwrap()
    }

    fn chunk(sensor: &str, at_sample: i64, samples: Vec<f32>, rate: u32, offset: i64) -> AudioChunk {
        AudioChunk {
            space: "default".into(),
            sensor: sensor.into(),
            captured_at: samples_to_nanos(at_sample, rate),
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
            let pushed = segmenter.push(chunk("s", start + at as i64, signal[at..end].to_vec(), RATE, offset));
            assert!(pushed.rejected.is_empty() && !pushed.duplicate);
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
            let pushed = segmenter.push(chunk("s", at, vec![1.0; n], RATE, offset));
            cut.extend(pushed.windows.iter().map(|w| (w.key.start, w.coverage)));
        }
        // The window [2000, 4000) holds the first run's tail and is cut as soon as the gap is known.
        assert_eq!(cut, vec![(0, 1.0), (1_000, 1.0), (2_000, 0.5), (23_000, 1.0), (24_000, 1.0), (25_000, 1.0)]);
    }

    #[test]
    fn overlapping_audio_keeps_its_new_part_and_leaves_a_dead_letter() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        segmenter.push(chunk("s", 0, vec![1.0; 3_000], RATE, 0));
        let pushed = segmenter.push(chunk("s", 2_000, vec![2.0; 2_000], RATE, 1));
        let letter = &pushed.rejected[0];
        assert_eq!(letter.cause, "overlap");
        assert!(letter.reason.contains("1.000 s"), "{}", letter.reason);
        // The kept second half continues the timeline at 3000.
        let pushed = segmenter.push(chunk("s", 4_000, vec![3.0; 1_000], RATE, 2));
        let w = pushed.windows.last().unwrap();
        assert_eq!(w.key.start, 3_000);
        assert_eq!(w.samples[..1_000], vec![2.0; 1_000][..]);
    }

    #[test]
    fn a_repeated_chunk_is_dropped_without_breaking_the_run() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        segmenter.push(chunk("s", 0, vec![1.0; 1_500], RATE, 0));
        let again = segmenter.push(chunk("s", 0, vec![1.0; 1_500], RATE, 1));
        assert!(again.duplicate && again.rejected.is_empty() && again.windows.is_empty());
        let next = segmenter.push(chunk("s", 1_500, vec![1.0; 1_500], RATE, 2));
        assert!(!next.duplicate);
        assert_eq!(starts(&next), vec![0, 1_000]);
        // A repeated chunk shorter than the tolerance is still a repeat, not a successor.
        let short = segmenter.push(chunk("s", 2_997, vec![1.0; 3], RATE, 3));
        assert!(short.duplicate);
    }

    #[test]
    fn a_first_chunk_shorter_than_the_tolerance_is_kept() {
        let spec = WindowsConfig { hop_seconds: 1.0, gap_tolerance_ms: 100, min_coverage_seconds: 0.001 }
            .build(RATE, 2_000)
            .unwrap();
        let mut segmenter = Segmenter::new(spec);
        let first = segmenter.push(chunk("s", 0, vec![1.0; 50], RATE, 0));
        assert!(!first.duplicate && first.rejected.is_empty());
        assert_eq!(segmenter.pending_chunks(), 1);
    }

    #[test]
    fn audio_from_before_everything_received_is_out_of_order() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        // A chunk stamped far in the future, then the sensor's real audio: reported, never silently dropped.
        segmenter.push(chunk("s", 1_000_000, vec![1.0; 1_000], RATE, 0));
        let late = segmenter.push(chunk("s", 0, vec![1.0; 1_000], RATE, 1));
        assert!(!late.duplicate);
        assert_eq!(late.rejected[0].cause, "out_of_order");
        assert!(late.rejected[0].reason.contains("1970-01-01T00:00:00Z"), "{}", late.rejected[0].reason);
    }

    #[test]
    fn chunks_stay_pending_until_no_window_needs_them() {
        let mut segmenter = Segmenter::new(spec(1.0, 2_000));
        let first = segmenter.push(chunk("s", 0, vec![1.0; 1_500], RATE, 0));
        assert!(first.windows.is_empty());
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
        let second = segmenter.push(chunk("s", 1_500, vec![1.0; 1_000], RATE, 1));
        // Window [0, 2000) is cut; chunk 0 is still needed by [1000, 3000).
        assert_eq!(starts(&second), vec![0]);
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 0)]));
        let third = segmenter.push(chunk("s", 2_500, vec![1.0; 1_500], RATE, 2));
        assert_eq!(starts(&third), vec![1_000, 2_000]);
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 2)]));
        // Another sensor's pending chunk on another partition is reported alongside.
        let mut other = chunk("t", 0, vec![1.0; 500], RATE, 9);
        other.origin.partition = 1;
        segmenter.push(other);
        assert_eq!(segmenter.pending_offsets(), BTreeMap::from([(0, 2), (1, 9)]));
    }

    #[test]
    fn a_restored_savepoint_continues_as_if_never_stopped() {
        let signal: Vec<f32> = (0..9_000).map(|i| (i as f32 * 0.003).sin()).collect();
        let spec = spec(1.0, 2_000);
        let whole = segment_in_chunks(&spec, &signal, 0, &[1_000]);
        let mut first = Segmenter::new(spec.clone());
        let mut windows = Vec::new();
        for (i, part) in signal.chunks(1_000).enumerate().take(4) {
            windows.extend(first.push(chunk("s", i as i64 * 1_000, part.to_vec(), RATE, i as i64)).windows);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("savepoint.bin");
        first.save().write(&path).unwrap();
        let saved = Savepoint::read(&path).unwrap();
        // Windows up to [2000, 4000) are cut; the next one needs chunk 3 and more.
        assert_eq!(saved.pending_offsets(), BTreeMap::from([(0, 3)]));
        let mut second = Segmenter::new(spec);
        second.restore(saved);
        for (i, part) in signal.chunks(1_000).enumerate().skip(4) {
            windows.extend(second.push(chunk("s", i as i64 * 1_000, part.to_vec(), RATE, i as i64)).windows);
        }
        let content = |w: &Window| (w.key.clone(), w.samples.clone(), w.coverage);
        assert!(whole.iter().map(content).eq(windows.iter().map(content)), "windows differ");
    }

    #[test]
    fn a_resampled_run_is_flushed_into_the_savepoint_and_resumes_without_a_gap() {
        let spec = WindowsConfig { hop_seconds: 1.0, gap_tolerance_ms: 5, min_coverage_seconds: 0.5 }
            .build(32_000, 64_000)
            .unwrap();
        let mut first = Segmenter::new(spec.clone());
        for i in 0..2 {
            first.push(chunk("s", 48_000 * i, vec![0.25; 48_000], 48_000, i));
        }
        let mut second = Segmenter::new(spec);
        second.restore(first.save());
        let mut windows = Vec::new();
        for i in 2..4 {
            windows.extend(second.push(chunk("s", 48_000 * i, vec![0.25; 48_000], 48_000, i)).windows);
        }
        // The flush completed window 0 (the resampler had held its last milliseconds back); it is cut on the first
        // push after the restore, and the run goes on from there.
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
            let pushed = segmenter.push(chunk("s", i * 1_004, vec![1.0; 1_000], RATE, i));
            rejected += pushed.rejected.len();
        }
        assert_eq!(rejected, 0);
        // Chunk 2 is 8 ms behind the sample clock: a new run with an 8 ms gap; chunk 3 continues it.
        assert_eq!(segmenter.timelines.values().next().unwrap().write_pos, 4_008);
    }

    #[test]
    fn other_rates_are_resampled_onto_the_same_grid() {
        let spec = WindowsConfig { hop_seconds: 1.0, gap_tolerance_ms: 5, min_coverage_seconds: 0.5 }
            .build(32_000, 64_000)
            .unwrap();
        let mut segmenter = Segmenter::new(spec);
        let mut windows = Vec::new();
        for (i, part) in vec![0.25f32; 48_000 * 4].chunks(48_000).enumerate() {
            windows.extend(segmenter.push(chunk("s", 48_000 * i as i64, part.to_vec(), 48_000, i as i64)).windows);
        }
        assert_eq!(windows.iter().map(|w| w.key.start).collect::<Vec<_>>(), vec![0, 32_000]);
        let middle = &windows[1].samples[16_000..48_000];
        assert!(middle.iter().all(|x| (x - 0.25).abs() < 1e-3));
    }
}
