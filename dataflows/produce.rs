//! Producing WAV files to the audio topic as chunks, with the headers of the message contract; and files of
//! embeddings made elsewhere as embeddings messages.
//!
//! Each WAV file is re-chunked without converting a sample: every chunk is a WAV file of the original format. A
//! chunk's `captured_at` is the file's start time plus the chunk's offset, exact to the nanosecond.
//!
//! A file of embeddings (`.npy` or `.parquet`, see [`chorus_connectors::vectors`]) is sent as messages of consecutive
//! vectors of one sensor, one hop apart; a row with a sensor or a start time of its own starts a new message when it
//! does not follow the one before.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chorus_connectors::kafka::{
    self, Acks, HEADER_CAPTURED_AT, HEADER_DIM, HEADER_HOP_SECONDS, HEADER_MODEL, HEADER_PRIORITY, HEADER_SPACE,
    MAX_VECTORS_PER_MESSAGE, Producer, Record,
};
use chorus_connectors::vectors::VectorFile;
use chorus_connectors::wav::WavFile;
use chorus_operators::record::{Nanos, Priority, nearest_sample, rfc3339, samples_to_nanos};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Error;
use crate::config::Config;

/// Chunk length when none is given, if it fits the message limit.
const DEFAULT_CHUNK_SECONDS: f64 = 10.0;
/// Room left in each message for the key, headers and protocol overhead.
const MESSAGE_OVERHEAD: usize = 4_096;

/// What to produce.
#[derive(Clone, Debug, PartialEq)]
pub struct ProduceOptions {
    /// Sensor id (message key); `None` uses each file's stem.
    pub sensor: Option<String>,
    /// Space header; `None` sends none (the job uses `default`).
    pub space: Option<String>,
    /// Seconds per chunk; `None` takes 10 s or the most that fits `kafka.max_message_bytes`.
    pub chunk_seconds: Option<f64>,
    /// Capture time of the first file's first sample; later files follow it without a gap. `None` reads each file's
    /// start from a `YYYYMMDD_HHMMSS` stamp in its name (UTC), else from its modification time.
    pub start: Option<Nanos>,
    /// Priority header.
    pub priority: Priority,
    /// WAV files, in order.
    pub files: Vec<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
}

/// What was produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProduceSummary {
    /// Files read.
    pub files: usize,
    /// Messages produced.
    pub chunks: usize,
    /// Seconds of audio.
    pub seconds: f64,
    /// Payload bytes.
    pub bytes: usize,
    /// Vectors sent (files of embeddings).
    pub vectors: usize,
}

