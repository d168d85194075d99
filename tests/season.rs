//! A sensor network for a season: the job's resident memory stays within `memory_budget_mb` whatever the number of
//! sensors and the format of their audio, and nothing is lost for it.

use std::collections::BTreeSet;
use std::time::Duration;

use chorus_operators::record::SegmentId;

use crate::support::*;

/// Runs the job until it has been idle for a second, sampling its peak resident memory (VmHWM) as it goes; returns
/// the peak and the job's log.
fn run_measuring_peak(s: &Scenario) -> (usize, String) {
    let mut job = s.spawn(&["run", "--until-idle", "1"]);
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_rss(job.id()));
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = s.job_log();
    assert!(status.success(), "{log}");
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
    let (peak, log) = run_measuring_peak(&s);
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
    let (peak, log) = run_measuring_peak(&s);
    eprintln!("8-bit 1 kHz burst: peak RSS {} MiB of a {budget_mb} MiB budget", peak >> 20);
    assert!(peak < budget_mb << 20, "peak RSS {} MiB exceeds the {budget_mb} MiB budget", peak >> 20);
    assert_eq!(run_counts(&log).dead_letters, 0, "{log}");
    // The last window of each recording waits in the sensor store for audio after it: the resampler still held its
    // last second when the input ended.
    let ids: Vec<SegmentId> = s.archived("default", false).into_iter().map(|r| r.id).collect();
    let expected: BTreeSet<SegmentId> = sensors
        .iter()
        .flat_map(|sensor| (0..59).map(move |k| SegmentId::of("default", sensor, (T0_SECONDS + 5 * k) * 32_000)))
        .collect();
    assert_eq!(ids.len(), expected.len(), "every window archived once");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
}
