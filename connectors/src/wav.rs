//! WAV files: decoding chunk payloads (PCM 8/16/24/32-bit or float32, any channel count, downmixed to mono) with a
//! reason for every rejection, and reading and re-chunking files for producers.

use std::io::Cursor;
use std::path::Path;

use chorus_operators::cause::Cause;
use hound::{SampleFormat, WavReader, WavSpec, WavWriter};

/// Limits on what a chunk may contain.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeLimits {
    /// Lowest accepted sample rate in Hz.
    pub min_rate: u32,
    /// Highest accepted sample rate in Hz.
    pub max_rate: u32,
    /// Most channels.
    pub max_channels: u16,
    /// Longest chunk in seconds.
    pub max_seconds: f64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { min_rate: 1_000, max_rate: 768_000, max_channels: 64, max_seconds: 3_600.0 }
    }
}

/// Decoded mono audio.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Channels in the file (the samples are their mean).
    pub channels: u16,
    /// Mono samples, finite.
    pub samples: Vec<f32>,
}

/// Why a payload is not usable audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why, for machines (`empty`, `not_wav`, `unsupported_format`, `truncated`, `sample_rate`, `channels`,
    /// `no_audio`, `too_long`, `non_finite`).
    pub cause: Cause,
    /// For people.
    pub reason: String,
}

fn reject(cause: Cause, reason: impl Into<String>) -> Rejection {
    Rejection { cause, reason: reason.into() }
}

/// Decodes one WAV file held in memory.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Audio, Rejection> {
    if bytes.is_empty() {
        return Err(reject(Cause::Empty, "the payload is empty (0 bytes)"));
    }
    let is_wave = bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE";
    let rebuilt = is_wave.then(|| without_padded_chunks(bytes)).flatten();
    let bytes = rebuilt.as_deref().unwrap_or(bytes);
    let reader = WavReader::new(Cursor::new(bytes)).map_err(|e| {
        if is_wave {
            // The RIFF header says how long the file is: a shorter payload was cut in transit.
            let declared = u64::from(u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"))) + 8;
            if declared > bytes.len() as u64 {
                let reason = format!("the RIFF header declares {declared} bytes but the payload has {}", bytes.len());
                return reject(Cause::Truncated, reason);
            }
        }
        match e {
            hound::Error::Unsupported => {
                reject(Cause::UnsupportedFormat, "unsupported WAV encoding (need PCM or float32)")
            }
            hound::Error::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                reject(Cause::Truncated, format!("the WAV header is cut short ({} bytes in all)", bytes.len()))
            }
            other if is_wave => reject(Cause::NotWav, format!("a damaged WAV file: {other}")),
            other => reject(Cause::NotWav, format!("not a WAV file: {other}")),
        }
    })?;
    let spec = reader.spec();
    if !(limits.min_rate..=limits.max_rate).contains(&spec.sample_rate) {
        return Err(reject(
            Cause::SampleRate,
            format!("sample rate {} Hz is outside {}..={} Hz", spec.sample_rate, limits.min_rate, limits.max_rate),
        ));
    }
    if spec.channels == 0 || spec.channels > limits.max_channels {
        return Err(reject(
            Cause::Channels,
            format!("{} channels (1..={} accepted)", spec.channels, limits.max_channels),
        ));
    }
    match (spec.sample_format, spec.bits_per_sample) {
        (SampleFormat::Int, 8 | 16 | 24 | 32) | (SampleFormat::Float, 32) => {}
        (format, bits) => {
            return Err(reject(
                Cause::UnsupportedFormat,
                format!("{bits}-bit {format:?} samples (need PCM 8/16/24/32 or float32)"),
            ));
        }
    }
    let frames = reader.duration() as u64;
    if frames == 0 {
        return Err(reject(Cause::NoAudio, "the WAV file holds no samples"));
    }
    let seconds = frames as f64 / f64::from(spec.sample_rate);
    if seconds > limits.max_seconds {
        return Err(reject(
            Cause::TooLong,
            format!("{seconds:.1} s of audio exceeds the {} s limit", limits.max_seconds),
        ));
    }
    let channels = usize::from(spec.channels);
    let declared = frames as usize * channels;
    let truncated = |read: usize| {
        reject(
            Cause::Truncated,
            format!("the header declares {frames} frames but the data ends after {}", read / channels),
        )
    };
    let container = block_align(bytes).map(|align| usize::from(align) / channels);
    // hound has read the header and stopped at the first byte of the data chunk.
    let data_start = reader.into_inner().position() as usize;
    let data = &bytes[data_start.min(bytes.len())..];
    let interleaved = match container {
        Some(width) if width == usize::from(spec.bits_per_sample).div_ceil(8) => {
            if data.len() < declared * width {
                return Err(truncated(data.len() / width));
            }
            bulk_samples(&data[..declared * width], spec.sample_format, width)
        }
        // An unusual layout (e.g. 20 valid bits in a 32-bit container): hound reads it sample by sample.
        _ => sample_by_sample(bytes, spec, declared, truncated)?,
    };
    if spec.sample_format == SampleFormat::Float
        && let Some(at) = interleaved.iter().position(|x| !x.is_finite())
    {
        let value = interleaved[at];
        return Err(reject(
            Cause::NonFinite,
            format!("sample {} of channel {} is {value}", at / channels, at % channels),
        ));
    }
    let mut samples = interleaved;
    if channels > 1 {
        // Downmix in place: frame i is written to slot i, which its own samples have already been read from.
        let gain = 1.0 / channels as f32;
        let frames = samples.len() / channels;
        for i in 0..frames {
            samples[i] = samples[i * channels..(i + 1) * channels].iter().sum::<f32>() * gain;
        }
        samples.truncate(frames);
    }
    Ok(Audio { sample_rate: spec.sample_rate, channels: spec.channels, samples })
}