/// Produces `options.files` to the audio topic of `config` and waits for the broker to acknowledge every chunk.
pub fn produce(config: &Config, options: &ProduceOptions) -> Result<ProduceSummary, Error> {
    check_names(options.sensor.as_deref(), options.space.as_deref())?;
    if let Some(seconds) = options.chunk_seconds
        && (seconds.is_nan() || seconds <= 0.0)
    {
        return Err(Error::Usage(format!("--chunk-seconds {seconds} must be above 0")));
    }
    let files = options
        .files
        .iter()
        .map(|path| {
            WavFile::read(path)
                .map(|file| (path.clone(), file))
                .map_err(|e| Error::Input { path: path.clone(), message: format!("not a readable WAV file: {e}") })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = config.kafka.max_message_bytes.saturating_sub(MESSAGE_OVERHEAD);
    let plans = files
        .iter()
        .map(|(path, file)| chunk_frames(path, file, options.chunk_seconds, limit))
        .collect::<Result<Vec<_>, _>>()?;

    let (producer, acks) = open_producer(config)?;
    let total: usize = files.iter().zip(&plans).map(|((_, f), frames)| f.frames().div_ceil(*frames)).sum();
    let bar = if options.progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} chunks  {msg}").expect("a valid template"),
    );

    let mut summary = ProduceSummary::default();
    let mut next_start = options.start;
    for ((path, file), frames_per_chunk) in files.iter().zip(plans) {
        let start = match next_start {
            Some(start) => start,
            None => start_of(path)?,
        };
        let sensor = match &options.sensor {
            Some(sensor) => sensor.clone(),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        bar.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let rate = i128::from(file.spec.sample_rate);
        for from in (0..file.frames()).step_by(frames_per_chunk) {
            let to = (from + frames_per_chunk).min(file.frames());
            let captured_at = start + (from as i128 * 1_000_000_000 / rate) as Nanos;
            let payload = file
                .encode_frames(from, to)
                .map_err(|e| Error::Input { path: path.clone(), message: format!("cannot encode a chunk: {e}") })?;
            let mut headers = vec![
                (HEADER_CAPTURED_AT.to_owned(), rfc3339(captured_at).into_bytes()),
                (HEADER_PRIORITY.to_owned(), options.priority.as_str().as_bytes().to_vec()),
            ];
            if let Some(space) = &options.space {
                headers.push((HEADER_SPACE.to_owned(), space.as_bytes().to_vec()));
            }
            summary.bytes += payload.len();
            let record = Record { key: Some(sensor.as_bytes().to_vec()), payload, headers };
            // The Kafka timestamp is when the chunk is sent (the client's clock), not when it was recorded: brokers
            // delete by it (retention.ms), and a backfill of old recordings stamped with their capture times would
            // be deleted before the job read it. The capture time travels in its header.
            producer.send_to(&config.kafka.audio_topic, None, &record, &acks, 0)?;
            summary.chunks += 1;
            bar.inc(1);
        }
        summary.files += 1;
        summary.seconds += file.seconds();
        if next_start.is_some() {
            next_start = Some(start + (file.frames() as i128 * 1_000_000_000 / rate) as Nanos);
        }
    }
    wait_for_acks(&producer, &acks, &bar)?;
    Ok(summary)
}

/// Vectors per message when none is given, if they fit the message limit.
const DEFAULT_VECTORS_PER_MESSAGE: usize = 64;

/// What to produce from files of embeddings.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsOptions {
    /// Sensor id (message key) of the rows without one of their own; `None` uses each file's stem.
    pub sensor: Option<String>,
    /// Space header; `None` sends none (the job uses `default`).
    pub space: Option<String>,
    /// Window start of the first file's first vector, for the rows without a start time of their own; later files
    /// follow it one hop after its last vector. `None` reads each file's start as for WAV files.
    pub start: Option<Nanos>,
    /// Seconds between consecutive vectors' starts; `None` takes `windows.hop_seconds`.
    pub hop_seconds: Option<f64>,
    /// Vectors per message at most; `None` takes 64, or the most that fits `kafka.max_message_bytes`.
    pub per_message: Option<usize>,
    /// Priority header.
    pub priority: Priority,
    /// `.npy` or `.parquet` files, in order.
    pub files: Vec<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
}

/// Consecutive vectors of one sensor, one hop apart: one message.
struct Run {
    sensor: String,
    /// First window's start on the model's sample clock.
    first: i64,
    vectors: usize,
    payload: Vec<u8>,
}

