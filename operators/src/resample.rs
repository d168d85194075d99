//! Streaming mono resampling to the model's rate whose output does not depend on how the input was chunked.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, Indexing, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use crate::Error;

/// Input frames per resampler call; the resampler always sees blocks of this size, whatever the chunking upstream.
/// 960 = 2⁶·3·5 keeps the FFT lengths smooth for the common rates (48 and 96 kHz → 960/640 and 960/320 points; a
/// 1024 block made 1026/684, whose factor 19 doubled the FFT time).
const BLOCK: usize = 960;
/// Largest reduced input rate (`rate_in / gcd(rate_in, rate_out)`) resampled by FFT; beyond it (odd rates such as
/// 44 101 Hz, whose FFT would span the whole rate) a windowed-sinc interpolator takes over.
const MAX_FFT_RATIO_TERM: u32 = 4_800;
/// Memory of the filters a thread keeps for reuse once their stretch has ended (see [`IDLE`]).
const IDLE_BYTES: usize = 8 << 20;

std::thread_local! {
    /// Filters whose stretch ended, reset, by rates, for the next stretch at the same rates: making one plans its
    /// FFTs and computes its sinc table, which costs more than resampling a few seconds (a sensor recording in
    /// bouts starts a stretch with every bout). At most [`IDLE_BYTES`] of them per thread.
    static IDLE: std::cell::RefCell<Vec<Idle>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A filter kept for reuse: its rates, the filter, and its memory.
struct Idle {
    rates: (u32, u32),
    filter: Box<dyn Resampler<f32>>,
    bytes: usize,
}

/// Resamples one contiguous stretch of mono audio from `rate_in` to `rate_out`.
///
/// Input is buffered into fixed blocks, so feeding a stream in 1.3 s chunks or in one piece yields the same samples.
/// The filter's start-up delay is trimmed and `finish` flushes its tail, so the output of a stretch of `n` input
/// samples is exactly `ceil(n * rate_out / rate_in)` samples, aligned with the input's first sample.
pub struct StreamResampler {
    /// Always present but while it is dropped (it goes back to [`IDLE`]).
    inner: Option<Box<dyn Resampler<f32>>>,
    rate_in: u64,
    rate_out: u64,
    pending: Vec<f32>,
    scratch: Vec<f32>,
    to_skip: usize,
    total_in: u64,
    total_out: u64,
    /// Memory the filter holds besides `pending` and `scratch` (see [`StreamResampler::bytes`]).
    filter_bytes: usize,
    /// Whether its filter goes back to [`IDLE`] when it is dropped.
    pooled: bool,
}

impl StreamResampler {
    /// A resampler from `rate_in` to `rate_out` Hz: FFT-based for rational ratios with small terms, windowed sinc
    /// otherwise; Blackman-Harris anti-aliasing either way.
    pub fn new(rate_in: u32, rate_out: u32) -> Result<Self, Error> {
        let (inner, filter_bytes) = Self::filter(rate_in, rate_out)?;
        Ok(Self::with_filter(inner, filter_bytes, rate_in, rate_out, false))
    }

    /// Like [`StreamResampler::new`], for a thread that resamples stretch after stretch (a segmenting worker): a
    /// filter of a stretch that ended on this thread is reused, reset — the output is the same as a new one's — and
    /// this one's filter is kept for the next when it is dropped, while the filters kept take at most
    /// [`IDLE_BYTES`].
    pub fn reusing(rate_in: u32, rate_out: u32) -> Result<Self, Error> {
        let reused = IDLE.with_borrow_mut(|idle| {
            let at = idle.iter().position(|i| i.rates == (rate_in, rate_out))?;
            Some(idle.swap_remove(at))
        });
        let (inner, filter_bytes) = match reused {
            Some(mut idle) => {
                idle.filter.reset();
                (idle.filter, idle.bytes)
            }
            None => Self::filter(rate_in, rate_out)?,
        };
        Ok(Self::with_filter(inner, filter_bytes, rate_in, rate_out, true))
    }

    fn with_filter(
        inner: Box<dyn Resampler<f32>>,
        filter_bytes: usize,
        rate_in: u32,
        rate_out: u32,
        pooled: bool,
    ) -> Self {
        let scratch = vec![0.0; inner.output_frames_max()];
        let to_skip = inner.output_delay();
        StreamResampler {
            inner: Some(inner),
            rate_in: u64::from(rate_in),
            rate_out: u64::from(rate_out),
            pending: Vec::with_capacity(2 * BLOCK),
            scratch,
            to_skip,
            total_in: 0,
            total_out: 0,
            filter_bytes,
            pooled,
        }
    }

    /// A new filter from `rate_in` to `rate_out` Hz, and the memory it holds besides the stream's buffers.
    fn filter(rate_in: u32, rate_out: u32) -> Result<(Box<dyn Resampler<f32>>, usize), Error> {
        let failed = |e: rubato::ResamplerConstructionError| {
            Error::Resample(format!("cannot resample {rate_in} Hz to {rate_out} Hz: {e}"))
        };
        let by_fft = rate_in / gcd(rate_in, rate_out) <= MAX_FFT_RATIO_TERM;
        let inner: Box<dyn Resampler<f32>> = if by_fft {
            Box::new(
                Fft::<f32>::new_custom(
                    rate_in as usize,
                    rate_out as usize,
                    BLOCK,
                    1,
                    1,
                    WindowFunction::BlackmanHarris2,
                    FixedSync::Input,
                )
                .map_err(failed)?,
            )
        } else {
            let parameters = SincInterpolationParameters {
                sinc_len: 256,
                f_cutoff: None,
                oversampling_factor: 256,
                interpolation: SincInterpolationType::Cubic,
                window: WindowFunction::BlackmanHarris2,
            };
            let ratio = f64::from(rate_out) / f64::from(rate_in);
            Box::new(Async::<f32>::new_sinc(ratio, 1.0, &parameters, BLOCK, 1, FixedAsync::Input).map_err(failed)?)
        };
        let filter_bytes = if by_fft {
            fft_filter_bytes(rate_in, rate_out)
        } else {
            // Its table of 256 × 256 coefficients, a few blocks in and out, and what any filter takes besides.
            256 * 256 * 4 + 2 * (BLOCK + inner.output_frames_max()) * 4 + FILTER_FIXED_BYTES
        };
        Ok((inner, filter_bytes))
    }

    /// Memory it holds, estimated: its buffers and its filter's state.
    pub fn bytes(&self) -> usize {
        (self.pending.capacity() + self.scratch.capacity()) * std::mem::size_of::<f32>() + self.filter_bytes
    }

    /// Input rate in Hz.
    pub fn rate_in(&self) -> u32 {
        self.rate_in as u32
    }

    /// Feeds samples and appends every output sample that is final to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), Error> {
        self.pending.extend_from_slice(input);
        self.total_in += input.len() as u64;
        let mut start = 0;
        while self.pending.len() - start >= BLOCK {
            self.run_block(start, BLOCK, None, out)?;
            start += BLOCK;
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Ends the stretch: flushes buffered input and the filter delay, cutting the output to its exact length.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), Error> {
        let expected = (self.total_in * self.rate_out).div_ceil(self.rate_in);
        let keep = out.len() + expected.saturating_sub(self.total_out) as usize;
        let mut remaining = self.pending.len();
        while self.total_out < expected {
            self.run_block(0, remaining, Some(remaining), out)?;
            remaining = 0;
        }
        out.truncate(keep);
        self.pending.clear();
        self.total_out = expected;
        Ok(())
    }

    fn run_block(&mut self, start: usize, len: usize, partial: Option<usize>, out: &mut Vec<f32>) -> Result<(), Error> {
        let padded;
        let block: &[f32] = if partial.is_some() {
            // A partial call still reads a whole block's worth of frames from the adapter.
            padded = {
                let mut v = vec![0.0; BLOCK];
                v[..len].copy_from_slice(&self.pending[start..start + len]);
                v
            };
            &padded
        } else {
            &self.pending[start..start + len]
        };
        let input = InterleavedSlice::new(block, 1, block.len()).map_err(|e| Error::Resample(e.to_string()))?;
        let frames = self.scratch.len();
        let mut output =
            InterleavedSlice::new_mut(&mut self.scratch, 1, frames).map_err(|e| Error::Resample(e.to_string()))?;
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let (_, produced) = self
            .inner
            .as_mut()
            .expect("present until dropped")
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .map_err(|e| Error::Resample(e.to_string()))?;
        let skip = self.to_skip.min(produced);
        self.to_skip -= skip;
        out.extend_from_slice(&self.scratch[skip..produced]);
        self.total_out += (produced - skip) as u64;
        Ok(())
    }
}

impl Drop for StreamResampler {
    /// Keeps the filter of one made [`StreamResampler::reusing`] for the next stretch at the same rates on this
    /// thread, while the filters kept take at most [`IDLE_BYTES`].
    fn drop(&mut self) {
        let Some(filter) = self.inner.take().filter(|_| self.pooled) else { return };
        let rates = (self.rate_in as u32, self.rate_out as u32);
        let bytes = self.filter_bytes;
        // A thread being torn down has no pool left: the filter is then simply dropped.
        let _ = IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            if idle.iter().map(|i| i.bytes).sum::<usize>() + bytes <= IDLE_BYTES {
                idle.push(Idle { rates, filter, bytes });
            }
        });
    }
}

