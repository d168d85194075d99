//! The broker's retention: the audio topic chorus creates keeps `kafka.audio_retention_hours` of audio on the bundled
//! broker, and audio the broker deleted before the job read it is reported, never lost silently.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::support::{
    PrivateBroker, Scenario, T0, free_port, http_get, metric, run_counts, terminate, tools, wait_for,
};

#[test]
fn r16_the_bundled_broker_deletes_audio_past_its_retention_and_the_job_says_what_it_never_read() {
    // Its retention runs every second (every ten minutes by default).
    let broker = PrivateBroker::start_with("maintenance_interval=1s");
    let retention = Duration::from_secs(10);
    let port = free_port();
    let s = Scenario::on(
        &broker.address(),
        "r16-retention",
        &[
            ("kafka.audio_retention_hours", (retention.as_secs_f64() / 3_600.0).into()),
            ("kafka.partitions", 1.into()),
            ("http.listen", format!("127.0.0.1:{port}").into()),
        ],
    );
    let sample = tools().sample.display().to_string();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &s.brokers).create().unwrap();
    let watermarks = || consumer.fetch_watermarks(&s.audio_topic, 0, Duration::from_secs(5)).unwrap();
    let produce = |sensor: &str| {
        s.chorus(&["produce", "--sensor", sensor, "--start", T0, "--chunk-seconds", "1", &sample]);
    };

    // Read in time: archived.
    produce("pole-1");
    let (_, chunks) = watermarks();
    assert!(chunks >= 10);
    let log = s.run_until_idle();
    assert_eq!(run_counts(&log).chunks, chunks as u64, "{log}");
    assert_eq!(s.archived("default", false).len(), 2);

    // Not read in time: produced while no job runs and deleted by the broker (which then forgets the partition's end).
    produce("pole-2");
    assert_eq!(watermarks().1, 2 * chunks);
    wait_for("the broker to delete what the job did not read", retention * 3, || {
        let (low, high) = watermarks();
        low >= 2 * chunks || high == 0
    });
    // Read in time again.
    produce("pole-3");
    assert_eq!(watermarks(), (2 * chunks, 3 * chunks));
    let mut job = s.spawn(&["run"]);
    wait_for("the chunks of pole-3", Duration::from_secs(60), || s.archived("default", false).len() == 4);
    // Counted once: at start against the oldest offset kept, not again as a gap when reading resumes there.
    let metrics = || http_get(port, "/metrics").map(|(_, text)| text);
    wait_for("the job's metrics", Duration::from_secs(30), || metrics().is_some());
    let metrics = metrics().unwrap_or_else(|| panic!("{}", s.job_log()));
    assert_eq!(metric(&metrics, "chorus_kafka_skipped_offsets_total{partition=\"0\"}"), chunks as f64);
    terminate(job.id());
    assert!(job.wait().unwrap().success());
    let log = s.job_log();
    let expired = log
        .lines()
        .find(|l| l.contains("Audio expired from the broker before the job read it"))
        .unwrap_or_else(|| panic!("the job says nothing of the audio it lost:\n{log}"));
    assert!(expired.contains(&format!("committed={chunks} oldest_kept={} lost={chunks}", 2 * chunks)), "{expired}");
    let sensors: std::collections::BTreeSet<String> =
        s.archived("default", false).into_iter().map(|r| r.sensor).collect();
    assert_eq!(sensors, ["pole-1", "pole-3"].map(String::from).into());
    // The broker deletes what was read, too: its database stops growing with every chunk ever produced.
    wait_for("the broker to delete what the job read", retention * 3, || {
        let (low, high) = watermarks();
        low >= 3 * chunks || high == 0
    });
}
