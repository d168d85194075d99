//! `[windows]` and the window grid: how audio is cut into model windows (hop, coverage, tolerance, lateness), the
//! validated [`WindowSpec`] at the model's rate, and cutting a standalone clip (a query, a file) into windows.

use serde::Deserialize;

use crate::FieldError;
use crate::record::Nanos;

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
    /// A sensor that sent nothing for this many seconds has its tail cut: the windows still waiting for audio past
    /// their end that hold at least `min_coverage_seconds` of recorded audio are cut now, padded with silence (their
    /// `coverage` says how much was recorded), so a finished recording's last window is not left waiting. Should the
    /// sensor continue later, a window cut this way stands: its id is taken, and the audio that would have completed
    /// it is in no window. 0 never cuts a tail.
    pub flush_tail_seconds: u64,
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
            flush_tail_seconds: 300,
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
        if self.flush_tail_seconds > 31_536_000 {
            return Err(FieldError::new(
                "flush_tail_seconds",
                format!("{} is more than 31536000 (a year); 0 never cuts a tail", self.flush_tail_seconds),
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
            flush_tail_ms: self.flush_tail_seconds * 1_000,
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
    /// Milliseconds without a chunk after which a sensor's tail is cut (0: never).
    pub flush_tail_ms: u64,
    /// Samples a clock may jump back before a sensor's timeline starts again.
    pub max_jump_back: i64,
}

impl WindowSpec {
    pub(crate) fn grid_floor(&self, pos: i64) -> i64 {
        pos.div_euclid(i64::from(self.hop)) * i64::from(self.hop)
    }

    /// Copies of a sample at the model's rate the pipeline holds: resampled into the segmenter's buffer, and once
    /// in each window it falls in (more than one when windows overlap).
    pub fn copies(&self) -> usize {
        1 + self.window.div_ceil(self.hop) as usize
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
