//! Delivery and input under adversarial conditions (issue 13): the faults and inputs a real network brings — kill -9
//! after a clean restart, a chunk from the future, a clock that jumps back, a sensor gone quiet, a sensor whose chunks
//! travel on several partitions, readers beside a sealing job, a replay whose publications never reached the broker,
//! a refinement that fails, a damaged archive file — each injected, each with what chorus must do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus_operators::index::{IndexConfig, SpaceIndex};
use chorus_operators::record::SegmentId;
use serde_json::Value;

use crate::support::{
    RawChunk, Scenario, T0, T0_SECONDS, free_port, gaussian_noise, http_get, metric, run_counts, sample_samples,
    t0_plus, terminate, tools, wait_for, wav_i16, write_wav,
};

fn sample() -> String {
    tools().sample.display().to_string()
}

/// Seconds after [`T0`] at which each archived segment of `sensor` starts, in order.
fn starts(s: &Scenario, sensor: &str) -> Vec<i64> {
    s.archived("default", false)
        .into_iter()
        .filter(|r| r.sensor == sensor)
        .map(|r| r.start_micros / 1_000_000 - T0_SECONDS)
        .collect()
}

/// One second of quiet noise at 32 kHz, as a WAV file: a different second for every `seed`.
fn noise_second(seed: u64) -> Vec<u8> {
    let samples: Vec<f32> = gaussian_noise(32_000, seed).iter().map(|x| 0.1 * x).collect();
    wav_i16(32_000, 1, &samples)
}

/// `seconds` one-second chunks of `sensor` from `from` seconds after T0, all on `partition`.
fn seconds_on(sensor: &str, from: i64, seconds: i64, partition: i32) -> Vec<RawChunk> {
    (from..from + seconds)
        .map(|k| {
            let mut chunk = RawChunk::new(sensor, &t0_plus(k * 1_000_000_000), noise_second(k as u64 + 1));
            chunk.partition = Some(partition);
            chunk
        })
        .collect()
}

#[test]
fn r13_a_space_whose_archive_holds_only_a_write_cut_short_starts_and_the_leftover_goes() {
    let s = Scenario::new("r13-empty-space", &[("windows.hop_seconds", 1.0.into())]);
    // What a kill -9 during the first archive write of a space leaves: its day partition with a temporary file, and
    // no index snapshot. The refinement used to walk the space's empty index and panic on every start.
    let day = s.archive.join("space=default/date=2026-05-01");
    std::fs::create_dir_all(&day).unwrap();
    let leftover = day.join(".part-1777611600000-4242-w0-000000.parquet.tmp");
    std::fs::write(&leftover, b"PAR1, cut short").unwrap();
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, "--chunk-seconds", "1.3", &sample()]);
    let log = s.run_until_idle();
    let counts = run_counts(&log);
    assert_eq!((counts.new_segments, counts.dead_letters), (6, 0), "{log}");
    assert!(!leftover.exists(), "the temporary file of a write cut short is removed");
}