/// Memory of an FFT filter from `rate_in` to `rate_out` Hz, from the transform sizes rubato picks for [`BLOCK`]: per
/// point of the input and of the output transform, its buffers, spectra and FFT plans (60 and 40 bytes), and what
/// any filter takes besides (80 KiB), as measured in resident memory
/// (`tests::r15_a_filter_costs_in_resident_memory_what_it_counts`). 1 kHz to 32 kHz: 960 and 30 720 points, 1.4 MB.
fn fft_filter_bytes(rate_in: u32, rate_out: u32) -> usize {
    let g = gcd(rate_in, rate_out) as usize;
    let (reduced_in, reduced_out) = (rate_in as usize / g, rate_out as usize / g);
    let chunks = BLOCK.div_ceil(reduced_in).max(1);
    let (points_in, points_out) = (chunks * reduced_in, chunks * reduced_out);
    60 * points_in + 40 * points_out + FILTER_FIXED_BYTES
}

/// What a filter takes besides its transforms or its table: allocations rubato and rustfft make per filter.
const FILTER_FIXED_BYTES: usize = 80 << 10;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n).map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5).collect()
    }

    fn resample_in_chunks(input: &[f32], rate_in: u32, chunk: usize) -> Vec<f32> {
        feed(StreamResampler::new(rate_in, 32_000).unwrap(), input, chunk)
    }

    /// What `r` makes of `input` fed in chunks of `chunk` samples.
    fn feed(mut r: StreamResampler, input: &[f32], chunk: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for part in input.chunks(chunk) {
            r.push(part, &mut out).unwrap();
        }
        r.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn r15_a_filter_reused_after_its_stretch_ended_gives_what_a_new_one_gives() {
        for rate in [1_000, 44_100, 44_101] {
            let first = tone(rate, 300.0, 1.7);
            let second = tone(rate, 220.0, 2.3);
            let fresh = resample_in_chunks(&second, rate, 997);
            // The first stretch leaves its filter behind on this thread; the second takes it.
            let reusing =
                |input: &[f32], chunk: usize| feed(StreamResampler::reusing(rate, 32_000).unwrap(), input, chunk);
            let _ = reusing(&first, 1_301);
            assert!(IDLE.with_borrow(|idle| idle.iter().any(|i| i.rates == (rate, 32_000))), "{rate} Hz kept");
            assert_eq!(reusing(&second, 997), fresh, "{rate} Hz");
            assert!(IDLE.with_borrow(|idle| idle.iter().map(|i| i.bytes).sum::<usize>()) <= IDLE_BYTES);
        }
    }

    /// The rates the child measures, from the parent below; the child runs alone in a process of its own.
    const MEASURE_RATES: &str = "CHORUS_TEST_FILTER_RATES";

    fn resident_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() << 10
    }

    /// Not a test on its own: in the process `r15_a_filter_costs_in_resident_memory_what_it_counts` starts, makes
    /// filters at the rates it is given, each fed a few blocks, and prints the resident memory each one added.
    #[test]
    fn r15_measure_filters_in_a_process_of_their_own() {
        let Ok(rates) = std::env::var(MEASURE_RATES) else { return };
        let (rate_in, rate_out) = rates.split_once(':').unwrap();
        let (rate_in, rate_out): (u32, u32) = (rate_in.parse().unwrap(), rate_out.parse().unwrap());
        let input = tone(rate_in, 300.0, 3.5 * BLOCK as f32 / rate_in as f32);
        let n = 48;
        let before = resident_bytes();
        let mut kept = Vec::with_capacity(n);
        let mut out = Vec::new();
        for _ in 0..n {
            let mut r = StreamResampler::new(rate_in, rate_out).unwrap();
            r.push(&input, &mut out).unwrap();
            out.clear();
            kept.push(r);
        }
        println!("resident bytes per filter: {}", (resident_bytes() - before) / n);
        drop(kept);
    }

    #[test]
    fn r15_a_filter_costs_in_resident_memory_what_it_counts() {
        for (rate_in, rate_out) in
            [(1_000, 32_000), (8_000, 32_000), (16_000, 32_000), (48_000, 32_000), (44_101, 32_000)]
        {
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "resample::tests::r15_measure_filters_in_a_process_of_their_own", "--nocapture"])
                .env(MEASURE_RATES, format!("{rate_in}:{rate_out}"))
                .output()
                .unwrap();
            let stdout = String::from_utf8(child.stdout).unwrap();
            let measured: usize = stdout
                .lines()
                .find_map(|l| l.strip_prefix("resident bytes per filter: "))
                .unwrap_or_else(|| panic!("no measurement: {stdout}"))
                .parse()
                .unwrap();
            let counted = StreamResampler::new(rate_in, rate_out).unwrap().bytes();
            let ratio = counted as f64 / measured as f64;
            println!("{rate_in} -> {rate_out} Hz: counted {counted}, resident {measured} ({ratio:.2})");
            assert!(
                (0.85..=1.2).contains(&ratio),
                "{rate_in} -> {rate_out} Hz: counted {counted}, resident {measured}"
            );
        }
    }

    #[test]
    fn output_is_independent_of_chunking_and_exact_in_length() {
        let input = tone(44_100, 1000.0, 2.0);
        let whole = resample_in_chunks(&input, 44_100, input.len());
        let chunked = resample_in_chunks(&input, 44_100, 5_731);
        assert_eq!(whole.len(), (input.len() as u64 * 32_000).div_ceil(44_100) as usize);
        assert_eq!(whole, chunked);
    }

    #[test]
    fn odd_rates_use_the_sinc_interpolator_with_the_same_guarantees() {
        let input = tone(44_101, 1000.0, 2.0);
        let whole = resample_in_chunks(&input, 44_101, input.len());
        let chunked = resample_in_chunks(&input, 44_101, 3_001);
        assert_eq!(whole.len(), (input.len() as u64 * 32_000).div_ceil(44_101) as usize);
        assert_eq!(whole, chunked);
        let reference = tone(32_000, 1000.0, 2.0);
        let worst = whole[2_000..60_000]
            .iter()
            .zip(&reference[2_000..60_000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // The sinc filter's delay is fractional; trimming whole samples leaves a phase offset of a fraction of one.
        assert!(worst < 0.02, "largest deviation {worst}");
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_phase() {
        let input = tone(48_000, 1000.0, 1.0);
        let out = resample_in_chunks(&input, 48_000, 4_800);
        let reference = tone(32_000, 1000.0, 1.0);
        // Away from the edges the resampled tone matches a tone generated at 32 kHz.
        let worst =
            out[2_000..30_000].iter().zip(&reference[2_000..30_000]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 0.01, "largest deviation {worst}");
    }
}
