//! One sensor's timeline on the model's absolute sample clock: reassembly of its chunks into runs, resampling, and
//! the cut of grid-aligned windows (see the module documentation of [`super`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::windows::WindowSpec;
use crate::cause::Cause;
use crate::record::{
    AudioChunk, DeadLetter, Nanos, Origin, Priority, SegmentKey, Window, nanos_to_samples, rfc3339, samples_to_nanos,
};
use crate::resample::StreamResampler;

/// Spans of received audio remembered per sensor to recognise repeated deliveries.
const RECEIVED_SPANS: usize = 16;

#[derive(Serialize, Deserialize)]
pub(super) struct Run {
    rate_in: u32,
    /// Present when `rate_in` differs from the model's rate (a stored run has none: see [`Timeline::flush_resampler`]).
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
pub(super) struct PendingChunk {
    /// Model-clock position just past the chunk's last sample.
    end: i64,
    pub(super) origin: Origin,
}

/// Samples below which a buffer's capacity is not given back (see [`Timeline::forget_before`]).
const MIN_SHRINK: usize = 1 << 14;

/// The layout is that of a savepoint of earlier releases, which a job still reads: fields are never added here.
#[derive(Serialize, Deserialize)]
pub(super) struct Timeline {
    run: Option<Run>,
    /// Samples from `buf_start` to `write_pos`; from `next_window` up to `buf_start`, silence that is not held.
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
    pub(super) chunks: VecDeque<PendingChunk>,
}

/// Where a chunk lies against a timeline (see [`Timeline::fit`]).
struct Fit {
    continues: bool,
    pos: i64,
    end: i64,
    tolerance: i64,
    duration: Nanos,
}

impl Timeline {
    /// A timeline whose first sample is at `pos`: its first window starts at the grid point at or before `pos`. The
    /// silence between the two is not held: samples before `buf_start` read as zeros (see [`Timeline::cut`]), so a
    /// sensor that sent a few milliseconds costs those milliseconds, not a hop of zeros.
    pub(super) fn starting_at(spec: &WindowSpec, pos: i64) -> Self {
        Timeline {
            run: None,
            buf: VecDeque::new(),
            buf_start: pos,
            write_pos: pos,
            recorded: VecDeque::new(),
            received: VecDeque::new(),
            first_received: pos,
            next_window: spec.grid_floor(pos),
            skip: None,
            chunks: VecDeque::new(),
        }
    }

    /// How `chunk` relates to the audio received: whether it continues the run, and where it lies on the model clock
    /// (start, end, and the jitter tolerated, in samples).
    fn fit(&self, spec: &WindowSpec, chunk: &AudioChunk) -> Fit {
        let rate = chunk.sample_rate;
        let duration = (chunk.samples.len() as u128 * 1_000_000_000 / u128::from(rate)) as Nanos;
        // Jitter up to the tolerance is absorbed, but never half a chunk: a repeated short chunk is not a successor.
        let tolerance = spec.gap_tolerance.min(duration / 2);
        let continues = self
            .run
            .as_ref()
            .is_some_and(|run| run.rate_in == rate && (chunk.captured_at - run.expected_next()).abs() <= tolerance);
        let pos = nanos_to_samples(chunk.captured_at, spec.sample_rate);
        let end = pos + (chunk.samples.len() as u128 * u128::from(spec.sample_rate) / u128::from(rate)) as i64;
        Fit { continues, pos, end, tolerance: nanos_to_samples(tolerance, spec.sample_rate), duration }
    }

    /// Whether `chunk` would start after a gap in the audio received: audio of the gap may still be on its way (from
    /// another partition, say), so the chunk is better held back for a while than placed now.
    pub(super) fn leaves_gap(&self, spec: &WindowSpec, chunk: &AudioChunk) -> bool {
        let fit = self.fit(spec, chunk);
        !fit.continues && fit.pos > self.write_pos + fit.tolerance
    }

