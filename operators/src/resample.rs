//! Streaming mono resampling to the model's rate whose output does not depend on how the input was chunked.
//!
//! Rational ratios with small terms (every common rate to 32 kHz) go through an FFT filter (overlap-add): a
//! Blackman-Harris windowed sinc applied in the frequency domain, whose spectrum is zero-extended (or cut) to the
//! output rate. What defines such a filter — its transforms' plans and its spectrum — is the same for every stream at
//! the same rates, so it is made once per thread and shared ([`DESIGNS`]), and the transforms' scratch buffers are
//! the thread's ([`SCRATCH`]): a stream holds only the filter's tail from its last block (the overlap) and its
//! unprocessed input. A network of a thousand 1 kHz recorders starts a stretch with every bout; each costs an
//! allocation of 32 KiB, not a filter (before, 1.4 MB planned and computed per stretch, as rubato's `Fft` does).
//! Odd rates (a reduced input rate above [`MAX_FFT_RATIO_TERM`], such as 44 101 Hz) use rubato's windowed-sinc
//! interpolator, a filter per stream kept for reuse once its stretch ends ([`IDLE`]).

use std::cell::RefCell;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Indexing, Resampler, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use crate::Error;

/// Input frames per call to the sinc interpolator, and the FFT filter's block on the input side for ratios whose
/// output block stays within [`MAX_FFT_OUT`]: the resampler always sees blocks of this size, whatever the chunking
/// upstream. 960 = 2⁶·3·5 keeps the FFT lengths smooth for the common rates (48 and 96 kHz → 960/640 and 960/320
/// points; a 1024 block made 1026/684, whose factor 19 doubled the FFT time).
const BLOCK: usize = 960;
/// Largest output block of an FFT filter: an upsampling filter takes fewer input frames per block instead (1 → 32
/// kHz: 256 frames, 8 192 out, a 256-tap filter — a quarter of a second at 1 kHz, still a sharp cut at 484 Hz), so a
/// stream's overlap stays at 32 KiB — unless the filter would then be too short for its band (see [`Design::new`]:
/// 1 → 768 kHz takes 80 frames, 61 440 out).
const MAX_FFT_OUT: usize = 8_192;
/// Largest reduced input rate (`rate_in / gcd(rate_in, rate_out)`) resampled by FFT; beyond it (odd rates such as
/// 44 101 Hz, whose FFT would span the whole rate) a windowed-sinc interpolator takes over.
const MAX_FFT_RATIO_TERM: u32 = 4_800;
/// Memory of the sinc filters a thread keeps for reuse once their stretch has ended (see [`IDLE`]).
const IDLE_BYTES: usize = 8 << 20;
/// Memory of the FFT filter designs a thread keeps (tens of KiB for the common rates to 32 kHz, 1.5 MB at the extreme
/// of 768 kHz to 1 kHz); beyond it, the least recently used goes (streams using it keep it alive).
const DESIGN_BYTES: usize = 8 << 20;