/// Converts a whole data chunk of `width`-byte little-endian samples at once.
fn bulk_samples(data: &[u8], format: SampleFormat, width: usize) -> Vec<f32> {
    match (format, width) {
        (SampleFormat::Float, _) => {
            data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        (SampleFormat::Int, 1) => data.iter().map(|&b| (f32::from(b) - 128.0) * (1.0 / 128.0)).collect(),
        (SampleFormat::Int, 2) => {
            data.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) * (1.0 / 32_768.0)).collect()
        }
        (SampleFormat::Int, 3) => data
            .chunks_exact(3)
            .map(|b| (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 * (1.0 / 8_388_608.0))
            .collect(),
        (SampleFormat::Int, _) => data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 * (1.0 / 2_147_483_648.0))
            .collect(),
    }
}

/// RIFF pads a chunk of odd length with one byte, which hound does not skip: after an odd-length chunk before the
/// audio (a `LIST` of metadata, say) it reads the next chunk's header one byte off and fails. For such a file this
/// returns the file rebuilt from its `fmt ` and `data` chunks alone; `None` for every other file (the common case
/// costs one walk over the chunk headers).
fn without_padded_chunks(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut at = 12;
    let (mut fmt, mut padded) = (None, false);
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        match &bytes[at..at + 4] {
            b"data" => {
                let fmt: &[u8] = fmt.filter(|_| padded)?;
                // The RIFF size keeps saying how much of the file was sent, less what was left out.
                let declared = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
                let declared = declared.saturating_sub((at - 12 - fmt.len()) as u32);
                let mut out = Vec::with_capacity(12 + fmt.len() + bytes.len() - at);
                out.extend_from_slice(b"RIFF");
                out.extend_from_slice(&declared.to_le_bytes());
                out.extend_from_slice(b"WAVE");
                out.extend_from_slice(fmt);
                out.extend_from_slice(&bytes[at..]);
                return Some(out);
            }
            b"fmt " => fmt = Some(bytes.get(at..at + 8 + size)?),
            _ => {}
        }
        padded |= size % 2 == 1;
        at = at.checked_add(8 + size + (size & 1))?;
    }
    None
}

