//! End to end on the real broker, ONNX Runtime and files: produce → `chorus run` → archive, topics, `chorus query`.

use chorus_connectors::kafka::{HEADER_CAUSE, HEADER_ORIGIN, HEADER_REASON, SegmentRecord};
use chorus_operators::record::SegmentId;
use serde_json::Value;

use std::time::Duration;

use crate::support::{
    Scenario, T0, T0_SECONDS, gaussian_noise, root, run_counts, sample_samples, tools, wait_for, write_wav,
};

/// Ids and start times of the windows the sample gives at a 1 s hop, computed from the id definition.
fn expected_sample_windows(space: &str, sensor: &str) -> Vec<(String, String)> {
    (0..=5)
        .map(|k| {
            let id = SegmentId::of(space, sensor, (T0_SECONDS + k) * 32_000);
            (id.to_string(), format!("2026-05-01T05:00:0{k}Z"))
        })
        .collect()
}

fn sample() -> String {
    tools().sample.display().to_string()
}

#[test]
fn r2_sample_in_mid_window_chunks_gives_exactly_the_expected_windows() {
    let s = Scenario::new("r2-windows", &[("windows.hop_seconds", 1.0.into())]);
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, "--chunk-seconds", "1.3", &sample()]);
    s.run_until_idle();

    let expected = expected_sample_windows("default", "pole-1");
    let golden: Vec<(String, String)> = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/golden/r2_sample_windows.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(expected, golden, "segment ids changed: replays would no longer deduplicate against old archives");

    // pyarrow, DuckDB and polars open the archive as it is, as a Hive-partitioned dataset (the `space` key of the
    // paths and the column of the files of one type), and see what `chorus archive` lists.
    let seen: Value = serde_json::from_str(&s.python("read_archive.py", &[&s.archive.display().to_string()])).unwrap();
    let columns: Vec<&str> = seen["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    for documented in [
        "segment_id",
        "space",
        "sensor",
        "start_time",
        "end_time",
        "coverage",
        "sample_rate",
        "model",
        "topic",
        "partition",
        "offset",
        "embedding_scale",
        "embedding",
        "audio",
        "date",
    ] {
        assert!(columns.contains(&documented), "column {documented} missing from {columns:?}");
    }
    let listed: Value =
        serde_json::from_slice(&s.chorus(&["archive", "--format", "json"]).stdout).expect("chorus archive's JSON");
    let mut listed: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let start = r["start_time"].as_str().unwrap();
            serde_json::json!([r["segment_id"], r["space"], r["sensor"], start, &start[..10]])
        })
        .collect();
    listed.sort_by_key(|r| r.to_string());
    let mut expected_rows: Vec<Value> =
        expected.iter().map(|(id, start)| serde_json::json!([id, "default", "pole-1", start, "2026-05-01"])).collect();
    expected_rows.sort_by_key(|r| r.to_string());
    assert_eq!(listed, expected_rows, "chorus archive");
    for reader in ["pyarrow", "duckdb", "polars"] {
        assert_eq!(seen[reader], Value::Array(expected_rows.clone()), "{reader} reads what chorus archive lists");
    }
    assert_eq!(seen["embedding_bytes"], 1536);

    // The segments topic carries one JSON record per segment, keyed by its id.
    let records = s.consume(&s.segments_topic, 6);
    assert_eq!(records.len(), 6);
    let mut published: Vec<(String, String)> = records
        .iter()
        .map(|m| {
            let record: SegmentRecord = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(m.key.as_deref(), Some(record.segment_id.as_str()));
            assert_eq!(record.source.topic, s.audio_topic);
            (record.segment_id, record.start_time)
        })
        .collect();
    published.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(published, expected);

    // The clean stop saved the unfinished tail: a second run re-reads nothing and adds nothing.
    let log = s.run_until_idle();
    let counts = run_counts(&log);
    assert_eq!((counts.chunks, counts.new_segments, counts.dead_letters), (0, 0, 0), "{log}");
    assert_eq!(s.archived("default", false).len(), 6);

    // Without its snapshot the index is rebuilt from the archive: replayed windows are still recognised, and a
    // query still finds every segment.
    std::fs::remove_dir_all(s.dir.path().join("index")).unwrap();
    let log = s.run_until_idle();
    assert!(log.contains("caught up from the archive"), "{log}");
    assert_eq!(run_counts(&log).new_segments, 0, "{log}");
    assert_eq!(s.archived("default", false).len(), 6);
    let output = s.chorus(&["query", "--segment", &expected[2].0, "-k", "10", "--json"]);
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers[0]["hits"].as_array().unwrap().len(), 5);
}