std::thread_local! {
    /// FFT filter designs by reduced rates (48 → 32 kHz and 96 → 64 kHz share one), least recently used first,
    /// shared by the streams of this thread. At most [`DESIGN_BYTES`] of them.
    static DESIGNS: RefCell<Vec<(Reduced, Arc<Design>)>> = const { RefCell::new(Vec::new()) };
    /// The transforms' working buffers, shared by every FFT filter of this thread (a block is filtered at once): as
    /// large as the largest design used on the thread needs (tens of KiB for the common rates, 2 MB at most).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// Sinc filters whose stretch ended, reset, by rates, for the next stretch at the same rates: making one
    /// computes its table, which costs more than resampling a few seconds. At most [`IDLE_BYTES`] of them per thread.
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// Two rates divided by their greatest common divisor.
type Reduced = (usize, usize);

/// A sinc filter kept for reuse: its rates, the filter, and its memory.
struct Idle {
    rates: (u32, u32),
    filter: Box<dyn Resampler<f32>>,
    bytes: usize,
}

/// What defines an FFT filter between two rates: block sizes, plans and the filter's spectrum.
struct Design {
    /// Input frames per block.
    block_in: usize,
    /// Output frames per block.
    block_out: usize,
    /// The filter's spectrum, scaled for the unnormalised inverse transform (`block_in + 1` bins).
    filter: Vec<Complex<f32>>,
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
}

/// The transforms' working buffers.
#[derive(Default)]
struct Scratch {
    input: Vec<f32>,
    spectrum_in: Vec<Complex<f32>>,
    spectrum_out: Vec<Complex<f32>>,
    output: Vec<f32>,
    work: Vec<Complex<f32>>,
}

impl Design {
    /// The design from `rate_in` to `rate_out` Hz, made on this thread once while it is in use.
    fn shared(rate_in: u32, rate_out: u32) -> Arc<Design> {
        let key = reduced(rate_in, rate_out);
        DESIGNS.with_borrow_mut(|designs| {
            if let Some(at) = designs.iter().position(|(k, _)| *k == key) {
                let entry = designs.remove(at);
                designs.push(entry);
            } else {
                designs.push((key, Arc::new(Design::new(key))));
                while designs.len() > 1 && designs.iter().map(|(_, d)| d.bytes()).sum::<usize>() > DESIGN_BYTES {
                    designs.remove(0);
                }
            }
            designs.last().expect("just placed").1.clone()
        })
    }

    /// The design between two rates reduced by their greatest common divisor.
    fn new((reduced_in, reduced_out): Reduced) -> Design {
        // The filter has `block_in` taps; its window's main lobe (4 / taps of the input rate either side) must be
        // narrow beside the band kept, half the lower rate: at most a tenth of it.
        let band = reduced_in.min(reduced_out) as f64 / reduced_in as f64 / 2.0;
        let fewest_taps = (4.0 / (0.1 * band)).ceil() as usize;
        let blocks =
            BLOCK.div_ceil(reduced_in).min(MAX_FFT_OUT / reduced_out).max(fewest_taps.div_ceil(reduced_in)).max(1);
        let (block_in, block_out) = (blocks * reduced_in, blocks * reduced_out);
        // A windowed sinc centred so that the delay is a whole number of output frames (`block_out / 2`), cut just
        // below the lower rate's Nyquist frequency by the window's main lobe.
        let centre = (block_out / 2) as f64 * block_in as f64 / block_out as f64;
        let lobe = 4.0 / block_in as f64;
        let cutoff = band - lobe;
        let mut taps: Vec<f64> = (0..block_in)
            .map(|n| {
                let t = n as f64 - centre;
                let sinc = if t == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * std::f64::consts::PI * cutoff * t).sin() / (std::f64::consts::PI * t)
                };
                sinc * blackman_harris((t / block_in as f64 + 0.5).clamp(0.0, 1.0))
            })
            .collect();
        let gain: f64 = taps.iter().sum();
        // Unit gain at DC, and the inverse transform's factor (it sums without dividing) folded in.
        let scale = 1.0 / (gain * 2.0 * block_in as f64);
        taps.iter_mut().for_each(|t| *t *= scale);
        let mut planner = RealFftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(2 * block_in);
        let inverse = planner.plan_fft_inverse(2 * block_out);
        let mut padded: Vec<f32> = taps.iter().map(|&t| t as f32).chain(std::iter::repeat_n(0.0, block_in)).collect();
        let mut filter = forward.make_output_vec();
        forward.process(&mut padded, &mut filter).expect("the buffers are the plan's");
        Design { block_in, block_out, filter, forward, inverse }
    }

    /// Memory it holds: its spectrum and its plans' twiddles and buffers, about two points of each transform.
    fn bytes(&self) -> usize {
        (self.filter.len() + 2 * (self.block_in + self.block_out)) * std::mem::size_of::<Complex<f32>>()
    }

    /// Filters one block of `block_in` input frames; adds the first `block_out` output frames to `overlap` and appends
    /// them to `out`, and keeps the rest as the next block's overlap.
    fn run(&self, block: &[f32], overlap: &mut [f32], out: &mut Vec<f32>) {
        SCRATCH.with_borrow_mut(|s| {
            let (n_in, n_out) = (self.block_in, self.block_out);
            s.input.clear();
            s.input.extend_from_slice(block);
            s.input.resize(2 * n_in, 0.0);
            s.spectrum_in.resize(n_in + 1, Complex::default());
            s.spectrum_out.resize(n_out + 1, Complex::default());
            s.output.resize(2 * n_out, 0.0);
            s.work.resize(self.forward.get_scratch_len().max(self.inverse.get_scratch_len()), Complex::default());
            let work = self.forward.get_scratch_len();
            self.forward
                .process_with_scratch(&mut s.input, &mut s.spectrum_in, &mut s.work[..work])
                .expect("the buffers are the plan's");
            // The band both rates carry, filtered; above it, nothing.
            let kept = (n_in + 1).min(n_out);
            for ((o, i), f) in s.spectrum_out.iter_mut().zip(&s.spectrum_in[..kept]).zip(&self.filter) {
                *o = i * f;
            }
            s.spectrum_out[kept..].fill(Complex::default());
            let work = self.inverse.get_scratch_len();
            // The only complaint it could make is of a DC or Nyquist bin with an imaginary part, which a real
            // input's spectrum times a real filter's has not (and the inverse ignores).
            let _ = self.inverse.process_with_scratch(&mut s.spectrum_out, &mut s.output, &mut s.work[..work]);
            let (head, tail) = s.output.split_at(n_out);
            out.extend(head.iter().zip(overlap.iter()).map(|(h, o)| h + o));
            overlap.copy_from_slice(tail);
        });
    }
}