/// The `fmt ` chunk's channels, sample rate and block alignment (bytes per frame), and where the samples start (the
/// end of the file if no `data` chunk is found), walking the RIFF chunks.
fn format(bytes: &[u8]) -> Option<(u16, u32, u16, usize)> {
    let (mut at, mut format, mut data) = (12, None, None);
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        match &bytes[at..at + 4] {
            b"fmt " => {
                let field = bytes.get(at + 8..at + 22)?;
                let channels = u16::from_le_bytes([field[2], field[3]]);
                let rate = u32::from_le_bytes([field[4], field[5], field[6], field[7]]);
                format = Some((channels, rate, u16::from_le_bytes([field[12], field[13]])));
            }
            b"data" => data = Some(at + 8),
            _ => {}
        }
        if let (Some((channels, rate, align)), Some(data)) = (format, data) {
            return Some((channels, rate, align, data));
        }
        at = at.checked_add(8 + size + (size & 1))?;
    }
    format.map(|(channels, rate, align)| (channels, rate, align, data.unwrap_or(bytes.len())))
}

/// The block alignment (bytes per frame) of the `fmt ` chunk.
fn block_align(bytes: &[u8]) -> Option<u16> {
    format(bytes).map(|(_, _, align, _)| align)
}

/// Memory a payload costs once read and decoded, estimated from its header alone: the message as the Kafka client
/// and the dataflow hold it (twice its bytes), its samples decoded to f32 at their own rate, and `copies` copies of
/// them at `model_rate` (resampled, buffered by the segmenter, cut into windows — more than one copy when windows
/// overlap). Low-rate, low-width audio costs far more per payload byte than it weighs: 8-bit 1 kHz audio for a
/// 32 kHz model, about 400 bytes per byte. A payload that is not a readable WAV file costs eight times its bytes.
pub fn memory_cost(bytes: &[u8], model_rate: u32, copies: usize) -> usize {
    let fallback = bytes.len() * 8;
    let Some((channels, rate, align, data)) = format(bytes).filter(|&(c, r, a, _)| c > 0 && r > 0 && a > 0) else {
        return fallback;
    };
    let frames = bytes.len().saturating_sub(data) / usize::from(align);
    let decoded = frames * usize::from(channels) * std::mem::size_of::<f32>();
    let at_model_rate = (frames as u64 * u64::from(model_rate) / u64::from(rate)) as usize;
    2 * bytes.len() + decoded + copies * at_model_rate * std::mem::size_of::<f32>()
}

fn sample_by_sample(
    bytes: &[u8],
    spec: WavSpec,
    declared: usize,
    truncated: impl Fn(usize) -> Rejection,
) -> Result<Vec<f32>, Rejection> {
    let reader = WavReader::new(Cursor::new(bytes)).map_err(|e| reject(Cause::NotWav, e.to_string()))?;
    // Never trust the header for an allocation: the payload bounds what can really be there.
    let mut interleaved = Vec::with_capacity(declared.min(bytes.len()));
    match spec.sample_format {
        SampleFormat::Float => {
            for sample in reader.into_samples::<f32>() {
                interleaved.push(sample.map_err(|_| truncated(interleaved.len()))?);
            }
        }
        SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            for sample in reader.into_samples::<i32>() {
                let sample = sample.map_err(|_| truncated(interleaved.len()))?;
                interleaved.push(sample as f32 * scale);
            }
        }
    }
    if interleaved.len() < declared {
        return Err(truncated(interleaved.len()));
    }
    Ok(interleaved)
}

/// The samples of a WAV file in their stored encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum Samples {
    /// Integer PCM, interleaved.
    Int(Vec<i32>),
    /// Float, interleaved.
    Float(Vec<f32>),
}

