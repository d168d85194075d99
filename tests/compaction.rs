//! Compaction on real files and processes: `chorus compact` killed at random points loses and doubles nothing, and
//! readers running while it swaps partitions (chorus's own, DuckDB, pyarrow, polars) never see a row twice or miss one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chorus_connectors::parquet::{self, ArchiveConfig, ArchiveWriter};
use chorus_operators::record::{Origin, Segment, SegmentId, SegmentKey};
use serde_json::Value;

use crate::support::{Scenario, T0_SECONDS, tools};

/// Fills `archive` as a job's flushes would: two days (2026-05-01 and 02), each `files` files of `rows` rows over
/// five sensors, with 16 KB of audio a row. Returns how many times each id was written (once).
fn fill(archive: &Path, files: usize, rows: usize) -> BTreeMap<SegmentId, usize> {
    let settings = ArchiveConfig { dir: archive.to_path_buf(), ..Default::default() }.build(Path::new("/")).unwrap();
    let mut writer = ArchiveWriter::new(settings, "standin", 8, "w0");
    let mut ids = BTreeMap::new();
    for day in 0..2i64 {
        for f in 0..files {
            for r in 0..rows {
                let n = (f * rows + r) as i64;
                let start = (T0_SECONDS + day * 86_400) * 32_000 + (n / 5) * 160_000;
                let key = SegmentKey {
                    space: "default".into(),
                    sensor: format!("pole-{}", n % 5),
                    start,
                    sample_rate: 32_000,
                    len: 160_000,
                };
                *ids.entry(key.id()).or_default() += 1;
                writer.add(Segment {
                    key,
                    coverage: 1.0,
                    origin: Origin { topic: "audio".into(), partition: 0, offset: n },
                    resumed: false,
                    embedding: (0..8).map(|k| ((n + k) % 7) as f32 - 3.0).collect(),
                    audio: (0..8_000).map(|k| ((k * 31 + n * 17) % 2_000) as i16 - 1_000).collect(),
                });
            }
            writer.flush().unwrap();
        }
    }
    ids
}

/// How many times chorus's reader sees each id of the archive.
fn read_ids(archive: &Path) -> BTreeMap<SegmentId, usize> {
    let mut ids = BTreeMap::new();
    parquet::read_space(archive, "default", false, |row| *ids.entry(row.id).or_default() += 1).unwrap();
    ids
}

/// The whole numbers in `line`, in order.
fn numbers(line: &str) -> Vec<u64> {
    line.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().unwrap()).collect()
}

/// Files in each day partition.
fn files_per_day(archive: &Path) -> Vec<usize> {
    parquet::days(archive, "default").unwrap().iter().map(|(_, files)| files.len()).collect()
}

#[test]
fn r16_readers_during_compaction_see_every_row_once() {
    let s = Scenario::new("r16-readers", &[]);
    let expected = fill(&s.archive, 120, 10);
    assert_eq!(files_per_day(&s.archive), vec![120, 120]);

    let stop = s.dir.path().join("stop-reading");
    let python = std::process::Command::new(&tools().python)
        .arg(crate::support::root().join("tests/fixtures/read_during_compaction.py"))
        .args([s.archive.display().to_string(), expected.len().to_string(), stop.display().to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let compacted = std::thread::scope(|scope| {
        let compact = scope.spawn(|| {
            // Let the readers start first.
            std::thread::sleep(Duration::from_millis(1_500));
            s.chorus(&["compact"])
        });
        let mut reads = 0;
        while !compact.is_finished() {
            assert_eq!(read_ids(&s.archive), expected, "chorus's reader, read {reads}");
            reads += 1;
        }
        let output = compact.join().unwrap();
        assert!(reads >= 2, "chorus's reader read {reads} times during the compaction");
        output
    });
    // The Python readers keep reading for a moment after the last swap too.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, b"").unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    for reader in ["duckdb", "pyarrow", "polars"] {
        let seen = &report[reader];
        assert!(seen["reads"].as_u64().unwrap() >= 2, "{reader}: {seen}");
        assert_eq!(seen["wrong"], Value::Array(vec![]), "{reader} saw a row twice or missed one: {seen}");
        assert_eq!(seen["errors"], Value::Array(vec![]), "{reader}: {seen}");
    }
    let stdout = String::from_utf8(compacted.stdout).unwrap();
    let summary = stdout.lines().find(|l| l.starts_with("Compacted ")).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(numbers(summary), vec![2, 240, 2], "{summary}");
    assert_eq!(files_per_day(&s.archive), vec![1, 1]);
    assert_eq!(read_ids(&s.archive), expected);
    eprintln!("readers during the compaction: {report}");
}

#[test]
fn r16_compaction_killed_at_random_points_loses_and_doubles_nothing() {
    // How long one whole run takes: the kills land within it.
    let timing = Scenario::new("r16-kill-timing", &[]);
    fill(&timing.archive, 150, 10);
    let started = Instant::now();
    timing.chorus(&["compact"]);
    let whole = started.elapsed();

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut interrupted = Vec::new();
    for round in 0..8 {
        // Each round on an archive of its own, so every kill lands in a run with work left to do.
        let s = Scenario::new(&format!("r16-kill-{round}"), &[]);
        let expected = fill(&s.archive, 150, 10);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = whole.mul_f64(0.05 + 0.9 * (seed % 1_000) as f64 / 1_000.0);
        let mut child = s.spawn(&["compact"]);
        std::thread::sleep(at);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        let files = files_per_day(&s.archive);
        if !finished {
            interrupted.push(format!("{at:.0?}: {files:?} files a day"));
        }
        let ids = read_ids(&s.archive);
        assert_eq!(ids.len(), expected.len(), "round {round}, killed after {at:?}: ids missing");
        assert_eq!(ids, expected, "round {round}, killed after {at:?}: a row read twice");
        // The next run finishes what the killed one began, and leaves one file a day.
        s.chorus(&["compact"]);
        assert_eq!(files_per_day(&s.archive), vec![1, 1]);
        assert_eq!(read_ids(&s.archive), expected);
        // What the killed run staged is gone; only swapped-out directories wait out their grace period.
        let staging = s.dir.path().join(".archive.staging/space=default");
        for entry in std::fs::read_dir(&staging).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(name.starts_with("old-"), "{name} left in {}", staging.display());
        }
    }
    assert!(interrupted.len() >= 4, "too few kills landed inside a run of {whole:?}: {interrupted:?}");
    eprintln!("kills inside a compaction of {whole:?}: {interrupted:?}");
}