#[test]
fn r2_segments_in_a_snapshot_but_not_yet_archived_are_archived_after_a_crash() {
    // Snapshots every second, archive files only when the job ends: a kill -9 leaves an index snapshot that holds
    // segments the archive does not.
    let s = Scenario::new(
        "r2-snapshot",
        &[
            ("windows.hop_seconds", 1.0.into()),
            ("index.snapshot_interval_seconds", 1.into()),
            ("archive.flush_interval_seconds", 3_600.0.into()),
        ],
    );
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, "--chunk-seconds", "1.3", &sample()]);
    let mut job = s.spawn(&["run"]);
    let current = s.dir.path().join("index/space=default/CURRENT");
    wait_for("an index snapshot", Duration::from_secs(60), || current.exists());
    job.kill().unwrap();
    job.wait().unwrap();
    assert!(s.archived("default", false).is_empty(), "the archive was written before the kill");

    let log = s.run_until_idle();
    assert_eq!(run_counts(&log).new_segments, 6, "{log}");
    let archived: Vec<String> = s.archived("default", false).into_iter().map(|r| r.id.to_string()).collect();
    let expected: Vec<String> = expected_sample_windows("default", "pole-1").into_iter().map(|(id, _)| id).collect();
    assert_eq!(archived, expected);
}