impl Samples {
    fn len(&self) -> usize {
        match self {
            Samples::Int(v) => v.len(),
            Samples::Float(v) => v.len(),
        }
    }
}

/// A WAV file read whole, kept in its own encoding so chunks can be written back without conversion.
#[derive(Clone, Debug, PartialEq)]
pub struct WavFile {
    /// Format.
    pub spec: WavSpec,
    /// Interleaved samples.
    pub samples: Samples,
}

impl WavFile {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<WavFile, hound::Error> {
        let mut reader = WavReader::open(path)?;
        let spec = reader.spec();
        let samples = match spec.sample_format {
            SampleFormat::Float => Samples::Float(reader.samples::<f32>().collect::<Result<_, _>>()?),
            SampleFormat::Int => Samples::Int(reader.samples::<i32>().collect::<Result<_, _>>()?),
        };
        Ok(WavFile { spec, samples })
    }

    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.spec.channels.max(1))
    }

    /// Duration in seconds.
    pub fn seconds(&self) -> f64 {
        self.frames() as f64 / f64::from(self.spec.sample_rate)
    }

    /// Bytes one frame takes in the file.
    pub fn bytes_per_frame(&self) -> usize {
        usize::from(self.spec.channels) * usize::from(self.spec.bits_per_sample).div_ceil(8)
    }

    /// Encodes frames `[from, to)` as a WAV file of the same format.
    pub fn encode_frames(&self, from: usize, to: usize) -> Result<Vec<u8>, hound::Error> {
        let channels = usize::from(self.spec.channels);
        let mut out = Cursor::new(Vec::with_capacity(44 + (to - from) * self.bytes_per_frame()));
        {
            let mut writer = WavWriter::new(&mut out, self.spec)?;
            match &self.samples {
                Samples::Int(v) => {
                    v[from * channels..to * channels].iter().try_for_each(|&s| writer.write_sample(s))?
                }
                Samples::Float(v) => {
                    v[from * channels..to * channels].iter().try_for_each(|&s| writer.write_sample(s))?
                }
            }
            writer.finalize()?;
        }
        Ok(out.into_inner())
    }
}

/// Encodes mono 16-bit PCM samples as a WAV file.
pub fn encode_pcm16(sample_rate: u32, samples: &[i16]) -> Vec<u8> {
    let spec = WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: SampleFormat::Int };
    WavFile { spec, samples: Samples::Int(samples.iter().map(|&s| i32::from(s)).collect()) }
        .encode_frames(0, samples.len())
        .expect("writing to memory cannot fail")
}

