//! Log-mel spectrograms as PNG pictures with a time and a frequency axis: `chorus spectrogram`, `chorus query
//! --spectrograms` and the search page draw them from the audio the archive keeps with each segment.
//!
//! The analysis is the usual one for bird sound: frames every 10 ms, a Hann window of about 32 ms (the power of two
//! at or above it), power on `BANDS` triangular mel bands (HTK mel scale) from 60 Hz to half the sample rate,
//! in dB, shown over the 80 dB below the loudest cell. Each band is `BAND_ROWS` pixel rows tall and each frame
//! one pixel column; the low frequencies are at the bottom.

use std::sync::Arc;

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

/// Mel bands.
pub const BANDS: usize = 128;
/// Pixel rows per mel band.
pub const BAND_ROWS: usize = 2;
/// Lowest frequency shown (Hz).
pub const MIN_HZ: f32 = 60.0;
/// Dynamic range shown (dB below the loudest cell).
pub const RANGE_DB: f32 = 80.0;
/// Longest audio drawn: one pixel column per 10 ms, so 60 s is 6 000 columns.
pub const MAX_SECONDS: f64 = 60.0;

/// Space around the plot: left (frequency labels), right, top, bottom (time labels).
const MARGIN: (usize, usize, usize, usize) = (44, 10, 12, 22);

fn hz_to_mel(hz: f32) -> f32 {
    2595.0 * (1.0 + hz / 700.0).log10()
}

fn mel_to_hz(mel: f32) -> f32 {
    700.0 * (10f32.powf(mel / 2595.0) - 1.0)
}

/// A log-mel spectrogram: `BANDS` values (dB) per frame.
#[derive(Clone, Debug)]
pub struct Spectrogram {
    sample_rate: u32,
    hop: usize,
    frames: usize,
    /// Frame-major: `db[frame * BANDS + band]`.
    db: Vec<f32>,
}

impl Spectrogram {
    /// Analyses mono `samples` at `sample_rate`.
    pub fn compute(samples: &[f32], sample_rate: u32) -> Spectrogram {
        let hop = (sample_rate as usize / 100).max(1);
        let n_fft = ((sample_rate as usize * 32).div_ceil(1000)).next_power_of_two().max(16);
        let frames = samples.len().div_ceil(hop).max(1);
        let window: Vec<f32> =
            (0..n_fft).map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / n_fft as f32).cos()).collect();
        let filters = mel_filters(sample_rate, n_fft);
        let fft: Arc<dyn rustfft::Fft<f32>> = FftPlanner::new().plan_fft_forward(n_fft);
        let mut buffer = vec![Complex::new(0.0, 0.0); n_fft];
        let mut power = vec![0.0f32; n_fft / 2 + 1];
        let mut db = Vec::with_capacity(frames * BANDS);
        for frame in 0..frames {
            let centre = (frame * hop) as isize;
            for (i, slot) in buffer.iter_mut().enumerate() {
                let at = centre - (n_fft / 2) as isize + i as isize;
                let x = if at >= 0 { samples.get(at as usize).copied().unwrap_or(0.0) } else { 0.0 };
                *slot = Complex::new(x * window[i], 0.0);
            }
            fft.process(&mut buffer);
            for (p, c) in power.iter_mut().zip(&buffer) {
                *p = c.norm_sqr();
            }
            for filter in &filters {
                let energy: f32 = filter.iter().map(|&(bin, weight)| power[bin] * weight).sum();
                db.push(10.0 * energy.max(1e-10).log10());
            }
        }
        Spectrogram { sample_rate, hop, frames, db }
    }

    /// Frames (pixel columns).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Seconds per frame.
    pub fn seconds_per_frame(&self) -> f64 {
        self.hop as f64 / f64::from(self.sample_rate)
    }

    /// Highest frequency shown (Hz): half the sample rate.
    pub fn max_hz(&self) -> f32 {
        self.sample_rate as f32 / 2.0
    }

    /// The mel band whose centre is nearest `hz`.
    pub fn band_of(&self, hz: f32) -> usize {
        let (lo, hi) = (hz_to_mel(MIN_HZ), hz_to_mel(self.max_hz()));
        let step = (hi - lo) / (BANDS + 1) as f32;
        (((hz_to_mel(hz) - lo) / step).round() as isize - 1).clamp(0, BANDS as isize - 1) as usize
    }

    /// The centre frequency (Hz) of mel band `band`.
    pub fn band_hz(&self, band: usize) -> f32 {
        let (lo, hi) = (hz_to_mel(MIN_HZ), hz_to_mel(self.max_hz()));
        mel_to_hz(lo + (hi - lo) * (band + 1) as f32 / (BANDS + 1) as f32)
    }

    /// The value (dB) of `band` in `frame`.
    pub fn db(&self, frame: usize, band: usize) -> f32 {
        self.db[frame * BANDS + band]
    }
}

