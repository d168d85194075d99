//! Segmenting: per-sensor reassembly of audio chunks into a timeline at the model's rate, cut into windows.
//!
//! Each `(space, sensor)` has a timeline on the model's absolute sample clock (samples since the Unix epoch).
//! Chunks that follow each other within `gap_tolerance` extend one *run*; a larger jump in `captured_at`, or a change
//! of sample rate, starts a new run. Runs at another rate pass through a streaming resampler. Windows lie on a fixed
//! grid — multiples of the hop on that clock — so the same audio always yields the same windows and segment ids,
//! however it was chunked and wherever a replay starts. A window is cut once audio past its end has arrived; silence
//! in a gap is zeros, and windows with less than `min_coverage` of recorded audio are skipped.
//!
//! Every chunk whose samples a future window may still need stays *pending*. The timely operator holds a capability
//! for each pending chunk's time and sends a window at the time of its oldest chunk, so downstream frontiers — and
//! the Kafka offsets committed behind them — never pass audio that has not reached a durable sink.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::metrics::Metrics;
use crate::record::{AudioChunk, DeadLetter, Nanos, Origin, SegmentKey, Window, nanos_to_samples, route};
use crate::resample::StreamResampler;
use crate::{Error, FieldError};

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

    fn tolerance_samples(&self) -> i64 {
        nanos_to_samples(self.gap_tolerance, self.sample_rate)
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
#[derive(Debug)]
pub struct Pushed<T> {
    /// Windows cut, each with the token of the oldest chunk it contains.
    pub windows: Vec<(Window, T)>,
    /// Tokens of chunks no future window needs any more (one entry per chunk).
    pub released: Vec<T>,
    /// Audio that could not be placed (it overlapped audio already received).
    pub rejected: Option<DeadLetter>,
    /// The chunk lay wholly within audio already received — a repeated delivery — and was dropped.
    pub duplicate: bool,
}

/// Reassembles chunks per sensor and cuts windows; dataflow-agnostic. `T` tags each chunk (a timely time).
pub struct Segmenter<T> {
    spec: WindowSpec,
    timelines: HashMap<(String, String), Timeline<T>>,
}

struct Run {
    rate_in: u32,
    resampler: Option<StreamResampler>,
    /// Where the run started on the model clock.
    start: i64,
    /// Input samples so far.
    input_samples: u64,
    /// `captured_at` at which the next chunk of this run is expected.
    expected_next: Nanos,
}

struct PendingChunk<T> {
    /// Model-clock position just past the chunk's last sample.
    end: i64,
    origin: Origin,
    token: T,
}

struct Timeline<T> {
    run: Option<Run>,
    /// Samples from `buf_start` to `write_pos`.
    buf: VecDeque<f32>,
    buf_start: i64,
    write_pos: i64,
    /// Recorded (non-filler) stretches at or after `buf_start`, sorted and disjoint.
    recorded: VecDeque<(i64, i64)>,
    next_window: i64,
    /// Windows starting in `[from, to)` hold no audio of an earlier run and start before the grid point of a later
    /// run's first sample: they are skipped when reached.
    skip: Option<(i64, i64)>,
    chunks: VecDeque<PendingChunk<T>>,
}

impl<T: Clone> Segmenter<T> {
    /// A segmenter cutting windows of `spec`.
    pub fn new(spec: WindowSpec) -> Self {
        Segmenter { spec, timelines: HashMap::new() }
    }

    /// Adds one chunk to its sensor's timeline and cuts every window it completes.
    pub fn push(&mut self, chunk: AudioChunk, token: T) -> Result<Pushed<T>, Error> {
        let spec = &self.spec;
        let timeline = self
            .timelines
            .entry((chunk.space.clone(), chunk.sensor.clone()))
            .or_insert_with(|| Timeline::starting_at(spec, nanos_to_samples(chunk.captured_at, spec.sample_rate)));
        let mut pushed = Pushed { windows: Vec::new(), released: Vec::new(), rejected: None, duplicate: false };
        timeline.push(spec, chunk, token, &mut pushed)?;
        Ok(pushed)
    }

    /// The oldest chunk each timeline still needs: where a restart must resume reading to lose nothing.
    pub fn pending_origins(&self) -> impl Iterator<Item = &Origin> {
        self.timelines.values().filter_map(|t| t.chunks.front().map(|c| &c.origin))
    }

    /// Number of chunks held.
    pub fn pending_chunks(&self) -> usize {
        self.timelines.values().map(|t| t.chunks.len()).sum()
    }
}

impl<T: Clone> Timeline<T> {
    /// A timeline whose first sample is at `pos`: its first window starts at the grid point at or before `pos`.
    fn starting_at(spec: &WindowSpec, pos: i64) -> Self {
        let start = spec.grid_floor(pos);
        let mut timeline = Timeline {
            run: None,
            buf: VecDeque::new(),
            buf_start: start,
            write_pos: start,
            recorded: VecDeque::new(),
            next_window: start,
            skip: None,
            chunks: VecDeque::new(),
        };
        timeline.append(&vec![0.0; (pos - start) as usize], false);
        timeline
    }

    fn push(&mut self, spec: &WindowSpec, chunk: AudioChunk, token: T, out: &mut Pushed<T>) -> Result<(), Error> {
        let continues = self.run.as_ref().is_some_and(|run| {
            run.rate_in == chunk.sample_rate && (chunk.captured_at - run.expected_next).abs() <= spec.gap_tolerance
        });
        let mut samples = chunk.samples;
        if !continues {
            let end = nanos_to_samples(chunk.captured_at, spec.sample_rate)
                + (samples.len() as u128 * u128::from(spec.sample_rate) / u128::from(chunk.sample_rate)) as i64;
            if end <= self.write_pos + spec.tolerance_samples() {
                // Sent again (an at-least-once producer, a re-upload): the first copy is kept, the run goes on.
                out.duplicate = true;
                out.released.push(token);
                return Ok(());
            }
            self.end_run(spec, out)?;
            let mut pos = nanos_to_samples(chunk.captured_at, spec.sample_rate);
            if (pos - self.write_pos).abs() <= spec.tolerance_samples() {
                pos = self.write_pos;
            }
            if pos < self.write_pos {
                // Audio for this stretch was already received: keep the first copy, drop the overlap.
                let overlap = self.write_pos - pos;
                let drop_in = (overlap as u128 * u128::from(chunk.sample_rate))
                    .div_ceil(u128::from(spec.sample_rate))
                    .min(samples.len() as u128) as usize;
                out.rejected = Some(DeadLetter {
                    origin: Some(chunk.origin.clone()),
                    key: Some(chunk.sensor.as_bytes().to_vec()),
                    headers: Vec::new(),
                    payload: Vec::new(),
                    reason: format!(
                        "chunk of sensor '{}' starts {:.3} s before the end of audio already received; \
                         the first {:.3} s of it were dropped",
                        chunk.sensor,
                        overlap as f64 / f64::from(spec.sample_rate),
                        drop_in as f64 / f64::from(chunk.sample_rate),
                    ),
                    cause: "overlap",
                });
                samples.drain(..drop_in);
                pos = self.write_pos;
            }
            self.start_run(spec, pos, chunk.sample_rate, out)?;
        }
        if samples.is_empty() {
            // Nothing of this chunk is kept; the run still moves on to where the chunk ended.
            if let Some(run) = self.run.as_mut() {
                run.expected_next = run.expected_next.max(chunk.captured_at);
            }
            out.released.push(token);
            return Ok(());
        }
        let run = self.run.as_mut().expect("a run was started above");
        let resampled = match run.resampler.as_mut() {
            Some(resampler) => {
                let mut resampled =
                    Vec::with_capacity(samples.len() * spec.sample_rate as usize / run.rate_in as usize + 1);
                resampler.push(&samples, &mut resampled)?;
                Some(resampled)
            }
            None => None,
        };
        run.input_samples += samples.len() as u64;
        run.expected_next = chunk.captured_at
            + (i128::from(samples.len() as u64) * 1_000_000_000 / i128::from(chunk.sample_rate)) as Nanos;
        // Where the chunk's last sample lands, even while the resampler still holds it back.
        let end = run.start
            + (u128::from(run.input_samples) * u128::from(spec.sample_rate)).div_ceil(u128::from(run.rate_in)) as i64;
        self.chunks.push_back(PendingChunk { end, origin: chunk.origin, token });
        self.append(resampled.as_deref().unwrap_or(&samples), true);
        self.cut(spec, out);
        Ok(())
    }

    fn start_run(&mut self, spec: &WindowSpec, pos: i64, rate_in: u32, out: &mut Pushed<T>) -> Result<(), Error> {
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
        let resampler =
            if rate_in == spec.sample_rate { None } else { Some(StreamResampler::new(rate_in, spec.sample_rate)?) };
        self.run = Some(Run { rate_in, resampler, start: pos, input_samples: 0, expected_next: 0 });
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
            self.forget_before(start, out);
            self.append(&vec![0.0; (pos - start) as usize], false);
        }
        Ok(())
    }

    /// Flushes the current run's resampler, so its last samples take their place before a new run starts.
    fn end_run(&mut self, spec: &WindowSpec, out: &mut Pushed<T>) -> Result<(), Error> {
        let Some(mut run) = self.run.take() else { return Ok(()) };
        if let Some(resampler) = run.resampler.as_mut() {
            let mut tail = Vec::new();
            resampler.finish(&mut tail)?;
            self.append(&tail, true);
        }
        // Windows lying wholly before the gap can be cut now; those reaching into it wait for the gap to be filled.
        self.cut(spec, out);
        Ok(())
    }

    fn append(&mut self, samples: &[f32], recorded: bool) {
        if samples.is_empty() {
            return;
        }
        let from = self.write_pos;
        let to = from + samples.len() as i64;
        self.buf.extend(samples);
        if recorded {
            match self.recorded.back_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => self.recorded.push_back((from, to)),
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
    fn cut(&mut self, spec: &WindowSpec, out: &mut Pushed<T>) {
        let window = i64::from(spec.window);
        loop {
            self.apply_skip();
            let start = self.next_window;
            if start + window > self.write_pos {
                break;
            }
            let covered = self.recorded_in(start, start + window);
            if covered >= i64::from(spec.min_coverage) {
                let offset = (start - self.buf_start) as usize;
                let samples: Vec<f32> = self.buf.range(offset..offset + spec.window as usize).copied().collect();
                let first = self.chunks.iter().find(|c| c.end > start).or(self.chunks.front());
                if let Some(first) = first {
                    out.windows.push((
                        Window {
                            key: SegmentKey {
                                space: String::new(),
                                sensor: String::new(),
                                start,
                                sample_rate: spec.sample_rate,
                                len: spec.window,
                            },
                            samples,
                            coverage: covered as f32 / window as f32,
                            origin: first.origin.clone(),
                        },
                        first.token.clone(),
                    ));
                }
            }
            self.next_window += i64::from(spec.hop);
            self.forget_before(self.next_window.min(self.write_pos), out);
        }
    }

    fn recorded_in(&self, from: i64, to: i64) -> i64 {
        self.recorded.iter().map(|&(a, b)| (b.min(to) - a.max(from)).max(0)).sum()
    }

    /// Drops samples before `pos` and releases the chunks that held only those samples.
    fn forget_before(&mut self, pos: i64, out: &mut Pushed<T>) {
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
        while self.chunks.front().is_some_and(|c| c.end <= self.next_window) {
            out.released.push(self.chunks.pop_front().expect("checked").token);
        }
    }
}

/// Cuts a stream of audio chunks into model windows; see the module documentation.
pub trait Segment<'scope> {
    /// Returns the windows, the dead letters of audio that could not be placed, and — once the input is exhausted —
    /// the origins of chunks still held for windows not yet cut, routed to the worker reading their partition.
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
    /// let starts = timely::example(move |scope| {
    ///     let chunk = AudioChunk {
    ///         space: "default".into(), sensor: "s1".into(), captured_at: 0, priority: Priority::Normal,
    ///         sample_rate: 1_000, samples: vec![0.1; 5_000],
    ///         origin: Origin { topic: "audio".into(), partition: 0, offset: 0 },
    ///     };
    ///     let (windows, _dead_letters, _held) = vec![chunk].to_stream(scope).segment(spec, Metrics::unregistered());
    ///     windows.map(|w| w.key.start).capture()
    /// });
    /// let starts: Vec<i64> = starts.extract().into_iter().flat_map(|(_, s)| s).collect();
    /// assert_eq!(starts, vec![0, 1_000, 2_000, 3_000]); // the window at 4 s waits for audio past 6 s
    /// ```
    fn segment(
        self,
        spec: WindowSpec,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Window>, StreamVec<'scope, u64, DeadLetter>, StreamVec<'scope, u64, Origin>);
}

impl<'scope> Segment<'scope> for StreamVec<'scope, u64, AudioChunk> {
    fn segment(
        self,
        spec: WindowSpec,
        metrics: Metrics,
    ) -> (StreamVec<'scope, u64, Window>, StreamVec<'scope, u64, DeadLetter>, StreamVec<'scope, u64, Origin>) {
        let mut builder = OperatorBuilder::new("Segment".to_owned(), self.scope());
        let mut input = builder.new_input(self, ExchangePact::new(|c: &AudioChunk| route(&c.space) ^ route(&c.sensor)));
        let (windows_out, windows) = builder.new_output::<Vec<Window>>();
        let (dead_out, dead) = builder.new_output::<Vec<DeadLetter>>();
        let (held_out, held) = builder.new_output::<Vec<Origin>>();
        let mut windows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Window>>>::from(windows_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
        let mut held_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Origin>>>::from(held_out);

        builder.build(move |mut capabilities| {
            // Kept until the input ends, to report the chunks still held at that point.
            let mut held_capability = capabilities.pop();
            drop(capabilities);
            let mut segmenter = Segmenter::<u64>::new(spec);
            // One capability per time that pending chunks carry, with the number of chunks at that time.
            let mut pinned: BTreeMap<u64, (Capability<u64>, usize)> = BTreeMap::new();
            let mut failed = Vec::new();
            move |frontiers| {
                let mut windows_session = windows_out.activate();
                let mut dead_session = dead_out.activate();
                input.for_each(|capability, chunks| {
                    let time = *capability.least().expect("chunks travel with a time");
                    let (received, mut cut) = (chunks.len(), 0);
                    for chunk in chunks.drain(..) {
                        let (space, sensor, origin) = (chunk.space.clone(), chunk.sensor.clone(), chunk.origin.clone());
                        pinned.entry(time).or_insert_with(|| (capability.delayed(&time, 0), 0)).1 += 1;
                        match segmenter.push(chunk, time) {
                            Ok(pushed) => {
                                cut += pushed.windows.len();
                                for (mut window, oldest) in pushed.windows {
                                    window.key.space.clone_from(&space);
                                    window.key.sensor.clone_from(&sensor);
                                    windows_session.session(&pinned[&oldest].0).give(window);
                                }
                                if let Some(letter) = pushed.rejected {
                                    failed.push(letter);
                                }
                                if pushed.duplicate {
                                    metrics.duplicate_chunks.with_label_values(&[space.as_str()]).inc();
                                    tracing::debug!(sensor, %origin, "Repeated chunk dropped.");
                                }
                                for token in pushed.released {
                                    release(&mut pinned, token);
                                }
                            }
                            Err(error) => {
                                failed.push(DeadLetter {
                                    origin: Some(origin),
                                    key: Some(sensor.into_bytes()),
                                    headers: Vec::new(),
                                    payload: Vec::new(),
                                    reason: error.to_string(),
                                    cause: "resample",
                                });
                                release(&mut pinned, time);
                            }
                        }
                    }
                    metrics.count("segment", received, cut);
                    for letter in &failed {
                        metrics.reject("segment", letter.cause, 1);
                    }
                    dead_session.session(&capability).give_iterator(failed.drain(..));
                });
                if frontiers[0].is_empty()
                    && let Some(capability) = held_capability.take()
                {
                    let mut held_session = held_out.activate();
                    held_session.session(&capability).give_iterator(segmenter.pending_origins().cloned());
                    pinned.clear();
                }
            }
        });
        // Partition `p` is read by worker `p mod peers`, which is where exchanging by `p` sends its origins.
        let held = timely::dataflow::operators::Exchange::exchange(held, |origin: &Origin| origin.partition as u64);
        (windows, dead, held)
    }
}

fn release(pinned: &mut BTreeMap<u64, (Capability<u64>, usize)>, time: u64) {
    if let Some(entry) = pinned.get_mut(&time) {
        entry.1 -= 1;
        if entry.1 == 0 {
            pinned.remove(&time);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Priority, samples_to_nanos};

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

    /// Feeds `signal` (one value per sample, at RATE) in chunks of `sizes` (cycled) and returns the windows.
    fn segment_in_chunks(spec: &WindowSpec, signal: &[f32], start: i64, sizes: &[usize]) -> Vec<Window> {
        let mut segmenter = Segmenter::new(spec.clone());
        let (mut at, mut offset, mut windows) = (0usize, 0i64, Vec::new());
        for &size in sizes.iter().cycle() {
            if at >= signal.len() {
                break;
            }
            let end = (at + size).min(signal.len());
            let pushed =
                segmenter.push(chunk("s", start + at as i64, signal[at..end].to_vec(), RATE, offset), offset).unwrap();
            windows.extend(pushed.windows.into_iter().map(|(w, _)| w));
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
        let signal = vec![0.5; 6_000];
        let windows = segment_in_chunks(&spec, &signal, 10_250, &[1_000]);
        // The first window starts at the grid point before the first sample and is zero-padded at its head.
        assert_eq!(windows[0].key.start, 10_000);
        assert_eq!(windows[0].samples[..250], vec![0.0; 250][..]);
        assert_eq!(windows[0].coverage, 0.875);
        assert!(windows.iter().all(|w| w.key.start % 1_000 == 0));
    }

    #[test]
    fn a_gap_starts_a_new_run_and_skips_silent_windows() {
        let spec = spec(1.0, 2_000);
        let mut segmenter = Segmenter::new(spec);
        let mut starts = Vec::new();
        let mut push = |at: i64, n: usize, offset: i64| {
            let pushed = segmenter.push(chunk("s", at, vec![1.0; n], RATE, offset), offset).unwrap();
            starts.extend(pushed.windows.iter().map(|(w, _)| (w.key.start, w.coverage)));
            pushed.released.len()
        };
        push(0, 3_000, 0);
        // 20 s later: the window [2000, 4000) holds the first run's tail and is cut as soon as the gap is known.
        push(23_000, 3_000, 1);
        push(26_000, 1_000, 2);
        assert_eq!(starts, vec![(0, 1.0), (1_000, 1.0), (2_000, 0.5), (23_000, 1.0), (24_000, 1.0), (25_000, 1.0)]);
    }

    #[test]
    fn overlapping_audio_is_dropped_with_a_dead_letter() {
        let spec = spec(1.0, 2_000);
        let mut segmenter = Segmenter::new(spec);
        segmenter.push(chunk("s", 0, vec![1.0; 3_000], RATE, 0), 0).unwrap();
        let pushed = segmenter.push(chunk("s", 2_000, vec![2.0; 2_000], RATE, 1), 1).unwrap();
        let letter = pushed.rejected.expect("overlap reported");
        assert_eq!(letter.cause, "overlap");
        assert!(letter.reason.contains("1.000 s"), "{}", letter.reason);
        // The kept second half continues the timeline at 3000.
        let pushed = segmenter.push(chunk("s", 4_000, vec![3.0; 1_000], RATE, 2), 2).unwrap();
        let w = &pushed.windows.last().unwrap().0;
        assert_eq!(w.key.start, 3_000);
        assert_eq!(w.samples[..1_000], vec![2.0; 1_000][..]);
    }

    #[test]
    fn a_repeated_chunk_is_dropped_without_breaking_the_run() {
        let spec = spec(1.0, 2_000);
        let mut segmenter = Segmenter::new(spec);
        segmenter.push(chunk("s", 0, vec![1.0; 1_500], RATE, 0), 0).unwrap();
        let again = segmenter.push(chunk("s", 0, vec![1.0; 1_500], RATE, 1), 1).unwrap();
        assert!(again.duplicate && again.rejected.is_none() && again.windows.is_empty());
        assert_eq!(again.released, vec![1]);
        let next = segmenter.push(chunk("s", 1_500, vec![1.0; 1_500], RATE, 2), 2).unwrap();
        assert!(!next.duplicate);
        assert_eq!(next.windows.iter().map(|(w, _)| w.key.start).collect::<Vec<_>>(), vec![0, 1_000]);
    }

    #[test]
    fn chunks_stay_pending_until_no_window_needs_them() {
        let spec = spec(1.0, 2_000);
        let mut segmenter = Segmenter::new(spec);
        let first = segmenter.push(chunk("s", 0, vec![1.0; 1_500], RATE, 0), 0).unwrap();
        assert!(first.windows.is_empty() && first.released.is_empty());
        let second = segmenter.push(chunk("s", 1_500, vec![1.0; 1_000], RATE, 1), 1).unwrap();
        // Window [0, 2000) is cut and carries the oldest chunk's token; chunk 0 is still needed by [1000, 3000).
        assert_eq!(second.windows.iter().map(|(w, t)| (w.key.start, *t)).collect::<Vec<_>>(), vec![(0, 0)]);
        assert!(second.released.is_empty());
        assert_eq!(segmenter.pending_origins().map(|o| o.offset).collect::<Vec<_>>(), vec![0]);
        let third = segmenter.push(chunk("s", 2_500, vec![1.0; 1_500], RATE, 2), 2).unwrap();
        assert_eq!(
            third.windows.iter().map(|(w, t)| (w.key.start, *t)).collect::<Vec<_>>(),
            vec![(1_000, 0), (2_000, 1)]
        );
        assert_eq!(third.released, vec![0, 1]);
        assert_eq!(segmenter.pending_chunks(), 1);
    }

    #[test]
    fn other_rates_are_resampled_onto_the_same_grid() {
        let spec = WindowsConfig { hop_seconds: 1.0, gap_tolerance_ms: 5, min_coverage_seconds: 0.5 }
            .build(32_000, 64_000)
            .unwrap();
        let mut segmenter = Segmenter::new(spec);
        let mut windows = Vec::new();
        for (i, part) in vec![0.25f32; 48_000 * 4].chunks(48_000).enumerate() {
            let pushed = segmenter.push(chunk("s", 48_000 * i as i64, part.to_vec(), 48_000, i as i64), i).unwrap();
            windows.extend(pushed.windows.into_iter().map(|(w, _)| w));
        }
        assert_eq!(windows.iter().map(|w| w.key.start).collect::<Vec<_>>(), vec![0, 32_000]);
        let middle = &windows[1].samples[16_000..48_000];
        assert!(middle.iter().all(|x| (x - 0.25).abs() < 1e-3));
    }
}