/// Encodes mono float32 samples as a WAV file.
pub fn encode_f32(sample_rate: u32, samples: &[f32]) -> Vec<u8> {
    let spec = WavSpec { channels: 1, sample_rate, bits_per_sample: 32, sample_format: SampleFormat::Float };
    WavFile { spec, samples: Samples::Float(samples.to_vec()) }
        .encode_frames(0, samples.len())
        .expect("writing to memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(spec: WavSpec, samples: Samples) -> Vec<u8> {
        let file = WavFile { spec, samples };
        file.encode_frames(0, file.frames()).unwrap()
    }

    fn int_spec(bits: u16, channels: u16) -> WavSpec {
        WavSpec { channels, sample_rate: 32_000, bits_per_sample: bits, sample_format: SampleFormat::Int }
    }

    /// `bytes` (a canonical WAV file) with a metadata chunk of `len` bytes before its `fmt ` chunk and another
    /// before its `data` chunk, each padded to an even length as RIFF asks.
    fn with_metadata(bytes: &[u8], len: usize) -> Vec<u8> {
        let chunk = |id: &[u8; 4]| {
            let mut c = id.to_vec();
            c.extend_from_slice(&(len as u32).to_le_bytes());
            c.extend(std::iter::repeat_n(b'x', len));
            if len % 2 == 1 {
                c.push(0);
            }
            c
        };
        let fmt_end = 12 + 8 + u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
        let mut out = bytes[..12].to_vec();
        out.extend(chunk(b"bext"));
        out.extend_from_slice(&bytes[12..fmt_end]);
        out.extend(chunk(b"LIST"));
        out.extend_from_slice(&bytes[fmt_end..]);
        let riff = (out.len() - 8) as u32;
        out[4..8].copy_from_slice(&riff.to_le_bytes());
        out
    }

    #[test]
    fn r15_what_a_payload_costs_follows_its_samples_at_the_models_rate_not_its_bytes() {
        let eight_bit = |rate: u32, frames: usize, channels: u16| {
            let spec = WavSpec { channels, sample_rate: rate, bits_per_sample: 8, sample_format: SampleFormat::Int };
            let samples = Samples::Int(vec![0; frames * usize::from(channels)]);
            WavFile { spec, samples }.encode_frames(0, frames).unwrap()
        };
        // One second of 8-bit 1 kHz mono for a 32 kHz model, three copies at that rate.
        let low = eight_bit(1_000, 1_000, 1);
        assert_eq!(memory_cost(&low, 32_000, 3), 2 * low.len() + 1_000 * 4 + 3 * 32_000 * 4);
        assert!(memory_cost(&low, 32_000, 3) / low.len() > 300);
        // One second of 16-bit audio at the model's rate: about eight bytes per byte, as the budget long assumed.
        let native = encode_pcm16(32_000, &vec![0; 32_000]);
        assert_eq!(memory_cost(&native, 32_000, 2), 2 * native.len() + 32_000 * 4 + 2 * 32_000 * 4);
        // Stereo 8-bit 192 kHz decodes both channels before the downmix.
        let wide = eight_bit(192_000, 19_200, 2);
        assert_eq!(memory_cost(&wide, 32_000, 2), 2 * wide.len() + 19_200 * 2 * 4 + 2 * 3_200 * 4);
        // Not a WAV file: eight times its bytes.
        assert_eq!(memory_cost(b"not audio", 32_000, 3), 72);
    }

    #[test]
    fn r13_metadata_chunks_of_odd_length_and_their_pad_bytes_are_skipped() {
        let plain = wav(int_spec(16, 2), Samples::Int(vec![0, 16_384, -32_768, 0, 100, -100]));
        let want = decode(&plain, &DecodeLimits::default()).unwrap();
        for len in [4, 5, 13] {
            let bytes = with_metadata(&plain, len);
            assert_eq!(decode(&bytes, &DecodeLimits::default()), Ok(want.clone()), "metadata of {len} bytes");
            // Cut in transit, it is still reported as truncated.
            let cut = &bytes[..bytes.len() - 3];
            assert_eq!(decode(cut, &DecodeLimits::default()).unwrap_err().cause, "truncated", "{len} bytes, cut");
        }
    }

    #[test]
    fn decodes_every_pcm_width_and_float() {
        for bits in [8u16, 16, 24, 32] {
            let full = 1i64 << (bits - 1);
            let bytes = wav(int_spec(bits, 1), Samples::Int(vec![0, (full / 2) as i32, (-full) as i32]));
            let audio = decode(&bytes, &DecodeLimits::default()).unwrap();
            assert_eq!(audio.samples, vec![0.0, 0.5, -1.0], "{bits}-bit");
        }
        let spec = WavSpec { sample_format: SampleFormat::Float, bits_per_sample: 32, ..int_spec(32, 1) };
        let audio = decode(&wav(spec, Samples::Float(vec![0.25, -0.75])), &DecodeLimits::default()).unwrap();
        assert_eq!(audio.samples, vec![0.25, -0.75]);
    }

    #[test]
    fn bulk_conversion_matches_hound_sample_by_sample() {
        for bits in [8u16, 16, 24, 32] {
            let full = 1i64 << (bits - 1);
            let values: Vec<i32> = (0..997).map(|i| ((i * 7919) % (2 * full) - full) as i32).collect();
            let bytes = wav(int_spec(bits, 3), Samples::Int(values));
            let spec = WavReader::new(Cursor::new(&bytes[..])).unwrap().spec();
            let slow = sample_by_sample(&bytes, spec, 996, |_| reject(Cause::Truncated, "")).unwrap();
            let data_start = bytes.len() - 996 * usize::from(bits / 8);
            assert_eq!(
                bulk_samples(&bytes[data_start..], SampleFormat::Int, usize::from(bits / 8)),
                slow,
                "{bits}-bit"
            );
        }
    }

    #[test]
    fn multichannel_audio_is_averaged() {
        let bytes = wav(int_spec(16, 2), Samples::Int(vec![16_384, 0, -16_384, -16_384]));
        let audio = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!((audio.channels, audio.samples), (2, vec![0.25, -0.5]));
    }

    #[test]
    fn bad_input_is_rejected_with_its_cause() {
        let limits = DecodeLimits::default();
        let good = wav(int_spec(16, 1), Samples::Int(vec![1; 1_000]));
        let cause = |bytes: &[u8]| decode(bytes, &limits).unwrap_err().cause;
        assert_eq!(cause(b""), "empty");
        assert_eq!(cause(b"this is not audio at all, just text"), "not_wav");
        assert_eq!(cause(&good[..20]), "truncated");
        assert_eq!(cause(&good[..good.len() - 100]), "truncated");
        let nan =
            wav(WavSpec { sample_format: SampleFormat::Float, ..int_spec(32, 1) }, Samples::Float(vec![0.0, f32::NAN]));
        assert_eq!(decode(&nan, &limits).unwrap_err().reason, "sample 1 of channel 0 is NaN");
        let inf =
            wav(WavSpec { sample_format: SampleFormat::Float, ..int_spec(32, 1) }, Samples::Float(vec![f32::INFINITY]));
        assert_eq!(cause(&inf), "non_finite");
        let absurd = wav(WavSpec { sample_rate: 4_000_000, ..int_spec(16, 1) }, Samples::Int(vec![0; 10]));
        assert_eq!(cause(&absurd), "sample_rate");
        assert_eq!(cause(&wav(int_spec(16, 1), Samples::Int(vec![]))), "no_audio");
    }

    #[test]
    fn r13_a_clip_too_long_is_refused_from_its_header_before_a_sample_is_read() {
        let mut bytes = wav(int_spec(16, 1), Samples::Int(vec![0; 1_000]));
        assert_eq!(&bytes[36..40], b"data", "a canonical 44-byte header");
        // Two hours declared over 1 000 samples: reading them first would find the data cut short instead.
        bytes[40..44].copy_from_slice(&(7_200u32 * 32_000 * 2).to_le_bytes());
        let limits = |max_seconds| DecodeLimits { max_seconds, ..DecodeLimits::default() };
        let refused = decode(&bytes, &limits(60.0)).unwrap_err();
        assert_eq!(
            (refused.cause.as_str(), refused.reason.as_str()),
            ("too_long", "7200.0 s of audio exceeds the 60 s limit")
        );
        assert_eq!(decode(&bytes, &limits(7_200.0)).unwrap_err().cause, "truncated");
    }

    #[test]
    fn files_re_chunk_without_changing_a_sample() {
        let samples: Vec<i32> = (0..3_000).map(|i| (i % 200) - 100).collect();
        let file = WavFile { spec: int_spec(24, 3), samples: Samples::Int(samples.clone()) };
        let mut decoded = Vec::new();
        for from in (0..file.frames()).step_by(333) {
            let chunk = file.encode_frames(from, (from + 333).min(file.frames())).unwrap();
            let mut reader = WavReader::new(Cursor::new(chunk)).unwrap();
            decoded.extend(reader.samples::<i32>().map(Result::unwrap));
        }
        assert_eq!(decoded, samples);
    }
}