#[test]
fn r13_a_crash_after_a_clean_restart_keeps_the_audio_the_stop_stored() {
    let http = free_port();
    let s = Scenario::new("r13-restart-crash", &[("http.listen", format!("127.0.0.1:{http}").into())]);
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, "--chunk-seconds", "1.3", &sample()]);
    let mut job = s.spawn(&["run"]);
    wait_for("the windows at 0 s and 5 s", Duration::from_secs(60), || s.archived("default", false).len() == 2);
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());
    // Every chunk is committed: the tail of the recording (the window at 10 s) waits in the state directory.
    let all_eight_committed = || s.committed().values().sum::<i64>() == 8;
    assert!(all_eight_committed(), "{:?}", s.committed());

    // A restart that commits and is killed before the sensor sends again.
    let mut job = s.spawn(&["run"]);
    wait_for("the restarted job to be ready", Duration::from_secs(60), || {
        http_get(http, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    wait_for("its commits", Duration::from_secs(30), all_eight_committed);
    job.kill().unwrap();
    job.wait().unwrap();

    // The recording goes on: the window at 10 s holds audio from before the first stop and after the crash.
    let continuation = s.dir.path().join("continuation.wav");
    write_wav(&continuation, 32_000, &sample_samples());
    let start = "2026-05-01T05:00:10.1333125Z"; // T0 + 324 266 samples at 32 kHz
    s.chorus(&["produce", "--sensor", "pole-1", "--start", start, &continuation.display().to_string()]);
    s.run_until_idle();
    let rows = s.archived("default", false);
    assert_eq!(starts(&s, "pole-1"), [0, 5, 10, 15]);
    assert_eq!(rows[2].coverage, 1.0, "the stored tail and the new audio make the window at 10 s whole");
}

#[test]
fn r13_a_chunk_from_the_future_is_refused_and_its_sensor_goes_on() {
    let s = Scenario::new("r13-future", &[]);
    // A chunk whose captured_at and Kafka timestamp both say 2199: the two clocks a producer sets agree.
    let mut poison = RawChunk::new("pole-1", "2199-06-01T00:00:00Z", wav_i16(32_000, 1, &sample_samples()[..32_000]));
    poison.timestamp_ms = Some(7_239_628_800_000);
    s.produce_raw(&[poison]);
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample()]);
    let log = s.run_until_idle();
    let counts = run_counts(&log);
    assert_eq!((counts.new_segments, counts.dead_letters), (2, 1), "{log}");
    assert_eq!(starts(&s, "pole-1"), [0, 5]);
    let letters = s.consume(&s.dead_letter_topic, 1);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header("chorus.cause"), Some("bad_captured_at"));
    let reason = letters[0].header("chorus.reason").unwrap();
    assert!(reason.contains("after this job's clock"), "{reason}");
}

#[test]
fn r13_a_sensor_whose_clock_jumps_back_starts_a_new_timeline() {
    let s = Scenario::new("r13-jump-back", &[]);
    // The sensor's clock ran an hour ahead, then was set right.
    s.chorus(&["produce", "--sensor", "pole-1", "--start", "2026-05-01T06:00:00Z", &sample()]);
    assert_eq!(run_counts(&s.run_until_idle()).new_segments, 2);
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample()]);
    let log = s.run_until_idle();
    let counts = run_counts(&log);
    assert_eq!((counts.new_segments, counts.dead_letters), (2, 0), "{log}");
    assert_eq!(starts(&s, "pole-1"), [0, 5, 3_600, 3_605]);
}

#[test]
fn r13_a_quiet_sensor_stops_holding_back_its_partition_and_keeps_its_audio_across_a_crash() {
    let s = Scenario::new("r13-quiet", &[("windows.park_after_seconds", 2.into())]);
    // Both sensors on partition 0: "quiet" sends 7 s and falls silent (decommissioned, a dead battery), "busy" 20 s.
    let mut chunks = seconds_on("quiet", 0, 7, 0);
    chunks.extend(seconds_on("busy", 0, 20, 0));
    s.produce_raw(&chunks);
    let mut job = s.spawn(&["run"]);
    // The quiet sensor's tail (its window at 5 s) no longer holds partition 0 back: every message gets committed.
    wait_for("all 27 messages of partition 0 to be committed", Duration::from_secs(90), || {
        s.committed().get(&0) == Some(&27)
    });
    assert_eq!(starts(&s, "quiet"), [0]);
    assert_eq!(starts(&s, "busy"), [0, 5, 10, 15]);
    job.kill().unwrap();
    job.wait().unwrap();

    // The sensor comes back after the crash; its stored audio completes the window at 5 s.
    s.produce_raw(&seconds_on("quiet", 7, 5, 0));
    let log = s.run_until_idle();
    assert_eq!(run_counts(&log).dead_letters, 0, "{log}");
    assert_eq!(starts(&s, "quiet"), [0, 5]);
    let quiet: Vec<f32> =
        s.archived("default", false).iter().filter(|r| r.sensor == "quiet").map(|r| r.coverage).collect();
    assert_eq!(quiet, [1.0, 1.0]);
}