/// Triangular mel filters over the FFT bins: for each band, `(bin, weight)` pairs.
fn mel_filters(sample_rate: u32, n_fft: usize) -> Vec<Vec<(usize, f32)>> {
    let (lo, hi) = (hz_to_mel(MIN_HZ), hz_to_mel(sample_rate as f32 / 2.0));
    let edges: Vec<f32> = (0..BANDS + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f32 / (BANDS + 1) as f32)).collect();
    let bin_hz = sample_rate as f32 / n_fft as f32;
    (0..BANDS)
        .map(|band| {
            let (left, centre, right) = (edges[band], edges[band + 1], edges[band + 2]);
            let mut taps: Vec<(usize, f32)> = (0..=n_fft / 2)
                .filter_map(|bin| {
                    let f = bin as f32 * bin_hz;
                    let w = if f <= centre { (f - left) / (centre - left) } else { (right - f) / (right - centre) };
                    (w > 0.0).then_some((bin, w))
                })
                .collect();
            if taps.is_empty() {
                // Narrower than a bin: the nearest bin stands for the band.
                taps.push((((centre / bin_hz).round() as usize).min(n_fft / 2), 1.0));
            }
            taps
        })
        .collect()
}

/// A rendered picture and where its plot lies in it.
#[derive(Clone, Debug)]
pub struct Picture {
    /// The PNG file.
    pub png: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The plot's left column and top row; it is `frames` wide and `BANDS × BAND_ROWS` tall.
    pub plot: (usize, usize),
}

/// The picture's size for a spectrogram of `frames` frames: `(width, height)`.
pub fn size(frames: usize) -> (usize, usize) {
    let (left, right, top, bottom) = MARGIN;
    (left + frames + right, top + BANDS * BAND_ROWS + bottom)
}

/// The plot row (from the plot's top) of mel band `band`'s upper pixel.
pub fn row_of_band(band: usize) -> usize {
    (BANDS - 1 - band) * BAND_ROWS
}

/// Draws `spectrogram` with its axes as a PNG picture.
pub fn render(spectrogram: &Spectrogram) -> Picture {
    let (width, height) = size(spectrogram.frames);
    let (left, _, top, _) = MARGIN;
    let mut pixels = vec![255u8; width * height * 3];
    let mut put = |x: usize, y: usize, rgb: [u8; 3]| {
        if x < width && y < height {
            pixels[(y * width + x) * 3..][..3].copy_from_slice(&rgb);
        }
    };
    let peak = spectrogram.db.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Silence (every cell at the -100 dB floor) stays dark.
    let bottom = (peak - RANGE_DB).max(-100.0);
    for frame in 0..spectrogram.frames {
        for band in 0..BANDS {
            let level = ((spectrogram.db(frame, band) - bottom) / RANGE_DB).clamp(0.0, 1.0);
            let colour = colour(level);
            for r in 0..BAND_ROWS {
                put(left + frame, top + row_of_band(band) + r, colour);
            }
        }
    }
    let plot_height = BANDS * BAND_ROWS;
    let black = [0, 0, 0];
    // Axes: a frame around the plot.
    for x in left - 1..=left + spectrogram.frames {
        put(x, top - 1, black);
        put(x, top + plot_height, black);
    }
    for y in top - 1..=top + plot_height {
        put(left - 1, y, black);
        put(left + spectrogram.frames, y, black);
    }
    // Frequency ticks at 0.5, 1, 2, 4, 8, 16 ... kHz, placed on the mel scale.
    let mut khz = 0.5f32;
    while khz * 1000.0 <= spectrogram.max_hz() {
        if khz * 1000.0 >= MIN_HZ {
            let y = top + row_of_band(spectrogram.band_of(khz * 1000.0)) + BAND_ROWS / 2;
            for x in left - 4..left - 1 {
                put(x, y, black);
            }
            let label = if khz < 1.0 { format!("{:.0}", khz * 1000.0) } else { format!("{khz:.0}k") };
            let text_width = label.len() * 6;
            text(&mut put, left - 6 - text_width, y.saturating_sub(3), &label);
        }
        khz *= 2.0;
    }
    text(&mut put, 2, 2, "Hz");
    // Time ticks every second (every 5 s beyond 20 s).
    let seconds = spectrogram.frames as f64 * spectrogram.seconds_per_frame();
    let step = if seconds > 20.0 { 5 } else { 1 };
    let mut s = 0;
    while f64::from(s) <= seconds + 1e-9 {
        let x = left + ((f64::from(s) / spectrogram.seconds_per_frame()).round() as usize).min(spectrogram.frames);
        for y in top + plot_height + 1..top + plot_height + 4 {
            put(x, y, black);
        }
        let label = format!("{s}s");
        text(&mut put, x.saturating_sub(label.len() * 3), top + plot_height + 6, &label);
        s += step;
    }
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("writing to memory cannot fail");
        writer.write_image_data(&pixels).expect("the picture has width × height pixels");
    }
    Picture { png, width, height, plot: (left, top) }
}