#[test]
fn r2_a_quiet_sensor_holds_back_only_its_own_partition_and_sigterm_commits() {
    let s = Scenario::new("r2-commits", &[("archive.flush_interval_seconds", 0.2.into())]);
    // librdkafka's default partitioner (CRC32 of the key) puts "quiet" on partition 0 and "busy" on partition 2: with
    // two workers, worker 0 reads both and worker 1's partitions stay empty.
    let produce = |sensor: &str, start: &str| {
        s.chorus(&["produce", "--sensor", sensor, "--start", start, "--chunk-seconds", "1.3", &sample()]);
    };
    produce("quiet", T0);
    produce("busy", T0);
    // "busy" goes on after a gap: its first tail is done with, and only the new one (offset 15) stays pending.
    produce("busy", "2026-05-01T05:00:20Z");
    let mut job = s.spawn(&["run", "-w", "2"]);
    // Each partition is committed up to its own oldest chunk still needed — while the job runs.
    // (The empty partitions 1 and 3 are committed at 0.)
    let expected = std::collections::BTreeMap::from([(0, 7), (1, 0), (2, 15), (3, 0)]);
    wait_for("per-partition commits", Duration::from_secs(90), || {
        let committed = s.committed();
        if committed != expected {
            eprintln!("committed {committed:?}\n{}", s.job_log());
        }
        committed == expected
    });
    // A second job on the same archive is refused while this one runs.
    let second = s.chorus_unchecked(&["run", "--until-idle", "1"]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another chorus job is running on this archive"));

    // SIGTERM: the job stops reading, drains, flushes, saves the audio still waiting for a window and commits
    // everything it read, then exits 0.
    let status = std::process::Command::new("kill").args(["-TERM", &job.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = job.wait().unwrap();
    assert!(exit.success(), "{exit}");
    assert_eq!(s.committed(), std::collections::BTreeMap::from([(0, 8), (1, 0), (2, 16), (3, 0)]));
    let sensors: Vec<(String, i64)> =
        s.archived("default", false).into_iter().map(|r| (r.sensor, r.start_micros / 1_000_000 - T0_SECONDS)).collect();
    let expected = [("busy", 0), ("busy", 5), ("busy", 20), ("busy", 25), ("quiet", 0), ("quiet", 5)];
    assert_eq!(sensors, expected.map(|(s, t)| (s.to_owned(), t)));
}

#[test]
fn r2_a_noisy_excerpt_between_window_starts_finds_its_own_sensor() {
    let s = Scenario::new("r2-query", &[]);
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample()]);
    // Other sensors record other sounds at the same time: a chirping bird, wind-like noise, a mains hum, and the
    // same bird far away under loud noise.
    let rate = 32_000.0f32;
    let n = 10 * 32_000;
    let t = |i: usize| i as f32 / rate;
    let chirps: Vec<f32> = (0..n)
        .map(|i| {
            let phase = (t(i) * 4.0).fract();
            let f = 2_500.0 + 2_000.0 * phase;
            if phase < 0.3 { 0.3 * (2.0 * std::f32::consts::PI * f * t(i)).sin() } else { 0.0 }
        })
        .collect();
    let noise: Vec<f32> = gaussian_noise(n, 7).iter().map(|x| 0.05 * x).collect();
    let hum: Vec<f32> = (0..n)
        .map(|i| (1..6).map(|h| 0.1 / h as f32 * (2.0 * std::f32::consts::PI * 50.0 * h as f32 * t(i)).sin()).sum())
        .collect();
    let bird = sample_samples();
    let far: Vec<f32> = gaussian_noise(bird.len(), 11).iter().zip(&bird).map(|(z, b)| 0.2 * z + 0.05 * b).collect();
    for (sensor, audio) in [("pole-2", chirps), ("pole-3", noise), ("pole-4", hum), ("pole-5", far)] {
        let path = s.dir.path().join(format!("{sensor}.wav"));
        write_wav(&path, 32_000, &audio);
        s.chorus(&["produce", "--sensor", sensor, "--start", T0, &path.display().to_string()]);
    }
    // Two workers: sensors are reassembled on one worker, the space indexed on another, partitions split between them.
    let log = String::from_utf8(s.chorus(&["run", "-w", "2", "--until-idle", "1"]).stderr).unwrap();
    let counts = run_counts(&log);
    assert_eq!((counts.new_segments, counts.dead_letters), (10, 0), "{log}");
    assert_eq!(s.archived("default", false).len(), 10);

    // 2.5 s to 7.5 s: between the window starts at 0 s and 5 s, with white noise 20 dB below the signal.
    let excerpt = &bird[80_000..240_000];
    let power = excerpt.iter().map(|x| x * x).sum::<f32>() / excerpt.len() as f32;
    let scale = (power / 100.0).sqrt();
    let noisy: Vec<f32> = excerpt.iter().zip(gaussian_noise(excerpt.len(), 3)).map(|(x, z)| x + scale * z).collect();
    let clip = s.dir.path().join("excerpt.wav");
    write_wav(&clip, 32_000, &noisy);

    let output = s.chorus(&["query", "--audio", &clip.display().to_string(), "-k", "5", "--json"]);
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    let top = &answers[0]["hits"][0];
    assert_eq!(top["sensor"], "pole-1", "{answers:#}");
    let (start, end) = (top["start_time"].as_str().unwrap(), top["end_time"].as_str().unwrap());
    assert!(
        start < "2026-05-01T05:00:07.5Z" && end > "2026-05-01T05:00:02.5Z",
        "top hit {start}..{end} does not overlap"
    );
}

#[test]
fn r2_malformed_messages_are_dead_lettered_and_the_audio_around_them_archived() {
    let s = Scenario::new("r2-dead", &[("windows.hop_seconds", 1.0.into())]);
    let produced: Value = serde_json::from_str(
        &s.python("produce_malformed.py", &[&crate::support::brokers(), &s.audio_topic, &sample(), T0]),
    )
    .unwrap();
    assert_eq!(produced, serde_json::json!({"valid": 6, "malformed": 7}));
    let log = s.run_until_idle();
    assert_eq!(run_counts(&log).dead_letters, 7, "{log}");

    let letters = s.consume(&s.dead_letter_topic, 7);
    assert_eq!(letters.len(), 7);
    let mut causes: Vec<&str> = letters.iter().map(|m| m.header(HEADER_CAUSE).unwrap()).collect();
    causes.sort();
    assert_eq!(causes, ["empty", "non_finite", "non_finite", "not_wav", "oversized", "sample_rate", "truncated"]);
    for letter in &letters {
        assert!(!letter.header(HEADER_REASON).unwrap().is_empty());
        assert!(letter.header(HEADER_ORIGIN).unwrap().starts_with(&format!("{}/", s.audio_topic)), "{letter:?}");
        assert_eq!(letter.key.as_deref(), Some("pole-1"));
    }
    let nan = letters.iter().find(|m| m.header(HEADER_REASON).is_some_and(|r| r.contains("NaN"))).unwrap();
    assert_eq!(nan.header(HEADER_REASON), Some("sample 1 of channel 0 is NaN"));

    let archived: Vec<(String, i64)> =
        s.archived("default", false).into_iter().map(|r| (r.id.to_string(), r.start_micros / 1_000_000)).collect();
    let expected: Vec<(String, i64)> = expected_sample_windows("default", "pole-1")
        .into_iter()
        .zip(0..)
        .map(|((id, _), k)| (id, T0_SECONDS + k))
        .collect();
    assert_eq!(archived, expected);
}

#[test]
fn r2_a_model_with_another_contract_runs_by_config_alone() {
    let probe = Scenario::new("r2-model-gen", &[]);
    let model = probe.dir.path().join("m48k.onnx");
    let generated = std::process::Command::new(&tools().python)
        .arg(root().join("scripts/gen_model.py"))
        .args(["--out", &model.display().to_string()])
        .args([
            "--sample-rate",
            "48000",
            "--window-seconds",
            "3",
            "--dim",
            "1024",
            "--input",
            "audio",
            "--output",
            "emb",
        ])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));

    let s = Scenario::new(
        "r2-model",
        &[
            ("model.path", model.display().to_string().into()),
            ("model.input", "audio".into()),
            ("model.output", "emb".into()),
            ("model.sample_rate", 48_000.into()),
            ("model.window_seconds", 3.0.into()),
            ("model.dim", 1024.into()),
            ("windows.hop_seconds", 1.5.into()),
        ],
    );
    // The 32 kHz sample is resampled to the model's 48 kHz on the way.
    s.chorus(&["produce", "--sensor", "pole-1", "--start", T0, &sample()]);
    s.run_until_idle();
    let rows = s.archived("default", true);
    let starts: Vec<i64> = rows.iter().map(|r| r.start_micros - T0_SECONDS * 1_000_000).collect();
    assert_eq!(starts, vec![0, 1_500_000, 3_000_000, 4_500_000, 6_000_000]);
    for row in &rows {
        assert_eq!(row.end_micros - row.start_micros, 3_000_000);
        assert_eq!(row.model, "m48k");
        assert_eq!(row.embedding.as_ref().unwrap().len(), 1024);
        assert_eq!(row.id, SegmentId::of("default", "pole-1", row.start_micros * 48 / 1_000));
    }
    // The archive keeps the model's own vectors: a window's embedding is nearest to itself.
    let output = s.chorus(&["query", "--segment", &rows[2].id.to_string(), "-k", "2", "--json"]);
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers[0]["hits"].as_array().unwrap().len(), 2);
    let clip = s.dir.path().join("clip.wav");
    write_wav(&clip, 32_000, &sample_samples()[..96_000]);
    let output = s.chorus(&["query", "--audio", &clip.display().to_string(), "-k", "1", "--json"]);
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers[0]["hits"][0]["segment_id"], rows[0].id.to_string(), "{answers:#}");
}