/// Windows per sensor, `(sensor, seconds after T0, coverage)`, and the segment ids, of the archive.
fn windows(s: &Scenario) -> Vec<(String, i64, f32, SegmentId)> {
    s.archived("default", false)
        .into_iter()
        .map(|r| (r.sensor, r.start_micros / 1_000_000 - T0_SECONDS, r.coverage, r.id))
        .collect()
}

#[test]
fn r13_chunks_alternating_between_partitions_give_the_windows_of_the_whole_recording() {
    // Order across partitions holds within the read-ahead (README): two workers of the balanced profile, with room
    // for what one partition runs ahead of the other.
    let s = Scenario::new("r13-partitions", &[("memory_budget_mb", 2_048.into())]);
    // Three sensors × 62 s of 44.1 kHz stereo in 1.7 s chunks, every other chunk on the other partition (two
    // producers with different partitioners, a topic that grew): each worker of two reads one partition.
    let frames = 74_970; // 1.7 s at 44.1 kHz
    for (n, sensor) in ["a", "b", "c"].into_iter().enumerate() {
        let audio: Vec<f32> = gaussian_noise(62 * 44_100 * 2, 7 + n as u64).iter().map(|x| 0.1 * x).collect();
        let chunks: Vec<RawChunk> = audio
            .chunks(frames * 2)
            .enumerate()
            .map(|(k, part)| {
                let mut chunk = RawChunk::new(sensor, &t0_plus(k as i64 * 1_700_000_000), wav_i16(44_100, 2, part));
                chunk.partition = Some((k % 2) as i32);
                chunk
            })
            .collect();
        s.produce_raw(&chunks);
    }
    let run = || {
        let log = String::from_utf8(s.chorus(&["run", "-w", "2", "--until-idle", "1"]).stderr).unwrap();
        assert_eq!(run_counts(&log).dead_letters, 0, "{log}");
    };
    run();
    let first = windows(&s);
    let expected: Vec<(String, i64, f32, SegmentId)> = ["a", "b", "c"]
        .into_iter()
        .flat_map(|sensor| {
            (0..12).map(move |k| {
                let id = SegmentId::of("default", sensor, (T0_SECONDS + 5 * k) * 32_000);
                (sensor.to_owned(), 5 * k, 1.0, id)
            })
        })
        .collect();
    assert_eq!(first, expected, "every window whole, none missing");

    // A replay from the start, with nothing kept, cuts the same windows.
    for dir in ["archive", "index", "state", "refined"] {
        let _ = std::fs::remove_dir_all(s.dir.path().join(dir));
    }
    s.commit(&[(0, 0), (1, 0)]);
    run();
    assert_eq!(windows(&s), first);
}

