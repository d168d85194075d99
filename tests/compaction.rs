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
    assert!(stdout.contains("Compacted 2 partition(s): 240 file(s) merged into 2."), "{stdout}");
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
