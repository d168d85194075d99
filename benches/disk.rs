//! Disk for a season: files per day partition and bytes per sensor-day, as the job writes them (a file per 10 s
//! flush), after the job's background compaction, once the day is closed, and after `chorus prune
//! --audio-older-than-days`; and what a merge costs in time and resident memory.
//!
//!     cargo bench --bench disk -- [--sensors 10] [--audio-minutes 60] [--flush-seconds 10]
//!
//! Part one writes a whole day of flushes for `--sensors` sensors at a 5 s hop without audio (1536-D embeddings of
//! random values, which zstd cannot shrink), running a compaction round every simulated minute as the job does, then
//! closes the day. Part two writes `--audio-minutes` of one sensor with its audio (the sample bird recording, with
//! a little noise so that no two windows are alike), compacts it, then prunes its audio. Bytes per sensor-day are
//! the bytes written per sensor scaled to 24 hours. Each closing merge is `chorus compact` (the release build, built
//! first) in a process of its own, whose peak resident memory (VmHWM) is shown.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chorus_connectors::parquet::{self, ArchiveConfig, ArchiveWriter, AudioPrune, Compaction};
use chorus_operators::record::{Origin, Segment, SegmentKey};

#[allow(dead_code)]
#[path = "../tests/support.rs"]
mod support;

#[path = "args.rs"]
mod args;

#[path = "rng.rs"]
mod rng;

use args::arg;
use rng::Rng;

const RATE: i64 = 32_000;
const WINDOW: i64 = 5 * RATE;
const DIM: usize = 1536;
/// 2026-05-01T00:00:00Z.
const DAY_SECONDS: i64 = 1_777_593_600;

fn day() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 5, 1).unwrap()
}

fn segment(sensor: &str, start: i64, rng: &mut Rng, audio: Vec<i16>) -> Segment {
    Segment {
        key: SegmentKey {
            space: "default".into(),
            sensor: sensor.into(),
            start,
            sample_rate: RATE as u32,
            len: WINDOW as u32,
        },
        coverage: 1.0,
        origin: Origin { topic: "chorus.audio".into(), partition: 0, offset: start / WINDOW },
        resumed: false,
        embedding: (0..DIM).map(|_| rng.normal()).collect(),
        audio,
    }
}

