//! A sensor network for a season: the job's resident memory stays within `memory_budget_mb` whatever the number of
//! sensors and the format of their audio, and nothing is lost for it.

use std::collections::BTreeSet;
use std::time::Duration;

use chorus_operators::record::SegmentId;

use crate::support::*;

/// Runs the job with `args`, sampling its peak resident memory (VmHWM) as it goes; returns the peak and the job's
/// log. The job keeps its memory in 4 KiB pages (transparent huge pages off: see `keep_small_pages` in
/// dataflows/main.rs), which the kernel shows as `THP_enabled: 0` in its /proc status.
fn run_measuring_peak(s: &Scenario, args: &[&str]) -> (usize, String) {
    let mut job = s.spawn(args);
    let mut peak = 0;
    let mut huge_pages = None;
    let status = loop {
        peak = peak.max(peak_rss(job.id()));
        // The last value shown while the job runs (the first may be from before its main). Kernels before 5.0 show
        // no such line, nor does a job that has exited.
        if let Some(shown) = proc_status_field(Some(job.id()), "THP_enabled") {
            huge_pages = Some(shown);
        }
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = s.job_log();
    assert!(status.success(), "{log}");
    match huge_pages {
        _ if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() => {}
        Some(enabled) => assert_eq!(enabled, "0", "the job turns transparent huge pages off for itself"),
        None => eprintln!("not checked: this kernel's /proc status has no THP_enabled line"),
    }
    (peak, log)
}

#[test]
fn r15_twenty_five_hundred_sensors_of_a_few_milliseconds_each_stay_within_the_budget_and_keep_their_audio() {
    let budget_mb: usize = 512;
    let s = Scenario::new(
        "r15-sensors",
        &[
            ("memory_budget_mb", (budget_mb as i64).into()),
            ("embed.threads", 1.into()),
            ("refine.enabled", false.into()),
            ("windows.min_coverage_seconds", 1.0.into()),
        ],
    );
    // 2,500 sensors that each sent 20 ms, 2.5 s after a window's start: each once held 2.5 s of silence before it.
    let sensors: Vec<String> = (0..2_500).map(|i| format!("pole{i:04}")).collect();
    let first = |sensor: &str| {
        let samples: Vec<f32> = gaussian_noise(640, sensor.len() as u64).iter().map(|x| 0.1 * x).collect();
        RawChunk::new(sensor, &t0_plus(2_500_000_000), wav_i16(32_000, 1, &samples))
    };
    s.produce_raw(&sensors.iter().map(|sensor| first(sensor)).collect::<Vec<_>>());
    let (peak, log) = run_measuring_peak(&s, &["run", "--until-idle", "1"]);
    eprintln!("2,500 sensors: peak RSS {} MiB of a {budget_mb} MiB budget", peak >> 20);
    assert!(peak < budget_mb << 20, "peak RSS {} MiB exceeds the {budget_mb} MiB budget", peak >> 20);
    assert_eq!(run_counts(&log).dead_letters, 0, "{log}");
    // At the clean stop every sensor's audio went to the store, and every message was committed.
    let stored = std::fs::read_dir(s.dir.path().join("state/sensors")).unwrap().count();
    assert_eq!(stored, 2_500);
    let committed: i64 = s.committed().values().sum();
    assert_eq!(committed, 2_500);

    // Ten of them send the rest of their window: the 20 ms kept on disk are in it.
    let returning = &sensors[..10];
    let rest = |sensor: &str| {
        let samples: Vec<f32> = gaussian_noise(79_360, 7).iter().map(|x| 0.1 * x).collect();
        RawChunk::new(sensor, &t0_plus(2_520_000_000), wav_i16(32_000, 1, &samples))
    };
    s.produce_raw(&returning.iter().map(|sensor| rest(sensor)).collect::<Vec<_>>());
    let log = s.run_until_idle();
    assert_eq!(run_counts(&log).dead_letters, 0, "{log}");
    let rows = s.archived("default", false);
    let mut got: Vec<(String, SegmentId, f32)> = rows.into_iter().map(|r| (r.sensor, r.id, r.coverage)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, SegmentId, f32)> = returning
        .iter()
        .map(|sensor| (sensor.clone(), SegmentId::of("default", sensor, T0_SECONDS * 32_000), 0.5))
        .collect();
    assert_eq!(got, want, "each returning sensor's window holds 2.5 s of recorded audio: its 20 ms and the rest");
}

#[test]
fn r15_a_burst_of_8_bit_1_khz_audio_stays_within_the_budget_and_loses_nothing() {
    let budget_mb: usize = 512;
    let s = Scenario::new(
        "r15-low-rate",
        &[
            ("memory_budget_mb", (budget_mb as i64).into()),
            ("embed.threads", 1.into()),
            ("refine.enabled", false.into()),
        ],
    );
    // Twenty recorders upload 300 s of 8-bit 1 kHz audio each in 10 s chunks: 6 MB of payload, 768 MB once at 32 kHz
    // as f32 — a budget that counts payload bytes reads all of it at once.
    let sensors: Vec<String> = (0..20).map(|i| format!("low{i:02}")).collect();
    let mut chunks = Vec::new();
    for (n, sensor) in sensors.iter().enumerate() {
        let audio: Vec<f32> = gaussian_noise(300_000, 100 + n as u64).iter().map(|x| 0.2 * x).collect();
        for (k, part) in audio.chunks(10_000).enumerate() {
            chunks.push(RawChunk::new(sensor, &t0_plus(k as i64 * 10_000_000_000), wav_pcm(1_000, 1, 8, part)));
        }
    }
    s.produce_raw(&chunks);
    // Finished recordings: their tails are cut when the job stops.
    let (peak, log) = run_measuring_peak(&s, &["run", "--until-idle", "1", "--flush-tails"]);
    eprintln!("8-bit 1 kHz burst: peak RSS {} MiB of a {budget_mb} MiB budget", peak >> 20);
    assert!(peak < budget_mb << 20, "peak RSS {} MiB exceeds the {budget_mb} MiB budget", peak >> 20);
    assert_eq!(run_counts(&log).dead_letters, 0, "{log}");
    // Every window of each recording, the last one too (the resampler still held its last milliseconds when the
    // input ended: --flush-tails cut it).
    let ids: Vec<SegmentId> = s.archived("default", false).into_iter().map(|r| r.id).collect();
    let expected: BTreeSet<SegmentId> = sensors
        .iter()
        .flat_map(|sensor| (0..60).map(move |k| SegmentId::of("default", sensor, (T0_SECONDS + 5 * k) * 32_000)))
        .collect();
    assert_eq!(ids.len(), expected.len(), "every window archived once");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
}

/// `(seconds after T0, coverage)` of a sensor's archived windows, in time order.
fn windows_of(s: &Scenario, sensor: &str) -> Vec<(i64, f32)> {
    let rows = s.archived("default", false).into_iter().filter(|r| r.sensor == sensor);
    rows.map(|r| (r.start_micros / 1_000_000 - T0_SECONDS, r.coverage)).collect()
}

/// `seconds` of 16 kHz noise for `sensor`, starting `from` seconds after T0, in 1 s chunks.
fn recording(sensor: &str, from: i64, seconds: i64) -> Vec<RawChunk> {
    (from..from + seconds)
        .map(|k| {
            let samples: Vec<f32> = gaussian_noise(16_000, k as u64 + 1).iter().map(|x| 0.1 * x).collect();
            RawChunk::new(sensor, &t0_plus(k * 1_000_000_000), wav_i16(16_000, 1, &samples))
        })
        .collect()
}

#[test]
fn r15_a_finished_recording_gets_its_last_window_after_flush_tail_seconds_and_it_stands_when_the_sensor_goes_on() {
    let s = Scenario::new("r15-tail", &[("windows.flush_tail_seconds", 2.into()), ("refine.enabled", false.into())]);
    // 57 s of audio: 11 complete windows, and 2 s in the window at 55 s.
    s.produce_raw(&recording("upload", 0, 57));
    // The job runs on for 6 s after the last chunk: 2 s of them the sensor's tail waits.
    let log = String::from_utf8(s.chorus(&["run", "--until-idle", "6"]).stderr).unwrap();
    assert_eq!(run_counts(&log).new_segments, 12, "{log}");
    let mut want: Vec<(i64, f32)> = (0..11).map(|k| (5 * k, 1.0)).collect();
    want.push((55, 0.4));
    assert_eq!(windows_of(&s, "upload"), want);

    // The sensor goes on, 13 s more: the padded window at 55 s stands, and the next ones are those it would have
    // had (the 3 s it brings for the window at 55 s are in no window). The last of them waits for the resampler's
    // last milliseconds until the tail is cut.
    s.produce_raw(&recording("upload", 57, 13));
    let log = String::from_utf8(s.chorus(&["run", "--until-idle", "6"]).stderr).unwrap();
    let counts = run_counts(&log);
    assert_eq!((counts.new_segments, counts.dead_letters), (2, 0), "{log}");
    want.extend([(60, 1.0), (65, 1.0)]);
    assert_eq!(windows_of(&s, "upload"), want);
}

#[test]
fn r15_without_a_tail_cut_the_last_window_of_a_recording_waits_for_audio_after_it() {
    let s = Scenario::new("r15-no-tail", &[("windows.flush_tail_seconds", 0.into()), ("refine.enabled", false.into())]);
    s.produce_raw(&recording("upload", 0, 57));
    let log = String::from_utf8(s.chorus(&["run", "--until-idle", "6"]).stderr).unwrap();
    assert_eq!(run_counts(&log).new_segments, 11, "{log}");
    // A backfill's run cuts it when it stops.
    let log = String::from_utf8(s.chorus(&["run", "--until-idle", "1", "--flush-tails"]).stderr).unwrap();
    assert_eq!(run_counts(&log).new_segments, 1, "{log}");
    assert_eq!(windows_of(&s, "upload").last(), Some(&(55, 0.4)));
}