/// Produces `options.files` of embeddings to the audio topic of `config` as embeddings messages of its model, and
/// waits for the broker to acknowledge every message. Every file is checked (its format, and its dimension against
/// `model.dim`) before anything is sent.
pub fn produce_embeddings(config: &Config, options: &EmbeddingsOptions) -> Result<ProduceSummary, Error> {
    check_names(options.sensor.as_deref(), options.space.as_deref())?;
    let (rate, dim) = (config.windows.sample_rate, config.model.dim);
    let hop = match options.hop_seconds {
        None => config.windows.hop,
        Some(seconds) => {
            let samples = seconds * f64::from(rate);
            // The bounds the job holds the `hop_seconds` header to: refused here, not dead-lettered there.
            if !(samples >= 1.0 && samples <= f64::from(config.windows.window))
                || (samples - samples.round()).abs() > 1e-6
            {
                return Err(Error::Usage(format!(
                    "--hop-seconds {seconds} is not a whole number of samples at the model's {rate} Hz from one \
                     sample to the model's window ({} s)",
                    f64::from(config.windows.window) / f64::from(rate)
                )));
            }
            samples.round() as u32
        }
    };
    let row_bytes = dim * std::mem::size_of::<f32>();
    let fitting =
        (config.kafka.max_message_bytes.saturating_sub(MESSAGE_OVERHEAD) / row_bytes).min(MAX_VECTORS_PER_MESSAGE);
    let per_message = match options.per_message {
        None if fitting == 0 => {
            return Err(Error::Usage(format!(
                "one vector of {dim} values ({row_bytes} bytes) does not fit kafka.max_message_bytes = {}",
                config.kafka.max_message_bytes
            )));
        }
        None => DEFAULT_VECTORS_PER_MESSAGE.min(fitting),
        Some(0) => return Err(Error::Usage("--vectors-per-message must be at least 1".into())),
        Some(n) if n > fitting => {
            return Err(Error::Usage(format!(
                "--vectors-per-message {n} makes messages of {} bytes, above kafka.max_message_bytes = {} (less \
                 {MESSAGE_OVERHEAD} for headers); use {fitting} or less",
                n * row_bytes,
                config.kafka.max_message_bytes
            )));
        }
        Some(n) => n,
    };
    let files = options
        .files
        .iter()
        .map(|path| {
            let file = VectorFile::open(path).map_err(|message| Error::Input { path: path.clone(), message })?;
            if file.dim() != dim {
                return Err(Error::Input {
                    path: path.clone(),
                    message: format!(
                        "holds vectors of {} values; the model {:?} makes {dim} (model.dim), and the job refuses \
                         others",
                        file.dim(),
                        config.model.name
                    ),
                });
            }
            Ok((path.clone(), file))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let (producer, acks) = open_producer(config)?;
    let total: usize = files.iter().map(|(_, f)| f.rows()).sum();
    let bar = if options.progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} vectors  {msg}").expect("a valid template"),
    );
    let hop_seconds = f64::from(hop) / f64::from(rate);
    let send = |run: Run, summary: &mut ProduceSummary| -> Result<(), Error> {
        let mut headers = vec![
            (HEADER_MODEL.to_owned(), config.model.name.as_bytes().to_vec()),
            (HEADER_DIM.to_owned(), dim.to_string().into_bytes()),
            (HEADER_HOP_SECONDS.to_owned(), hop_seconds.to_string().into_bytes()),
            (HEADER_CAPTURED_AT.to_owned(), rfc3339(samples_to_nanos(run.first, rate)).into_bytes()),
            (HEADER_PRIORITY.to_owned(), options.priority.as_str().as_bytes().to_vec()),
        ];
        if let Some(space) = &options.space {
            headers.push((HEADER_SPACE.to_owned(), space.as_bytes().to_vec()));
        }
        summary.bytes += run.payload.len();
        summary.vectors += run.vectors;
        summary.chunks += 1;
        let record = Record { key: Some(run.sensor.into_bytes()), payload: run.payload, headers };
        producer.send_to(&config.kafka.audio_topic, None, &record, &acks, 0)?;
        Ok(())
    };

    let mut summary = ProduceSummary::default();
    let mut next_start = options.start;
    for (path, mut file) in files {
        let start = match next_start {
            Some(start) => start,
            None => start_of(&path)?,
        };
        let file_sensor = match &options.sensor {
            Some(sensor) => sensor.clone(),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        bar.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let first = nearest_sample(start, rate);
        let (mut row, mut run): (i64, Option<Run>) = (0, None);
        while let Some(batch) = file.next_batch().map_err(|message| Error::Input { path: path.clone(), message })? {
            for vector in batch {
                let sensor = vector.sensor.unwrap_or_else(|| file_sensor.clone());
                let at = vector.start.map_or(first + row * i64::from(hop), |t| nearest_sample(t, rate));
                row += 1;
                let follows = run.as_ref().is_some_and(|r| {
                    r.sensor == sensor && r.vectors < per_message && at == r.first + r.vectors as i64 * i64::from(hop)
                });
                if !follows && let Some(done) = run.take() {
                    send(done, &mut summary)?;
                }
                let current = run.get_or_insert_with(|| Run {
                    sensor,
                    first: at,
                    vectors: 0,
                    payload: Vec::with_capacity(per_message * row_bytes),
                });
                current.payload.extend(vector.vector.iter().flat_map(|v| v.to_le_bytes()));
                current.vectors += 1;
            }
            bar.set_position(summary.vectors as u64 + run.as_ref().map_or(0, |r| r.vectors) as u64);
        }
        if let Some(done) = run.take() {
            send(done, &mut summary)?;
        }
        summary.files += 1;
        if next_start.is_some() {
            next_start = Some(samples_to_nanos(first + row * i64::from(hop), rate));
        }
    }
    wait_for_acks(&producer, &acks, &bar)?;
    Ok(summary)
}

/// Refuses an empty `--sensor` and a `--space` that cannot name a space.
fn check_names(sensor: Option<&str>, space: Option<&str>) -> Result<(), Error> {
    if let Some(space) = space
        && !kafka::valid_space(space)
    {
        return Err(Error::Usage(format!("--space {space:?} must match [A-Za-z0-9_-][A-Za-z0-9._-]{{0,63}}")));
    }
    if sensor.is_some_and(str::is_empty) {
        return Err(Error::Usage("--sensor is empty".into()));
    }
    Ok(())
}

/// A producer for `config`'s broker, once it answers (and the topics exist, when the job creates them).
fn open_producer(config: &Config) -> Result<(Producer, Arc<Acks>), Error> {
    kafka::check_connection(&config.kafka, Duration::from_secs(30))?;
    if config.kafka.create_topics {
        kafka::ensure_topics(&config.kafka)?;
    }
    Ok((Producer::open(&config.kafka)?, Arc::new(Acks::default())))
}

/// Waits until the broker has acknowledged every message sent, or one failed.
fn wait_for_acks(producer: &Producer, acks: &Acks, bar: &ProgressBar) -> Result<(), Error> {
    bar.set_message("waiting for the broker to acknowledge");
    while !producer.flush(Duration::from_secs(30))? {
        tracing::warn!(
            outstanding = acks.outstanding(),
            "The broker has not acknowledged every message yet; still waiting."
        );
    }
    if let Some(failure) = acks.failure() {
        return Err(chorus_connectors::Error::Delivery(failure).into());
    }
    bar.finish_and_clear();
    Ok(())
}

/// Frames per chunk for `file`: the requested length, or the default capped by the message limit.
fn chunk_frames(path: &Path, file: &WavFile, requested: Option<f64>, limit: usize) -> Result<usize, Error> {
    let rate = f64::from(file.spec.sample_rate);
    let fitting = limit.saturating_sub(44) / file.bytes_per_frame().max(1);
    if fitting == 0 {
        return Err(Error::Input {
            path: path.to_path_buf(),
            message: "a single frame exceeds kafka.max_message_bytes".into(),
        });
    }
    match requested {
        Some(seconds) => {
            let frames = ((seconds * rate).round() as usize).max(1);
            if frames > fitting {
                return Err(Error::Usage(format!(
                    "--chunk-seconds {seconds} makes messages of {} bytes for {}, above kafka.max_message_bytes = {} \
                     (less {MESSAGE_OVERHEAD} for headers); use --chunk-seconds {:.2} or less",
                    44 + frames * file.bytes_per_frame(),
                    path.display(),
                    limit + MESSAGE_OVERHEAD,
                    fitting as f64 / rate
                )));
            }
            Ok(frames)
        }
        None => Ok(((DEFAULT_CHUNK_SECONDS * rate) as usize).min(fitting)),
    }
}

/// The capture time of a file's first sample: a `YYYYMMDD_HHMMSS` stamp in its name (as AudioMoth and Song Meter
/// recorders write them, UTC), else its modification time.
pub fn start_of(path: &Path) -> Result<Nanos, Error> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(t) = stamp_in(&name) {
        return Ok(t);
    }
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        message: format!("cannot read its modification time: {e}"),
    })?;
    let since = modified.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Ok(since.as_nanos() as Nanos)
}