/// Blackman-Harris window at `x` in [0, 1].
fn blackman_harris(x: f64) -> f64 {
    let a = std::f64::consts::TAU * x;
    0.35875 - 0.48829 * a.cos() + 0.14128 * (2.0 * a).cos() - 0.01168 * (3.0 * a).cos()
}

/// How a stream filters: an FFT filter's design and the stream's overlap, or a sinc interpolator of its own.
enum Filter {
    Fft { design: Arc<Design>, overlap: Vec<f32> },
    Sinc { inner: Option<Box<dyn Resampler<f32>>>, scratch: Vec<f32>, bytes: usize, pooled: bool },
}

/// Resamples one contiguous stretch of mono audio from `rate_in` to `rate_out`.
///
/// Input is buffered into fixed blocks, so feeding a stream in 1.3 s chunks or in one piece yields the same samples.
/// The filter's start-up delay is trimmed and `finish` flushes its tail, so the output of a stretch of `n` input
/// samples is exactly `ceil(n * rate_out / rate_in)` samples, aligned with the input's first sample.
pub struct StreamResampler {
    filter: Filter,
    block: usize,
    rate_in: u64,
    rate_out: u64,
    pending: Vec<f32>,
    to_skip: usize,
    total_in: u64,
    total_out: u64,
}

impl StreamResampler {
    /// A resampler from `rate_in` to `rate_out` Hz: FFT-based for rational ratios with small terms, windowed sinc
    /// otherwise; Blackman-Harris anti-aliasing either way.
    pub fn new(rate_in: u32, rate_out: u32) -> Result<Self, Error> {
        Self::make(rate_in, rate_out, false)
    }

    /// Like [`StreamResampler::new`], for a thread that resamples stretch after stretch (a segmenting worker): a
    /// sinc filter of a stretch that ended on this thread is reused, reset — the output is the same as a new one's —
    /// and this one's is kept for the next when it is dropped, while the filters kept take at most [`IDLE_BYTES`].
    /// (FFT filters share their design whichever way they are made.)
    pub fn reusing(rate_in: u32, rate_out: u32) -> Result<Self, Error> {
        Self::make(rate_in, rate_out, true)
    }