    /// Places `chunk` and cuts the windows it completes. A chunk that starts more than `spec.max_jump_back` before
    /// the audio received, and is not a repeat, is handed back: the sensor's clock jumped back, and the caller starts
    /// a new timeline with it.
    pub(super) fn push(&mut self, spec: &WindowSpec, chunk: AudioChunk, out: &mut Pushed) -> Result<(), AudioChunk> {
        let rate = chunk.sample_rate;
        let Fit { continues, pos, end, tolerance, duration } = self.fit(spec, &chunk);
        let mut samples = chunk.samples.as_slice();
        let mut start_time = chunk.captured_at;
        if !continues {
            let mut pos = pos;
            if end <= self.write_pos + tolerance {
                if self.received.iter().any(|&(a, b)| a - tolerance <= pos && end <= b + tolerance) {
                    out.duplicates.push(chunk.space.clone());
                } else if self.write_pos - pos > spec.max_jump_back {
                    return Err(chunk);
                } else {
                    let reason = format!(
                        "chunk of sensor '{}' ({} to {}) lies before audio already received up to {} and outside \
                         every stretch received: out of order, or its captured_at is wrong; dropped",
                        chunk.sensor,
                        rfc3339(chunk.captured_at),
                        rfc3339(chunk.captured_at + duration),
                        rfc3339(samples_to_nanos(self.write_pos, spec.sample_rate)),
                    );
                    out.rejected.push(rejection(&chunk, Cause::OutOfOrder, reason));
                }
                return Ok(());
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
                out.rejected.push(rejection(&chunk, Cause::Overlap, reason));
                samples = &samples[dropped..];
                start_time += (dropped as u128 * 1_000_000_000 / u128::from(rate)) as Nanos;
                pos = self.write_pos;
            }
            if let Err(reason) = self.start_run(spec, pos, start_time, rate, out) {
                out.rejected.push(rejection(&chunk, Cause::Resample, reason));
                return Ok(());
            }
        }
        if samples.is_empty() {
            return Ok(());
        }
        let run = self.run.as_mut().expect("a run is under way");
        let resampled = match run.resampler.as_mut() {
            Some(resampler) => {
                let mut resampled = Vec::with_capacity(samples.len() * spec.sample_rate as usize / rate as usize + 1);
                if let Err(error) = resampler.push(samples, &mut resampled) {
                    // The resampler's state is unknown after a failure: the run ends here.
                    self.run = None;
                    out.rejected.push(rejection(&chunk, Cause::Resample, error.to_string()));
                    return Ok(());
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
        Ok(())
    }

    /// Ends the timeline: every window holding recorded audio is cut now, padded with silence where audio never came,
    /// and no chunk stays pending. Used when the sensor's clock jumped back and a new timeline begins.
    pub(super) fn close(&mut self, spec: &WindowSpec, out: &mut Pushed) {
        self.end_run(spec, out);
        self.append(&vec![0.0; spec.window as usize], false);
        self.cut(spec, out);
        self.chunks.clear();
    }

    /// Cuts the tail: the windows holding at least `min_coverage` of the audio received that still wait for audio
    /// past their end are cut now, padded with silence. The timeline stays as it was otherwise, so audio that
    /// continues it later goes on into the windows after them; the audio it brings for a window already cut here is
    /// in no window. A second flush without new audio cuts nothing.
    pub(super) fn flush_tail(&mut self, spec: &WindowSpec, out: &mut Pushed) {
        self.end_run(spec, out);
        self.cut_through(spec, out, self.write_pos - i64::from(spec.min_coverage));
    }

    /// Flushes a resampled run into the buffer, since a resampler cannot be stored: its tail joins the buffer and
    /// the next chunk starts a run right after it.
    pub(super) fn flush_resampler(&mut self) {
        if self.run.as_ref().is_some_and(|run| run.resampler.is_some()) {
            let mut run = self.run.take().expect("checked");
            let mut tail = Vec::new();
            if run.resampler.as_mut().expect("checked").finish(&mut tail).is_ok() {
                self.append(&tail, true);
            }
        }
    }

    /// Memory it holds: the buffer's capacity, the resampler of its run, and what it remembers of chunks and spans.
    pub(super) fn bytes(&self) -> usize {
        let resampler = self.run.as_ref().and_then(|run| run.resampler.as_ref()).map_or(0, StreamResampler::bytes);
        let chunks =
            self.chunks.iter().map(|c| std::mem::size_of::<PendingChunk>() + c.origin.topic.len()).sum::<usize>();
        let spans = (self.recorded.len() + self.received.len()) * std::mem::size_of::<(i64, i64)>();
        std::mem::size_of::<Timeline>() + self.buf.capacity() * std::mem::size_of::<f32>() + resampler + chunks + spans
    }

    /// Where the audio received ends, on the model clock.
    pub(super) fn write_pos(&self) -> i64 {
        self.write_pos
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
            Some(StreamResampler::reusing(rate_in, spec.sample_rate).map_err(|e| e.to_string())?)
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
            // A sensor heard from in bouts restarts here with every bout: the buffer sized for the last one goes.
            self.buf = VecDeque::new();
            self.recorded.clear();
            // As at a timeline's start, the silence from the grid point to the new run is not held.
            self.buf_start = pos;
            self.write_pos = pos;
            self.next_window = start;
            self.release_before_next_window();
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
        self.cut_through(spec, out, self.write_pos - i64::from(spec.window));
    }

    /// Cuts every window starting at or before `last`, silent past the audio received.
    fn cut_through(&mut self, spec: &WindowSpec, out: &mut Pushed, last: i64) {
        let window = i64::from(spec.window);
        loop {
            self.apply_skip();
            let start = self.next_window;
            if start > last {
                break;
            }
            let covered = self.recorded_in(start, start + window);
            if covered >= i64::from(spec.min_coverage)
                && let Some(first) = self.chunks.iter().find(|c| c.end > start).or(self.chunks.front())
            {
                out.windows.push(Window {
                    key: SegmentKey {
                        space: String::new(),
                        sensor: String::new(),
                        start,
                        sample_rate: spec.sample_rate,
                        len: spec.window,
                    },
                    samples: self.window_samples(start, spec.window as usize),
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

    /// The `len` samples from `start`: zeros before `buf_start` (the silence a timeline starts or restarts after),
    /// then the buffer, then zeros past its end (a tail cut by [`Timeline::flush_tail`]).
    fn window_samples(&self, start: i64, len: usize) -> Vec<f32> {
        let silent = ((self.buf_start - start).max(0) as usize).min(len);
        let offset = ((start - self.buf_start).max(0) as usize).min(self.buf.len());
        let mut samples = Vec::with_capacity(len);
        samples.resize(silent, 0.0);
        samples.extend(self.buf.range(offset..(offset + (len - silent)).min(self.buf.len())));
        samples.resize(len, 0.0);
        samples
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
            // What a burst made the buffer grow to is given back once it is mostly drained.
            if self.buf.capacity() > 4 * self.buf.len().max(MIN_SHRINK) {
                self.buf.shrink_to(2 * self.buf.len());
            }
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

fn rejection(chunk: &AudioChunk, cause: Cause, reason: String) -> DeadLetter {
    DeadLetter {
        origin: Some(chunk.origin.clone()),
        key: Some(chunk.sensor.as_bytes().to_vec()),
        headers: Vec::new(),
        payload: Vec::new(),
        reason,
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::WindowsConfig;

    #[test]
    fn r15_a_burst_gives_its_buffer_back_once_its_windows_are_cut_and_what_is_kept_is_counted() {
        let (rate, window) = (1_000, 2_000);
        let spec = WindowsConfig { hop_seconds: 1.0, min_coverage_seconds: 0.5, ..Default::default() }
            .build(rate, window)
            .unwrap();
        let mut timeline = Timeline::starting_at(&spec, 0);
        let mut out = Pushed::default();
        let at = |sample: i64| samples_to_nanos(sample, rate);
        let burst = 600_000;
        let chunk = |start: i64, n: usize| AudioChunk {
            space: "default".into(),
            sensor: "s".into(),
            captured_at: at(start),
            sent_ms: at(start) / 1_000_000,
            priority: Priority::Normal,
            sample_rate: rate,
            samples: vec![0.25; n],
            origin: Origin { topic: "audio".into(), partition: 0, offset: start },
        };
        assert!(timeline.push(&spec, chunk(0, burst), &mut out).is_ok());
        assert_eq!(out.windows.len(), burst / 1_000 - 1);
        // The last window waits for one more second: 1 000 samples are left of the 600 000.
        assert_eq!(timeline.buf.len(), 1_000);
        assert!(timeline.buf.capacity() <= 4 * MIN_SHRINK, "{} samples of capacity kept", timeline.buf.capacity());
        // What the buffer keeps is what is counted, not the samples it holds.
        timeline.buf.reserve(50_000);
        assert!(timeline.bytes() >= timeline.buf.capacity() * 4);
        // A bout after a long gap starts a buffer of its own.
        assert!(timeline.push(&spec, chunk(burst as i64 + 100_000, 3_000), &mut out).is_ok());
        assert!(timeline.buf.capacity() < 50_000, "{}", timeline.buf.capacity());
    }
}