/// A dark-to-bright colour map (black, purple, red, orange, pale yellow) for `level` in [0, 1].
fn colour(level: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] =
        [[0.0, 0.0, 4.0], [81.0, 18.0, 124.0], [183.0, 55.0, 121.0], [252.0, 137.0, 97.0], [252.0, 253.0, 191.0]];
    let at = level * (STOPS.len() - 1) as f32;
    let i = (at.floor() as usize).min(STOPS.len() - 2);
    let t = at - i as f32;
    let mix = |c: usize| (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * t).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// 5 × 7 glyphs of the characters the axes use, one row per byte (bit 4 is the left column).
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1E, 0x01, 0x01, 0x0E, 0x01, 0x01, 0x1E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'z' => [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        's' => [0x00, 0x00, 0x0F, 0x10, 0x0E, 0x01, 0x1E],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        _ => [0; 7],
    }
}

fn text(put: &mut impl FnMut(usize, usize, [u8; 3]), x: usize, y: usize, s: &str) {
    for (i, c) in s.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    put(x + i * 6 + col, y + row, [0, 0, 0]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, seconds: f32, rate: u32) -> Vec<f32> {
        (0..(seconds * rate as f32) as usize)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    /// The plot row (from the picture's top) that is brightest on average across the plot.
    pub(crate) fn brightest_row(png: &[u8], plot: (usize, usize), frames: usize) -> usize {
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        let width = info.width as usize;
        let (left, top) = plot;
        (top..top + BANDS * BAND_ROWS)
            .max_by_key(|&y| {
                (left..left + frames)
                    .map(|x| pixels[(y * width + x) * 3..][..3].iter().map(|&v| u32::from(v)).sum::<u32>())
                    .sum::<u32>()
            })
            .unwrap()
    }

    #[test]
    fn a_tone_lands_in_the_row_of_its_frequency() {
        for (hz, rate) in [(3_000.0, 32_000), (1_000.0, 32_000), (6_500.0, 48_000), (440.0, 16_000)] {
            let spectrogram = Spectrogram::compute(&tone(hz, 5.0, rate), rate);
            assert_eq!(spectrogram.frames(), 500);
            let picture = render(&spectrogram);
            assert_eq!((picture.width, picture.height), size(500));
            let band = spectrogram.band_of(hz);
            let centre = spectrogram.band_hz(band);
            assert!((centre - hz).abs() / hz < 0.05, "{hz} Hz maps to band {band} centred on {centre} Hz");
            let row = brightest_row(&picture.png, picture.plot, 500) - picture.plot.1;
            let expected = row_of_band(band);
            assert!(row.abs_diff(expected) <= BAND_ROWS, "{hz} Hz at {rate} Hz: row {row}, expected {expected}");
        }
    }

    #[test]
    fn silence_and_short_audio_draw_without_failing() {
        let picture = render(&Spectrogram::compute(&[0.0; 10], 32_000));
        assert_eq!((picture.width, picture.height), size(1));
        let picture = render(&Spectrogram::compute(&[], 32_000));
        assert_eq!((picture.width, picture.height), size(1));
    }
}