#[test]
fn r13_queries_beside_a_job_that_seals_shards_never_fail_nor_break_its_restarts() {
    let s = Scenario::new(
        "r13-readers",
        &[
            ("windows.hop_seconds", 1.0.into()),
            ("index.shard_max_points", 4.into()),
            ("index.snapshot_interval_seconds", 1.into()),
            ("archive.flush_interval_seconds", 0.5.into()),
        ],
    );
    // Eight sensors × 2 minutes at a 1 s hop: about 900 segments, a shard sealed every 4.
    let mut chunks = Vec::new();
    for n in 0..8 {
        chunks.extend(seconds_on(&format!("s{n}"), 0, 120, n % 4));
    }
    s.produce_raw(&chunks);
    let total = 8 * 116;
    let mut job = s.spawn(&["run"]);
    wait_for("the first segment", Duration::from_secs(60), || !s.archived("default", false).is_empty());
    let id = s.archived("default", false)[0].id.to_string();
    // `chorus query` opens the index while the job seals a shard of 4 points every second or so.
    let (mut queries, mut failures) = (0, Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while s.archived("default", false).len() < total && std::time::Instant::now() < deadline {
        let output = s.chorus_unchecked(&["query", "--segment", &id, "-k", "3", "--json"]);
        queries += 1;
        if !output.status.success() {
            failures.push(String::from_utf8_lossy(&output.stderr).into_owned());
        }
    }
    assert!(queries >= 3, "{queries} queries ran while the job indexed");
    assert!(failures.is_empty(), "{} of {queries} queries failed: {failures:?}", failures.len());
    // A kill -9 whenever it comes, then a restart: the index opens and holds every segment.
    job.kill().unwrap();
    job.wait().unwrap();
    let log = s.run_until_idle();
    assert_eq!(run_counts(&log).dead_letters, 0, "{log}");
    assert_eq!(s.archived("default", false).len(), total);
    let index_dir = s.dir.path().join("index/space=default");
    let params = IndexConfig::default().build(s.dir.path()).unwrap();
    assert_eq!(SpaceIndex::open(&index_dir, &params, 1536).unwrap().len(), total);

    // An index the job cannot open (a shard its manifest names is gone) is rebuilt from the archive.
    let shard = std::fs::read_dir(&index_dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("shard-"))
        .expect("a sealed shard");
    std::fs::remove_dir_all(shard.path()).unwrap();
    let log = s.run_until_idle();
    assert!(log.contains("rebuilt from the archive"), "{log}");
    assert_eq!(SpaceIndex::open(&index_dir, &params, 1536).unwrap().len(), total);
}

#[test]
fn r13_every_archived_segment_reaches_the_segments_topic_after_a_replay() {
    let s = Scenario::new("r13-publish", &[("windows.hop_seconds", 1.0.into())]);
    // The recording starts between two grid points: its first window's head is padding, as most sensors' is.
    s.chorus(&[
        "produce",
        "--sensor",
        "pole-1",
        "--start",
        "2026-05-01T05:00:00.3Z",
        "--chunk-seconds",
        "1.3",
        &sample(),
    ]);
    let mut job = s.spawn(&["run"]);
    wait_for("every window archived", Duration::from_secs(60), || s.archived("default", false).len() == 6);
    job.kill().unwrap();
    job.wait().unwrap();
    let archived: BTreeMap<String, f32> =
        s.archived("default", false).into_iter().map(|r| (r.id.to_string(), r.coverage)).collect();
    let published = |topic: &str, expected: usize| -> BTreeMap<String, f32> {
        s.consume(topic, expected)
            .iter()
            .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
            .map(|r| (r["segment_id"].as_str().unwrap().to_owned(), r["coverage"].as_f64().unwrap() as f32))
            .collect()
    };

    // Had the broker never acknowledged those records, nothing would have been committed: the replay from the
    // start must publish every archived segment (to a topic of its own here, to tell its records apart).
    s.set("kafka.segments_topic", format!("{}.replay", s.segments_topic).into());
    s.commit(&[(0, 0), (1, 0), (2, 0), (3, 0)]);
    let _ = std::fs::remove_dir_all(s.dir.path().join("state"));
    let log = s.run_until_idle();
    assert_eq!(run_counts(&log).new_segments, 0, "{log}");
    assert_eq!(published(&format!("{}.replay", s.segments_topic), 6), archived, "the replay's records");

    // A replay from the fourth chunk (4.2 s) cuts the windows at 4 s and 5 s again: the first as the archive holds it
    // (cut from more audio than the replay has, coverage 1.0 and not 0.96), not as the replay cut it.
    s.set("kafka.segments_topic", format!("{}.middle", s.segments_topic).into());
    let partition = *s.committed().iter().find(|(_, o)| **o > 0).expect("the sensor's partition").0;
    s.commit(&[(partition, 3)]);
    let _ = std::fs::remove_dir_all(s.dir.path().join("state"));
    s.run_until_idle();
    let middle = published(&format!("{}.middle", s.segments_topic), 2);
    assert_eq!(middle.len(), 2, "{middle:?}");
    for (id, coverage) in &middle {
        assert_eq!(Some(coverage), archived.get(id), "segment {id}");
    }
}

#[test]
fn r13_a_refinement_that_fails_pauses_and_ingestion_goes_on() {
    let http = free_port();
    let s = Scenario::new("r13-refine-fails", &[("http.listen", format!("127.0.0.1:{http}").into())]);
    // The refinements dataset cannot be written: its directory is a file.
    let blocked = s.dir.path().join("refined-is-a-file");
    std::fs::write(&blocked, b"").unwrap();
    s.set("refine.dir", blocked.display().to_string().into());
    let mut job = s.spawn(&["run"]);
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample()]);
    s.chorus(&["produce", "--sensor", "pole-2", "--start", T0, &sample()]);
    wait_for("the refinement to pause", Duration::from_secs(90), || {
        http_get(http, "/readyz").is_some_and(|(code, body)| code == 200 && body.contains("the refinement is paused"))
    });
    let (_, metrics) = http_get(http, "/metrics").unwrap();
    assert_eq!(metric(&metrics, "chorus_refine_paused"), 1.0);
    // Ingestion went on.
    wait_for("both sensors archived", Duration::from_secs(60), || s.archived("default", false).len() == 4);
    s.chorus(&["produce", "--sensor", "pole-3", "--start", T0, &sample()]);
    wait_for("the third sensor archived", Duration::from_secs(60), || s.archived("default", false).len() == 6);
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());
}