    fn make(rate_in: u32, rate_out: u32, pooled: bool) -> Result<Self, Error> {
        if rate_in == 0 || rate_out == 0 {
            return Err(Error::Resample(format!("cannot resample {rate_in} Hz to {rate_out} Hz: a rate of 0")));
        }
        let (filter, block, to_skip) = if reduced(rate_in, rate_out).0 <= MAX_FFT_RATIO_TERM as usize {
            let design = Design::shared(rate_in, rate_out);
            let (block, to_skip) = (design.block_in, design.block_out / 2);
            (Filter::Fft { overlap: vec![0.0; design.block_out], design }, block, to_skip)
        } else {
            let reused = pooled
                .then(|| {
                    IDLE.with_borrow_mut(|idle| {
                        let at = idle.iter().position(|i| i.rates == (rate_in, rate_out))?;
                        Some(idle.swap_remove(at))
                    })
                })
                .flatten();
            let (inner, bytes) = match reused {
                Some(mut idle) => {
                    idle.filter.reset();
                    (idle.filter, idle.bytes)
                }
                None => Self::sinc(rate_in, rate_out)?,
            };
            let (scratch, to_skip) = (vec![0.0; inner.output_frames_max()], inner.output_delay());
            (Filter::Sinc { inner: Some(inner), scratch, bytes, pooled }, BLOCK, to_skip)
        };
        Ok(StreamResampler {
            filter,
            block,
            rate_in: u64::from(rate_in),
            rate_out: u64::from(rate_out),
            pending: Vec::new(),
            to_skip,
            total_in: 0,
            total_out: 0,
        })
    }

    /// A new sinc interpolator from `rate_in` to `rate_out` Hz, and the memory it holds.
    fn sinc(rate_in: u32, rate_out: u32) -> Result<(Box<dyn Resampler<f32>>, usize), Error> {
        let parameters = SincInterpolationParameters {
            sinc_len: 256,
            f_cutoff: None,
            oversampling_factor: 256,
            interpolation: SincInterpolationType::Cubic,
            window: WindowFunction::BlackmanHarris2,
        };
        let ratio = f64::from(rate_out) / f64::from(rate_in);
        let inner = Async::<f32>::new_sinc(ratio, 1.0, &parameters, BLOCK, 1, FixedAsync::Input)
            .map_err(|e| Error::Resample(format!("cannot resample {rate_in} Hz to {rate_out} Hz: {e}")))?;
        // Its table of 256 × 256 coefficients, a few blocks in and out, and what rubato and rustfft allocate besides.
        let bytes = 256 * 256 * 4 + 2 * (BLOCK + inner.output_frames_max()) * 4 + SINC_FIXED_BYTES;
        Ok((Box::new(inner), bytes))
    }