fn files_and_bytes(root: &Path) -> (usize, u64) {
    let files = parquet::files(root, "default").unwrap();
    (files.len(), files.iter().map(|f| std::fs::metadata(f.path()).unwrap().len()).sum())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Runs `chorus compact` (release build) on the archive at `root` as its own process: its wall time and peak resident
/// memory (VmHWM, sampled every 5 ms until it exits).
fn chorus_compact(root: &Path, dir: &Path) -> (Duration, f64) {
    let tools = support::tools();
    let config = dir.join(format!("{}.toml", root.file_name().unwrap().to_string_lossy()));
    let text = format!(
        "state_dir = {:?}\n[model]\npath = {:?}\n[embed]\nonnxruntime = {:?}\n[index]\ndir = {:?}\n[archive]\ndir = {:?}\n\
         [refine]\ndir = {:?}\n",
        dir.join("state"),
        tools.model,
        tools.onnxruntime,
        dir.join("index"),
        root,
        dir.join("refined")
    );
    std::fs::write(&config, text).unwrap();
    let binary = support::root().join("target/release/chorus");
    let binary = std::env::var_os("CARGO_TARGET_DIR").map_or(binary, |t| Path::new(&t).join("release/chorus"));
    let started = Instant::now();
    let mut child = std::process::Command::new(binary)
        .args(["compact", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("target/release/chorus: build it with cargo build --release");
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(support::peak_rss(child.id()));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.wait().unwrap().success(), "chorus compact failed");
    (started.elapsed(), peak as f64 / f64::from(1 << 20))
}

fn compact(root: &Path, compaction: &Compaction, today: chrono::NaiveDate) -> Vec<parquet::Merged> {
    parquet::compact_dataset(root, compaction, today, false, &AtomicBool::new(false), &mut |_| {}).unwrap()
}

fn main() {
    let sensors: usize = arg("--sensors", 10);
    let audio_minutes: i64 = arg("--audio-minutes", 60);
    let flush: i64 = arg("--flush-seconds", 10);
    let dir = tempfile::Builder::new().prefix("chorus-disk-").tempdir().unwrap();
    // --keep: leave the day's files uncompacted where they are, for a profiler, and stop.
    let keep = std::env::args().any(|a| a == "--keep");
    let settings = |root: &Path, audio: bool| {
        ArchiveConfig { dir: root.to_path_buf(), audio, ..Default::default() }.build(Path::new("/")).unwrap()
    };
    let job = Compaction::default();
    let closed = Compaction { close_after: Duration::ZERO, ..Compaction::default() };
    let mut rng = Rng(7);

    // Part one: a day of flushes without audio, compacted as the job does.
    let root = dir.path().join("rows");
    let mut writer = ArchiveWriter::new(settings(&root, false), "standin", DIM, "w0");
    let (mut written, mut written_bytes, mut most, mut merges, mut merged_bytes) = (0usize, 0u64, 0usize, 0usize, 0u64);
    let mut compaction_time = Duration::ZERO;
    let started = Instant::now();
    let flushes = 86_400 / flush;
    for f in 0..flushes {
        for sensor in 0..sensors {
            for w in 0..flush / 5 {
                let start = (DAY_SECONDS + f * flush + w * 5) * RATE;
                writer.add(segment(&format!("pole-{sensor:03}"), start, &mut rng, Vec::new()));
            }
        }
        for file in writer.flush().unwrap() {
            written += 1;
            written_bytes += std::fs::metadata(file).unwrap().len();
        }
        if (f + 1) % (60 / flush).max(1) == 0 {
            let at = Instant::now();
            for m in compact(&root, &job, day()) {
                merges += 1;
                merged_bytes += m.bytes_in;
            }
            compaction_time += at.elapsed();
            most = most.max(files_and_bytes(&root).0);
        }
        if (f + 1) % (flushes / 8) == 0 {
            eprintln!(
                "  {:>3.0} % of the day written ({:.0} s)",
                100.0 * (f + 1) as f64 / flushes as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let (end_files, end_bytes) = files_and_bytes(&root);
    let rows = flushes * sensors as i64 * (flush / 5);
    if keep {
        println!("{} kept for a profiler: {:?}", root.display(), files_and_bytes(&root));
        std::mem::forget(dir);
        return;
    }
    let (close_time, close_peak) = chorus_compact(&root, dir.path());
    let (closed_files, closed_bytes) = files_and_bytes(&root);
    let per_sensor_day = |bytes: u64| mib(bytes) / sensors as f64;
    println!("A day of {sensors} sensors at a 5 s hop, {rows} rows without audio, a file per {flush} s flush:");
    println!(
        "  files written: {written}; with the job's compaction (a round a minute, fanout {}): at most {most} in the partition during the day, {end_files} at its end",
        job.fanout
    );
    println!(
        "  compaction during the day: {merges} merges, {:.0} MiB rewritten ({:.1}x the day's bytes), {:.1} s",
        mib(merged_bytes),
        merged_bytes as f64 / end_bytes as f64,
        compaction_time.as_secs_f64()
    );
    println!(
        "  closing the day (chorus compact): {end_files} file(s) -> {closed_files}, {:.1} s ({:.0} rows/s), peak resident memory {close_peak:.0} MiB (memory_mb {})",
        close_time.as_secs_f64(),
        rows as f64 / close_time.as_secs_f64().max(1e-9),
        job.memory_bytes >> 20
    );
    println!(
        "  disk per sensor-day without audio: {:.1} MiB as written, {:.1} MiB at the day's end, {:.1} MiB closed",
        per_sensor_day(written_bytes),
        per_sensor_day(end_bytes),
        per_sensor_day(closed_bytes)
    );

    // Part two: one sensor with its audio, compacted, then pruned.
    let root = dir.path().join("audio");
    let sample: Vec<i16> = support::sample_samples().iter().map(|&x| chorus_operators::record::pcm16(x)).collect();
    let mut writer = ArchiveWriter::new(settings(&root, true), "standin", DIM, "w0");
    let windows = audio_minutes * 12;
    let mut files = 0;
    for w in 0..windows {
        let start = (DAY_SECONDS + w * 5) * RATE;
        // The recording from a different place each window, with noise of a few LSB.
        let audio: Vec<i16> = (0..WINDOW as usize)
            .map(|i| {
                let x = sample[(i + w as usize * 7_919) % sample.len()];
                x.saturating_add((rng.normal() * 4.0) as i16)
            })
            .collect();
        writer.add(segment("pole-000", start, &mut rng, audio));
        if (w + 1) % (flush / 5) == 0 {
            files += writer.flush().unwrap().len();
        }
    }
    files += writer.flush().unwrap().len();
    let (_, written_bytes) = files_and_bytes(&root);
    let (audio_time, audio_peak) = chorus_compact(&root, dir.path());
    let (audio_files, compacted_bytes) = files_and_bytes(&root);
    let keep = |_: &str| false;
    let prune = AudioPrune { keep: &keep, marker: "all" };
    let at = Instant::now();
    parquet::prune_audio(&root, "default", "2026-05-01", &closed, &prune).unwrap();
    let prune_time = at.elapsed();
    let (_, pruned_bytes) = files_and_bytes(&root);
    let day_scale = 24.0 * 60.0 / audio_minutes as f64;
    println!("One sensor with its audio, {audio_minutes} min ({windows} windows), a file per {flush} s flush:");
    println!(
        "  files: {files} -> {audio_files}; chorus compact {:.1} s ({:.0} MiB/s of files), peak resident memory {audio_peak:.0} MiB",
        audio_time.as_secs_f64(),
        mib(written_bytes) / audio_time.as_secs_f64().max(1e-9)
    );
    println!(
        "  disk per sensor-day: {:.0} MiB as written, {:.0} MiB compacted, {:.1} MiB after the audio prune ({:.1} s)",
        mib(written_bytes) * day_scale,
        mib(compacted_bytes) * day_scale,
        mib(pruned_bytes) * day_scale,
        prune_time.as_secs_f64()
    );

    // Part three: what the bundled broker stores of the same audio, and whether its retention gives the space back.
    let minutes: i64 = arg("--broker-minutes", 60);
    broker_disk(dir.path(), minutes);
}

/// Bytes of the bundled broker's database (with its write-ahead log).
fn database_bytes(database: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", database.display())).ok())
        .map(|m| m.len())
        .sum()
}

/// Produces `minutes` of one sensor's audio (the sample recording with a little noise, 10 s chunks, `chorus produce`
/// with its lz4) to a private bundled broker whose retention runs every 2 s on an audio topic kept 30 s, twice: the
/// database's bytes after the first round, after the broker deleted it, and after the second round.
fn broker_disk(dir: &Path, minutes: i64) {
    let broker = support::PrivateBroker::start_with("maintenance_interval=2s");
    let retention = Duration::from_secs(30);
    let s = support::Scenario::on(
        &broker.address(),
        "disk",
        &[("kafka.audio_retention_hours", (retention.as_secs_f64() / 3_600.0).into()), ("kafka.partitions", 1.into())],
    );
    let sample = support::sample_samples();
    let mut rng = Rng(11);
    let samples: Vec<f32> =
        (0..(minutes * 60 * RATE) as usize).map(|i| sample[i % sample.len()] + rng.normal() * 1e-4).collect();
    let wav = dir.join("hour.wav");
    support::write_wav_i16(&wav, RATE as u32, &samples);
    drop(samples);
    let database = broker.database();
    let consumer: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &s.brokers).create().unwrap();
    let watermarks =
        || rdkafka::consumer::Consumer::fetch_watermarks(&consumer, &s.audio_topic, 0, Duration::from_secs(5)).unwrap();
    let empty = database_bytes(&database);
    let mut after = Vec::new();
    for round in 0..2 {
        let start = format!("2026-05-01T0{round}:00:00Z");
        let at = Instant::now();
        s.chorus(&[
            "produce",
            "--sensor",
            "pole-000",
            "--start",
            &start,
            "--chunk-seconds",
            "10",
            &wav.display().to_string(),
        ]);
        let produced = at.elapsed();
        let stored = database_bytes(&database);
        let (_, high) = watermarks();
        support::wait_for("the broker's retention", retention * 4, || {
            let (low, end) = watermarks();
            low >= high || end == 0
        });
        after.push((stored, database_bytes(&database), produced));
    }
    let wav_bytes = std::fs::metadata(&wav).unwrap().len();
    let day_scale = 24.0 * 60.0 / minutes as f64;
    println!(
        "The bundled broker (tansu 0.6.0, sqlite), {minutes} min of one sensor's audio ({:.0} MiB of WAV), produced twice:",
        mib(wav_bytes)
    );
    println!(
        "  stored: {:.0} MiB ({:.0} MiB per sensor-day), produced in {:.1} s; after its retention deleted it: {:.0} MiB",
        mib(after[0].0 - empty),
        mib(after[0].0 - empty) * day_scale,
        after[0].2.as_secs_f64(),
        mib(after[0].1 - empty)
    );
    println!(
        "  the second round: {:.0} MiB stored, {:.0} MiB after deletion: the file keeps its size, and deleted pages are reused",
        mib(after[1].0 - empty),
        mib(after[1].1 - empty)
    );
}