#[test]
fn r13_a_damaged_archive_file_is_skipped_by_readers_and_set_aside_by_the_job() {
    let http = free_port();
    let s = Scenario::new("r13-damaged", &[("http.listen", format!("127.0.0.1:{http}").into())]);
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample()]);
    s.run_until_idle();
    let day = s.archive.join("space=default/date=2026-05-01");
    let file =
        std::fs::read_dir(&day).unwrap().flatten().find(|e| e.file_name().to_string_lossy().ends_with(".parquet"));
    let file = file.expect("an archive file").path();
    std::fs::write(&file, b"PAR1 not parquet any more").unwrap();
    let _ = std::fs::remove_dir_all(s.dir.path().join("index"));

    // A reader skips it and changes nothing.
    let serve_port = free_port();
    let mut serve = s.spawn_numbered(1, &["serve", "--listen", &format!("127.0.0.1:{serve_port}")]);
    wait_for("chorus serve to answer", Duration::from_secs(60), || {
        http_get(serve_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    let (_, metrics) = http_get(serve_port, "/metrics").unwrap();
    assert_eq!(metric(&metrics, "chorus_archive_damaged_files_total{space=\"default\"}"), 1.0);
    terminate(serve.id());
    assert!(serve.wait().unwrap().success());
    assert!(file.exists());

    // The job sets it aside and goes on.
    let mut job = s.spawn(&["run"]);
    wait_for("the damaged file to be set aside", Duration::from_secs(60), || !file.exists());
    s.chorus(&["produce", "--sensor", "pole-2", "--start", T0, &sample()]);
    wait_for("the new sensor archived", Duration::from_secs(90), || {
        s.archived("default", false).iter().filter(|r| r.sensor == "pole-2").count() == 2
    });
    let (_, metrics) = http_get(http, "/metrics").unwrap();
    assert_eq!(metric(&metrics, "chorus_archive_damaged_files_total{space=\"default\"}"), 1.0);
    terminate(job.id());
    assert!(job.wait().unwrap().success(), "{}", s.job_log());
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(day.join(format!(".{name}.damaged")).exists());
}

#[test]
fn r13_a_space_header_with_a_nul_byte_is_refused() {
    let s = Scenario::new("r13-nul-space", &[]);
    let wav = wav_i16(32_000, 1, &sample_samples()[..32_000]);
    let mut chunk = RawChunk::new("pole-1", T0, wav);
    chunk.headers.push(("space".to_owned(), b"forest\0evil".to_vec()));
    s.produce_raw(&[chunk]);
    let log = s.run_until_idle();
    assert_eq!(run_counts(&log).dead_letters, 1, "{log}");
    let letters = s.consume(&s.dead_letter_topic, 1);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header("chorus.cause"), Some("bad_space"));
    let spaces: BTreeSet<String> = chorus_connectors::parquet::spaces(&s.archive).unwrap().into_iter().collect();
    assert!(spaces.is_empty(), "{spaces:?}");
}