fn stamp_in(name: &str) -> Option<Nanos> {
    let bytes = name.as_bytes();
    (0..bytes.len().saturating_sub(14)).find_map(|i| {
        let candidate = &bytes[i..i + 15];
        let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
        if candidate[8] != b'_' || !digits(&candidate[..8]) || !digits(&candidate[9..]) {
            return None;
        }
        if i > 0 && bytes[i - 1].is_ascii_digit() || bytes.get(i + 15).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let candidate = std::str::from_utf8(candidate).ok()?;
        chrono::NaiveDateTime::parse_from_str(candidate, "%Y%m%d_%H%M%S").ok()?.and_utc().timestamp_nanos_opt()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_stamps_in_file_names_give_the_start() {
        assert_eq!(stamp_in("20260501_050000"), Some(1_777_611_600_000_000_000));
        assert_eq!(stamp_in("S4A01234_20260501_050000"), Some(1_777_611_600_000_000_000));
        assert_eq!(stamp_in("pole-7 20260501_050000 dawn"), Some(1_777_611_600_000_000_000));
        assert_eq!(stamp_in("120260501_050000"), None);
        assert_eq!(stamp_in("20261301_050000"), None);
        assert_eq!(stamp_in("birds_10s"), None);
        assert_eq!(stamp_in("é20260501_050000ü"), Some(1_777_611_600_000_000_000));
    }
}