    /// Memory it holds, estimated: its buffers and its own filter state (an FFT filter's design and scratch are the
    /// thread's, see [`DESIGN_BYTES`]).
    pub fn bytes(&self) -> usize {
        let own = match &self.filter {
            Filter::Fft { overlap, .. } => overlap.capacity() * std::mem::size_of::<f32>(),
            Filter::Sinc { scratch, bytes, .. } => scratch.capacity() * std::mem::size_of::<f32>() + bytes,
        };
        self.pending.capacity() * std::mem::size_of::<f32>() + own + STREAM_FIXED_BYTES
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
        while self.pending.len() - start >= self.block {
            self.run_block(start, self.block, None, out)?;
            start += self.block;
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

    /// Filters `len` pending frames from `start` (`partial`: fewer than a block, padded with silence).
    fn run_block(&mut self, start: usize, len: usize, partial: Option<usize>, out: &mut Vec<f32>) -> Result<(), Error> {
        let padded;
        let block: &[f32] = if partial.is_some() {
            // A partial call still reads a whole block's worth of frames.
            padded = {
                let mut v = vec![0.0; self.block];
                v[..len].copy_from_slice(&self.pending[start..start + len]);
                v
            };
            &padded
        } else {
            &self.pending[start..start + len]
        };
        let before = out.len();
        match &mut self.filter {
            Filter::Fft { design, overlap } => design.run(block, overlap, out),
            Filter::Sinc { inner, scratch, .. } => {
                let input = InterleavedSlice::new(block, 1, block.len()).map_err(|e| Error::Resample(e.to_string()))?;
                let frames = scratch.len();
                let mut output =
                    InterleavedSlice::new_mut(scratch, 1, frames).map_err(|e| Error::Resample(e.to_string()))?;
                let indexing = partial.map(|n| Indexing::new().partial_len(n));
                let (_, produced) = inner
                    .as_mut()
                    .expect("present until dropped")
                    .process_into_buffer(&input, &mut output, indexing.as_ref())
                    .map_err(|e| Error::Resample(e.to_string()))?;
                out.extend_from_slice(&scratch[..produced]);
            }
        }
        // The filter's delay: its first output frames come before the input's first frame.
        let produced = out.len() - before;
        let skip = self.to_skip.min(produced);
        out.drain(before..before + skip);
        self.to_skip -= skip;
        self.total_out += (produced - skip) as u64;
        Ok(())
    }
}

impl Drop for StreamResampler {
    /// Keeps the sinc filter of one made [`StreamResampler::reusing`] for the next stretch at the same rates on this
    /// thread, while the filters kept take at most [`IDLE_BYTES`].
    fn drop(&mut self) {
        let rates = (self.rate_in as u32, self.rate_out as u32);
        let Filter::Sinc { inner, bytes, pooled: true, .. } = &mut self.filter else { return };
        let Some(filter) = inner.take() else { return };
        let bytes = *bytes;
        // A thread being torn down has no pool left: the filter is then simply dropped.
        let _ = IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            if idle.iter().map(|i| i.bytes).sum::<usize>() + bytes <= IDLE_BYTES {
                idle.push(Idle { rates, filter, bytes });
            }
        });
    }
}

/// What a stream takes besides its buffers, as measured in resident memory
/// (`tests::r15_a_stream_costs_in_resident_memory_what_it_counts`): the allocator's slack around them.
const STREAM_FIXED_BYTES: usize = 8 << 10;

/// What a sinc filter takes besides its table and blocks: allocations rubato makes per filter.
const SINC_FIXED_BYTES: usize = 80 << 10;

