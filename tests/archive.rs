//! `chorus archive` (filtered reads with pruning, the same answer as the README's DuckDB query) and `chorus prune`
//! (retention with a dry run first).

use serde_json::Value;

use crate::support::{Scenario, root, tools};

/// The first ```sql block of the README that mentions `needle`.
fn readme_sql(needle: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    readme
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("the README has no SQL block mentioning {needle}"))
        .to_owned()
}

/// The figure after `label` in the archive command's summary line, e.g. `read 1 of 2 day partition(s)`.
fn summary_figures(stderr: &str, label: &str) -> (usize, usize) {
    let line = stderr.lines().find(|l| l.starts_with("chorus archive:")).expect("a summary line");
    let at = line.find(label).unwrap_or_else(|| panic!("{label} not in {line}"));
    let words: Vec<&str> = line[..at].split_whitespace().collect();
    let n = words.len();
    (words[n - 3].parse().unwrap(), words[n - 1].parse().unwrap())
}

#[test]
fn r6_archive_queries_prune_partitions_and_row_groups_and_agree_with_duckdb() {
    // One file per sensor and flush: a sensor filter skips the other sensors' row groups.
    let s =
        Scenario::new("r6-archive", &[("windows.hop_seconds", 1.0.into()), ("archive.max_rows_per_file", 6.into())]);
    let sample = tools().sample.display().to_string();
    for (sensor, start) in
        [("pole-7", "2026-05-01T05:00:00Z"), ("pole-8", "2026-05-01T05:00:00Z"), ("pole-7", "2026-05-02T05:00:00Z")]
    {
        s.chorus(&["produce", "--sensor", sensor, "--start", start, &sample]);
    }
    s.run_until_idle();
    // pole-7's jump to the next day closes its first run: that run's tail is cut too (4 more windows).
    assert_eq!(s.archived("default", false).len(), 6 + 4 + 6 + 6);

    let output = s.chorus(&[
        "archive",
        "--sensor",
        "pole-7",
        "--from",
        "2026-05-01T05:00:02Z",
        "--to",
        "2026-05-01T05:00:04Z",
        "--format",
        "json",
    ]);
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    let got: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!((r["space"].as_str(), r["sensor"].as_str()), (Some("default"), Some("pole-7")), "{r}");
            (r["segment_id"].as_str().unwrap().to_owned(), r["start_time"].as_str().unwrap().to_owned())
        })
        .collect();
    let expected_times = ["2026-05-01T05:00:02Z", "2026-05-01T05:00:03Z"];
    assert_eq!(got.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), expected_times);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(summary_figures(&stderr, "day partition(s)"), (1, 2), "{stderr}");
    let (read, groups) = summary_figures(&stderr, "row group(s)");
    assert!(read >= 1 && read < groups, "the pole-8 row groups are skipped by their statistics: {stderr}");

    // The README's DuckDB query gives the same segments.
    let sql = readme_sql("pole-7").replace("var/archive", &s.archive.display().to_string());
    let duck: Value = serde_json::from_str(&s.python("duckdb_sql.py", &[&sql])).unwrap();
    let duck: Vec<(String, String)> = duck
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[3].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(duck, got);

    // CSV and the table carry the same rows; a bad bound names itself.
    let csv = String::from_utf8(s.chorus(&["archive", "--sensor", "pole-8", "--format", "csv"]).stdout).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(csv.starts_with("segment_id,space,sensor,start_time,end_time,coverage,label,label_score,cluster\n"));
    let table = String::from_utf8(s.chorus(&["archive", "--from", "2026-05-02"]).stdout).unwrap();
    assert_eq!(table.lines().filter(|l| l.contains("pole-7")).count(), 6, "{table}");
    let bad = s.chorus_unchecked(&["archive", "--from", "May 1st"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("'May 1st'"));

    // Retention: a dry run lists the first day and deletes nothing; --apply deletes it and its derived state.
    let today = chrono::Utc::now().date_naive();
    let days = (today - chrono::NaiveDate::from_ymd_opt(2026, 5, 2).unwrap()).num_days().to_string();
    let day_one = s.archive.join("space=default/date=2026-05-01");
    let dry = String::from_utf8(s.chorus(&["prune", "--older-than-days", &days]).stdout).unwrap();
    assert!(dry.contains("date=2026-05-01") && !dry.contains("date=2026-05-02"), "{dry}");
    assert!(dry.contains("Dry run: nothing was deleted"), "{dry}");
    assert!(day_one.exists() && s.dir.path().join("index/space=default").exists());

    let job = s.spawn(&["run"]);
    crate::support::wait_for("the job to start", std::time::Duration::from_secs(60), || {
        s.job_log().contains("Worker reading")
    });
    let refused = s.chorus_unchecked(&["prune", "--older-than-days", &days, "--apply"]);
    crate::support::terminate(job.id());
    assert!(!refused.status.success(), "pruning under a running job must be refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another chorus job is running"));
    assert!(day_one.exists());
    let mut job = job;
    job.wait().unwrap();

    let applied = String::from_utf8(s.chorus(&["prune", "--older-than-days", &days, "--apply"]).stdout).unwrap();
    let deleted = applied.split("Deleted ").nth(1).and_then(|rest| rest.split_whitespace().next());
    assert_eq!(deleted, Some("2"), "the archive's day and the refinements' day: {applied}");
    assert!(!day_one.exists() && !s.dir.path().join("refined/space=default/date=2026-05-01").exists());
    assert!(!s.dir.path().join("index/space=default").exists());
    assert!(s.archive.join("space=default/date=2026-05-02").exists());
    let left = s.archived("default", false);
    assert_eq!(left.len(), 6);
    assert!(left.iter().all(|r| r.sensor == "pole-7"));
    // The index is rebuilt from what the archive still holds: a segment's neighbours are the other five.
    let output = s.chorus(&["query", "--segment", &left[0].id.to_string(), "-k", "10", "--json"]);
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers[0]["hits"].as_array().unwrap().len(), 5, "{answers}");
    let again = String::from_utf8(s.chorus(&["prune", "--older-than-days", &days]).stdout).unwrap();
    assert!(again.starts_with("Nothing to prune"), "{again}");
}