#[test]
fn r16_audio_prune_removes_the_audio_of_old_days_keeps_every_row_and_labelled_examples() {
    let s = Scenario::new("r16-audio", &[("windows.hop_seconds", 1.0.into())]);
    let sample = tools().sample.display().to_string();
    for sensor in ["pole-1", "pole-2"] {
        s.chorus(&["produce", "--sensor", sensor, "--start", crate::support::T0, &sample]);
    }
    s.run_until_idle();
    let rows_before: Value = serde_json::from_slice(&s.chorus(&["archive", "--format", "json"]).stdout).unwrap();
    let ids: Vec<String> =
        rows_before.as_array().unwrap().iter().map(|r| r["segment_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 12);
    let (labelled, other) = (&ids[0], &ids[1]);
    // A person labels one segment.
    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &s.brokers).create().unwrap();
    producer.send(rdkafka::producer::BaseRecord::to(&s.labels_topic).key(labelled).payload("wren")).unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let bytes = |archive: &Path| -> u64 {
        parquet::files(archive, "default").unwrap().iter().map(|f| std::fs::metadata(f.path()).unwrap().len()).sum()
    };
    let before = bytes(&s.archive);

    // A dry run lists the partition, its bytes and its audio, and changes nothing.
    let dry =
        String::from_utf8(s.chorus(&["prune", "--audio-older-than-days", "30", "--keep-labelled"]).stdout).unwrap();
    assert!(dry.contains("space=default  date=2026-05-01"), "{dry}");
    assert!(dry.contains("of which audio"), "{dry}");
    assert!(dry.contains("Dry run: nothing was changed."), "{dry}");
    assert_eq!(bytes(&s.archive), before);
    let png = s.dir.path().join("other.png");
    s.chorus(&["spectrogram", "--segment", other, "-o", &png.display().to_string()]);

    let applied =
        String::from_utf8(s.chorus(&["prune", "--audio-older-than-days", "30", "--keep-labelled", "--apply"]).stdout)
            .unwrap();
    let kept = applied.lines().find(|l| l.contains("carry a given label")).unwrap_or_else(|| panic!("{applied}"));
    assert_eq!(numbers(kept), vec![1], "{kept}");
    let after = bytes(&s.archive);
    // Every row stays (the same listing), the audio of all but the labelled segment goes.
    let rows_after: Value = serde_json::from_slice(&s.chorus(&["archive", "--format", "json"]).stdout).unwrap();
    assert_eq!(rows_after, rows_before);
    assert_eq!(files_per_day(&s.archive), vec![1]);
    // One segment of twelve keeps its audio.
    assert!(after * 4 < before, "{before} bytes before, {after} after");
    let kept = s.dir.path().join("labelled.png");
    s.chorus(&["spectrogram", "--segment", labelled, "-o", &kept.display().to_string()]);
    let refused = s.chorus_unchecked(&["spectrogram", "--segment", other, "-o", &png.display().to_string()]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains(&format!("the audio of segment {other} was pruned")), "{message}");
    // The search page shows what the API says of a segment's audio and picture.
    let port = crate::support::free_port();
    let mut serve = s.spawn_numbered(1, &["serve", "--listen", &format!("127.0.0.1:{port}")]);
    crate::support::wait_for("chorus serve to answer", Duration::from_secs(60), || {
        crate::support::http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    for what in ["audio.wav", "spectrogram.png"] {
        let (status, body) = crate::support::http_get(port, &format!("/v1/segments/{other}/{what}")).unwrap();
        assert_eq!(status, 404, "{what}: {body}");
        assert!(body.contains(&format!("the audio of segment {other} was pruned")), "{what}: {body}");
        let (status, _) = crate::support::http_get(port, &format!("/v1/segments/{labelled}/{what}")).unwrap();
        assert_eq!(status, 200, "{what} of the labelled segment");
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    // The embeddings are still there: a search by the pruned segment finds its neighbours.
    let answers: Value =
        serde_json::from_slice(&s.chorus(&["query", "--segment", other, "-k", "3", "--json"]).stdout).unwrap();
    assert_eq!(answers[0]["hits"].as_array().unwrap().len(), 3, "{answers}");
    // Nothing is left to prune keeping labelled segments; without keeping them, their audio is what is left.
    let again =
        String::from_utf8(s.chorus(&["prune", "--audio-older-than-days", "30", "--keep-labelled"]).stdout).unwrap();
    assert!(again.starts_with("Nothing to prune"), "{again}");
    let all = String::from_utf8(s.chorus(&["prune", "--audio-older-than-days", "30"]).stdout).unwrap();
    let listed = all.lines().find(|l| l.contains("space=default  date=2026-05-01")).unwrap_or_else(|| panic!("{all}"));
    let files = listed.split_whitespace().skip_while(|w| !w.starts_with("date=")).nth(1).unwrap();
    assert_eq!(files.parse::<usize>().unwrap(), 1, "{listed}");
    // pyarrow, DuckDB and polars read the rewritten archive.
    let seen: Value = serde_json::from_str(&s.python("read_archive.py", &[&s.archive.display().to_string()])).unwrap();
    for reader in ["pyarrow", "duckdb", "polars"] {
        assert_eq!(seen[reader].as_array().unwrap().len(), 12, "{reader}");
    }
}

#[test]
fn r16_the_job_compacts_the_archive_and_the_refinements_as_it_writes_them() {
    // A file per row, compaction rounds every half second, a day closed at once (2026-05-01 is long past).
    let compaction: toml::Table =
        toml::from_str("interval_seconds = 0.5\nclose_after_seconds = 0\nfanout = 2").unwrap();
    let s = Scenario::new(
        "r16-job",
        &[
            ("windows.hop_seconds", 1.0.into()),
            ("archive.max_rows_per_file", 1.into()),
            ("archive.flush_interval_seconds", 0.2.into()),
            ("archive.compaction", compaction.into()),
        ],
    );
    let sample = tools().sample.display().to_string();
    // Three runs, a sensor each: the refinement writes its file at each stop (and every 5 s).
    let mut log = String::new();
    for sensor in ["pole-1", "pole-2", "pole-3"] {
        s.chorus(&["produce", "--sensor", sensor, "--start", crate::support::T0, &sample]);
        log += &s.run_until_idle();
    }
    // A run with nothing to read: its compaction rounds find what the others left.
    log += &String::from_utf8(s.chorus(&["run", "--until-idle", "3"]).stderr).unwrap();
    let merges: Vec<&str> = log.lines().filter(|l| l.contains("Compacted a day partition.")).collect();
    assert!(merges.iter().any(|l| l.contains("dataset=\"archive\"")), "{log}");
    assert!(merges.iter().any(|l| l.contains("dataset=\"refinements\"")), "{log}");
    // 18 segments, each written as a file of its own: the closed day ends as at most two files in each dataset.
    let segments = s.archived("default", false);
    assert_eq!(segments.len(), 18);
    let ids: std::collections::BTreeSet<SegmentId> = segments.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 18, "every segment once");
    let files = files_per_day(&s.archive);
    assert!(files.len() == 1 && files[0] <= 2, "{files:?}");
    let refined = s.dir.path().join("refined");
    let files: Vec<usize> = parquet::days(&refined, "default").unwrap().iter().map(|(_, f)| f.len()).collect();
    assert!(files.len() == 1 && files[0] <= 2, "{files:?}");
    // The refinements dataset keeps every row: the latest per segment is read as before.
    let latest = parquet::latest_refinements(&refined, "default").unwrap();
    assert_eq!(latest.len(), 18);
}