/// `rate_in` and `rate_out` divided by their greatest common divisor.
fn reduced(rate_in: u32, rate_out: u32) -> Reduced {
    let g = gcd(rate_in, rate_out);
    ((rate_in / g) as usize, (rate_out / g) as usize)
}

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

    fn largest_deviation(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|x| x * x).sum::<f32>() / x.len() as f32).sqrt()
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
            let reusing =
                |input: &[f32], chunk: usize| feed(StreamResampler::reusing(rate, 32_000).unwrap(), input, chunk);
            // The first stretch leaves its sinc filter behind on this thread (an FFT filter's design stays shared);
            // the second takes it.
            let _ = reusing(&first, 1_301);
            let kept = IDLE.with_borrow(|idle| idle.iter().any(|i| i.rates == (rate, 32_000)));
            let shared = DESIGNS.with_borrow(|designs| designs.iter().any(|(k, _)| *k == reduced(rate, 32_000)));
            assert!(kept != shared, "{rate} Hz: a sinc filter kept ({kept}) or an FFT design shared ({shared})");
            assert_eq!(reusing(&second, 997), fresh, "{rate} Hz");
            assert!(IDLE.with_borrow(|idle| idle.iter().map(|i| i.bytes).sum::<usize>()) <= IDLE_BYTES);
        }
    }

    #[test]
    fn r15_streams_at_the_same_rates_share_one_design_and_own_only_their_overlap() {
        let (a, b) = (StreamResampler::new(1_000, 32_000).unwrap(), StreamResampler::new(1_000, 32_000).unwrap());
        let (Filter::Fft { design: da, .. }, Filter::Fft { design: db, .. }) = (&a.filter, &b.filter) else {
            panic!("1 kHz to 32 kHz is resampled by FFT")
        };
        assert!(Arc::ptr_eq(da, db));
        assert_eq!((da.block_in, da.block_out), (256, 8_192));
        // A 1 kHz stream holds 32 KiB of overlap (and no input yet).
        assert_eq!(a.bytes(), 8_192 * 4 + STREAM_FIXED_BYTES);
        let Filter::Fft { design, .. } = &StreamResampler::new(48_000, 32_000).unwrap().filter else { panic!() };
        assert_eq!((design.block_in, design.block_out), (960, 640));
    }

    #[test]
    fn r15_designs_are_shared_by_reduced_rates_and_kept_within_their_bytes() {
        let design = |rate_in, rate_out| match &StreamResampler::new(rate_in, rate_out).unwrap().filter {
            Filter::Fft { design, .. } => design.clone(),
            Filter::Sinc { .. } => panic!("{rate_in} -> {rate_out} Hz is resampled by FFT"),
        };
        assert!(Arc::ptr_eq(&design(48_000, 32_000), &design(96_000, 64_000)));
        // Many rate pairs, the extremes among them: the designs kept stay within their bytes, the latest kept.
        let held = design(1_000, 32_000);
        for rate_in in (2_000..=768_000).step_by(7_000) {
            let _ = design(rate_in, 1_000);
            let (bytes, latest) =
                DESIGNS.with_borrow(|d| (d.iter().map(|(_, d)| d.bytes()).sum::<usize>(), d.last().unwrap().0));
            assert!(bytes <= DESIGN_BYTES, "{bytes} bytes of designs");
            assert_eq!(latest, reduced(rate_in, 1_000));
        }
        // A stream whose design was let go keeps it, and filters as a new one does.
        let input = tone(1_000, 300.0, 1.0);
        let mut r = StreamResampler::new(1_000, 32_000).unwrap();
        r.filter = Filter::Fft { overlap: vec![0.0; held.block_out], design: held };
        assert_eq!(feed(r, &input, 333), resample_in_chunks(&input, 1_000, 333));
    }

    #[test]
    fn r15_a_low_rate_tone_keeps_its_frequency_and_phase_and_what_is_above_the_band_goes() {
        for (rate, hz) in [(1_000, 180.0), (8_000, 1_500.0), (16_000, 5_000.0), (22_050, 7_000.0)] {
            let out = resample_in_chunks(&tone(rate, hz, 2.0), rate, 333);
            let reference = tone(32_000, hz, 2.0);
            let worst = largest_deviation(&out[8_000..56_000], &reference[8_000..56_000]);
            assert!(worst < 0.01, "{rate} Hz, a {hz} Hz tone: largest deviation {worst}");
        }
        // Downsampling: a 20 kHz tone at 48 kHz lies above 32 kHz's Nyquist frequency and must not alias into it.
        let out = resample_in_chunks(&tone(48_000, 20_000.0, 1.0), 48_000, 4_800);
        let left = rms(&out[4_000..28_000]);
        assert!(left < 1e-3, "a 20 kHz tone resampled to 32 kHz leaves {left} RMS");
        // The extremes of the rates chorus accepts keep a filter long enough for their band: 96 kHz to a 1 kHz model
        // keeps a 200 Hz tone and removes a 10 kHz one; 1 kHz to 768 kHz keeps a 300 Hz tone.
        let down = |hz: f32| feed(StreamResampler::new(96_000, 1_000).unwrap(), &tone(96_000, hz, 4.0), 96_000);
        let kept = down(200.0);
        let worst = largest_deviation(&kept[1_000..3_000], &tone(1_000, 200.0, 4.0)[1_000..3_000]);
        assert!(worst < 0.01, "96 kHz to 1 kHz, a 200 Hz tone: largest deviation {worst}");
        let gone = down(10_000.0);
        let left = rms(&gone[1_000..3_000]);
        assert!(left < 1e-3, "96 kHz to 1 kHz, a 10 kHz tone leaves {left} RMS");
        let out = feed(StreamResampler::new(1_000, 768_000).unwrap(), &tone(1_000, 300.0, 2.0), 1_000);
        let reference = tone(768_000, 300.0, 2.0);
        let worst = largest_deviation(&out[200_000..1_300_000], &reference[200_000..1_300_000]);
        assert!(worst < 0.01, "1 kHz to 768 kHz, a 300 Hz tone: largest deviation {worst}");
    }

    /// The rates the child measures, from the parent below; the child runs alone in a process of its own.
    const MEASURE_RATES: &str = "CHORUS_TEST_FILTER_RATES";

    fn resident_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() << 10
    }

    /// Not a test on its own: in the process `r15_a_stream_costs_in_resident_memory_what_it_counts` starts, makes
    /// filters at the rates it is given, each fed a few blocks, and prints the resident memory each one added.
    #[test]
    fn r15_measure_streams_in_a_process_of_their_own() {
        let Ok(rates) = std::env::var(MEASURE_RATES) else { return };
        let (rate_in, rate_out) = rates.split_once(':').unwrap();
        let (rate_in, rate_out): (u32, u32) = (rate_in.parse().unwrap(), rate_out.parse().unwrap());
        let input = tone(rate_in, 300.0, 3.5 * BLOCK as f32 / rate_in as f32);
        let n = 48;
        // The design and the thread's scratch are made once, by the first stream.
        let mut first = StreamResampler::new(rate_in, rate_out).unwrap();
        let mut out = Vec::new();
        first.push(&input, &mut out).unwrap();
        let before = resident_bytes();
        let mut kept = Vec::with_capacity(n);
        for _ in 0..n {
            let mut r = StreamResampler::new(rate_in, rate_out).unwrap();
            r.push(&input, &mut out).unwrap();
            out.clear();
            kept.push(r);
        }
        println!("resident bytes per stream: {}", (resident_bytes() - before) / n);
        drop(kept);
    }

    #[test]
    fn r15_a_stream_costs_in_resident_memory_what_it_counts() {
        for (rate_in, rate_out) in
            [(1_000, 32_000), (8_000, 32_000), (16_000, 32_000), (48_000, 32_000), (44_101, 32_000)]
        {
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "resample::tests::r15_measure_streams_in_a_process_of_their_own", "--nocapture"])
                .env(MEASURE_RATES, format!("{rate_in}:{rate_out}"))
                .output()
                .unwrap();
            let stdout = String::from_utf8(child.stdout).unwrap();
            let measured: usize = stdout
                .lines()
                .find_map(|l| l.strip_prefix("resident bytes per stream: "))
                .unwrap_or_else(|| panic!("no measurement: {stdout}"))
                .parse()
                .unwrap();
            // Counted as the child's streams stand: fed the same input.
            let mut fed = StreamResampler::new(rate_in, rate_out).unwrap();
            fed.push(&tone(rate_in, 300.0, 3.5 * BLOCK as f32 / rate_in as f32), &mut Vec::new()).unwrap();
            let counted = fed.bytes();
            let ratio = counted as f64 / measured as f64;
            println!("{rate_in} -> {rate_out} Hz: counted {counted}, resident {measured} ({ratio:.2})");
            // Within 20 %, or within the allocator's slack for a stream of a few tens of KiB.
            let off = counted.abs_diff(measured);
            assert!(
                (0.8..=1.2).contains(&ratio) || off <= STREAM_FIXED_BYTES,
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
        let worst = largest_deviation(&whole[2_000..60_000], &reference[2_000..60_000]);
        // The sinc filter's delay is fractional; trimming whole samples leaves a phase offset of a fraction of one.
        assert!(worst < 0.02, "largest deviation {worst}");
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_phase() {
        let input = tone(48_000, 1000.0, 1.0);
        let out = resample_in_chunks(&input, 48_000, 4_800);
        let reference = tone(32_000, 1000.0, 1.0);
        // Away from the edges the resampled tone matches a tone generated at 32 kHz.
        let worst = largest_deviation(&out[2_000..30_000], &reference[2_000..30_000]);
        assert!(worst < 0.01, "largest deviation {worst}");
    }
}