/// Decodes a PNG: width, height and RGB pixels.
fn decode_png(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    (info.width as usize, info.height as usize, pixels)
}

#[test]
fn r6_spectrograms_of_archived_segments_show_a_tone_in_its_frequency_row() {
    use chorus::spectrogram::{BAND_ROWS, BANDS, Spectrogram, row_of_band, size};
    let s = Scenario::new("r6-spectrogram", &[]);
    // 10 s of a 3 kHz tone recorded at 44.1 kHz: the job resamples it to the model's 32 kHz.
    let rate = 44_100;
    let tone: Vec<f32> =
        (0..10 * rate).map(|i| 0.3 * (2.0 * std::f32::consts::PI * 3_000.0 * i as f32 / rate as f32).sin()).collect();
    let wav = s.dir.path().join("tone.wav");
    crate::support::write_wav(&wav, rate as u32, &tone);
    s.chorus(&["produce", "--sensor", "pole-t", "--start", crate::support::T0, &wav.display().to_string()]);
    s.run_until_idle();
    let archived = s.archived("default", false);
    assert_eq!(archived.len(), 1, "one full window; the tail waits for more audio");
    let id = archived[0].id.to_string();

    let picture = s.dir.path().join("seg.png");
    s.chorus(&["spectrogram", "--segment", &id, "-o", &picture.display().to_string()]);
    let (width, height, pixels) = decode_png(&std::fs::read(&picture).unwrap());
    assert_eq!((width, height), size(500), "5 s at one column per 10 ms");
    // The plot's brightest row is the 3 kHz band's.
    let (left, top) = (width - 10 - 500, 12);
    let brightness = |y: usize| -> u32 {
        (left..left + 500).map(|x| pixels[(y * width + x) * 3..][..3].iter().map(|&v| u32::from(v)).sum::<u32>()).sum()
    };
    let row = (top..top + BANDS * BAND_ROWS).max_by_key(|&y| brightness(y)).unwrap() - top;
    let band = Spectrogram::compute(&[0.0], 32_000).band_of(3_000.0);
    assert!(row.abs_diff(row_of_band(band)) <= BAND_ROWS, "row {row}, 3 kHz is row {}", row_of_band(band));

    // Query results get a picture each.
    let dir = s.dir.path().join("hits");
    s.chorus(&[
        "query",
        "--audio",
        &wav.display().to_string(),
        "-k",
        "3",
        "--spectrograms",
        &dir.display().to_string(),
    ]);
    let pictures: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!pictures.is_empty() && pictures.iter().all(|n| n.to_string_lossy().ends_with(&format!("{id}.png"))));

    // An unknown segment is named in the error.
    let missing = s.chorus_unchecked(&["spectrogram", "--segment", "00000000000000ff", "-o", "x.png"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("segment 00000000000000ff is not in the archive"));
}
