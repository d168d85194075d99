//! The running job end to end, per profile: latency under a steady real-time load, throughput on a backlog, and the
//! scaling from one worker to two.
//!
//!     cargo bench --bench stream -- [--sensors 40] [--seconds 60] [--backlog-seconds 300] [--profiles a,b] [--refine]
//!                                    [--tenants]
//!
//! Every run also reports the job's peak resident memory (VmHWM). `--profiles` picks profiles from `config/` by name
//! (default: all five).
//!
//! With `--tenants`, the balanced and multi-tenant profiles face a hot tenant and a quiet one: the hot space's
//! `--sensors` sensors have produced a backlog of `--backlog-seconds` each, at low priority, when the job starts; a
//! quiet space's 4 sensors then send in real time for `--seconds`. Reported: the quiet tenant's latency while the
//! backlog drains, and the hot tenant's windows/s and shed windows over the same time.
//!
//! With `--refine`, only the balanced profile runs, with the graph refinement on and off: what the refinement costs
//! ingestion (its rounds share the workers and the cores), and the refinement's own update latency, read from the
//! job's `chorus_refine_update_seconds` histogram.
//!
//! Latency: `--sensors` sensors send 1 s chunks of 32 kHz audio in real time for `--seconds`; a segment's latency runs
//! from the moment the chunk that completed its window was handed to the producer to the moment its record arrives
//! on the segments topic. Throughput: a backlog of `--backlog-seconds` of audio per sensor is produced first, then
//! the job drains it; windows/s and chunks/s (five 1 s chunks per window) from its first segment to its last. Each
//! run is a `chorus run` process of its own, on an empty broker of its own, with its own directories.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus::config::Config;
use chorus_connectors::kafka::{
    Acks, HEADER_CAPTURED_AT, HEADER_PRIORITY, HEADER_SPACE, Producer, Record, SegmentRecord,
};
use chorus_connectors::wav::{Samples, WavFile};
use chorus_operators::record::rfc3339;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

#[allow(dead_code)]
#[path = "../tests/support.rs"]
mod support;

use support::Scenario;

#[path = "args.rs"]
mod args;

use args::arg;

const T0_NANOS: i64 = support::T0_SECONDS * 1_000_000_000;

/// A profile from `config/` as it stands, on an empty broker of its own (the bundled broker slows down as its
/// database grows, so every run starts from the same state), with its own directories and no HTTP endpoints.
/// With the refinement on, the job's metrics are served on a port of their own (returned), for its update latency.
fn scenario(profile: &str, run: &str, refine: bool) -> (Scenario, Config, support::PrivateBroker, Option<u16>) {
    let broker = support::PrivateBroker::start();
    let port = refine.then(support::free_port);
    let http: Vec<(&str, toml::Value)> = match port {
        Some(port) => vec![("http.listen", format!("127.0.0.1:{port}").into())],
        None => vec![("http.enabled", false.into())],
    };
    let mut overrides = vec![("refine.enabled", refine.into())];
    overrides.extend(http);
    let scenario = Scenario::from_profile(profile, &broker.address(), run, &overrides);
    let config = Config::load(&scenario.config).unwrap();
    (scenario, config, broker, port)
}

/// One second of the sample recording (cycled), 32 kHz mono 16-bit, as a WAV payload.
fn chunk_payloads() -> Vec<Vec<u8>> {
    let file = WavFile::read(&support::tools().sample).expect("the sample audio: run scripts/tools.sh");
    let Samples::Int(samples) = &file.samples else { panic!("the sample is 16-bit PCM") };
    (0..10)
        .map(|s| {
            let one =
                WavFile { spec: file.spec, samples: Samples::Int(samples[s * 32_000..(s + 1) * 32_000].to_vec()) };
            one.encode_frames(0, 32_000).unwrap()
        })
        .collect()
}

struct Sender {
    producer: Producer,
    acks: Arc<Acks>,
    topic: String,
    payloads: Vec<Vec<u8>>,
}

impl Sender {
    fn new(config: &Config) -> Sender {
        chorus_connectors::kafka::ensure_topics(&config.kafka).unwrap();
        Sender {
            producer: Producer::open(&config.kafka).unwrap(),
            acks: Arc::new(Acks::default()),
            topic: config.kafka.audio_topic.clone(),
            payloads: chunk_payloads(),
        }
    }

    /// Second `k` of sensor `sensor`.
    fn send(&self, sensor: usize, k: usize) {
        self.send_as(&format!("sensor-{sensor:03}"), &[], k);
    }

    /// Second `k` of the sensor named `name`, with more headers (space, priority).
    fn send_as(&self, name: &str, headers: &[(&str, &str)], k: usize) {
        let mut headers: Vec<(String, Vec<u8>)> =
            headers.iter().map(|(h, v)| (h.to_string(), v.as_bytes().to_vec())).collect();
        headers.push((HEADER_CAPTURED_AT.to_owned(), rfc3339(T0_NANOS + k as i64 * 1_000_000_000).into_bytes()));
        let record = Record { key: Some(name.as_bytes().to_vec()), payload: self.payloads[k % 10].clone(), headers };
        self.producer.send(&self.topic, &record, &self.acks, 0).unwrap();
    }

    fn flush(&self) {
        while !self.producer.flush(Duration::from_secs(30)).unwrap() {}
        assert!(self.acks.failure().is_none(), "{:?}", self.acks.failure());
    }
}

/// Records the arrival time of each segment record on the segments topic, from a thread.
struct Arrivals {
    seen: Arc<Mutex<HashMap<(String, i64), Instant>>>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Arrivals {
    fn watch(config: &Config) -> Arrivals {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka.brokers)
            .set("group.id", format!("{}.reader", config.kafka.group_id))
            .set("enable.auto.commit", "false")
            // The broker holds a fetch for its whole wait: keep the measuring side's share of the latency small.
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&config.kafka.segments_topic, 0, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (into, stop) = (seen.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
                    let at = Instant::now();
                    let refinement = message
                        .headers()
                        .is_some_and(|h| h.iter().any(|h| h.key == chorus_connectors::kafka::HEADER_RECORD));
                    if refinement {
                        continue;
                    }
                    let record: SegmentRecord = serde_json::from_slice(message.payload().unwrap()).unwrap();
                    let start = chrono::DateTime::parse_from_rfc3339(&record.start_time)
                        .unwrap()
                        .timestamp_nanos_opt()
                        .unwrap();
                    let second = (start - T0_NANOS) / 1_000_000_000;
                    into.lock().unwrap().entry((record.sensor, second)).or_insert(at);
                }
            }
        });
        Arrivals { seen, done, thread: Some(thread) }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until `n` segments arrived; fails the bench with the job's log after `timeout`.
    fn wait_for(&self, n: usize, timeout: Duration, scenario: &Scenario) {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} segments arrived; the job's log:\n{}",
                self.count(),
                scenario.job_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts `chorus run` for the scenario, with `workers` worker threads when given.
fn start_job(scenario: &Scenario, workers: Option<usize>) -> std::process::Child {
    let workers = workers.map(|w| w.to_string());
    let mut args = vec!["run"];
    if let Some(workers) = &workers {
        args.extend(["-w", workers]);
    }
    scenario.spawn(&args)
}

/// Stops the job with SIGTERM and waits for it; a failed job fails the bench with its log. Returns the job's peak
/// resident memory in MiB.
fn stop_job(scenario: &Scenario, mut job: std::process::Child) -> f64 {
    let peak = support::peak_rss(job.id()) as f64 / f64::from(1u32 << 20);
    support::terminate(job.id());
    let status = job.wait().unwrap();
    assert!(status.success(), "the job failed ({status}):\n{}", scenario.job_log());
    peak
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// p50 and p99 latency in milliseconds under `sensors` real-time sensors for `seconds`, the segments measured and the
/// job's peak memory (MiB).
fn latency(profile: &str, sensors: usize, seconds: usize, refine: bool) -> (f64, f64, usize, f64) {
    let (scenario, config, _broker, port) = scenario(profile, "latency", refine);
    let sender = Sender::new(&config);
    let arrivals = Arrivals::watch(&config);
    let job = start_job(&scenario, None);
    // The model loads and warms up first: one window from an extra sensor marks the job ready before the clock starts.
    for k in 0..5 {
        sender.send(sensors, k);
    }
    sender.flush();
    arrivals.wait_for(1, Duration::from_secs(120), &scenario);
    let mut sent = HashMap::new();
    let started = Instant::now();
    for k in 0..seconds {
        while started.elapsed() < Duration::from_secs(k as u64) {
            std::thread::sleep(Duration::from_millis(1));
        }
        for sensor in 0..sensors {
            sender.send(sensor, k);
            sent.insert((sensor, k), Instant::now());
        }
    }
    sender.flush();
    // 5 s windows at a 5 s hop: window `g` is completed by the chunk of second g + 4.
    let windows = seconds / 5;
    arrivals.wait_for(sensors * windows + 1, Duration::from_secs(120), &scenario);
    if let Some(port) = port {
        print_refine_latency(port, sensors * windows + 1);
    }
    let peak = stop_job(&scenario, job);
    let seen = arrivals.seen.lock().unwrap();
    let mut latencies: Vec<f64> = seen
        .iter()
        .filter_map(|((sensor, second), arrived)| {
            let sensor: usize = sensor.strip_prefix("sensor-")?.parse().ok()?;
            let completed = sent.get(&(sensor, *second as usize + 4))?;
            Some(arrived.duration_since(*completed).as_secs_f64() * 1_000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99), latencies.len(), peak)
}

/// Windows/s and chunks/s draining a backlog of `seconds` per sensor, and the job's peak memory (MiB).
fn throughput(profile: &str, workers: Option<usize>, sensors: usize, seconds: usize, refine: bool) -> (f64, f64, f64) {
    let (scenario, config, _broker, port) = scenario(profile, "throughput", refine);
    let sender = Sender::new(&config);
    for k in 0..seconds {
        for sensor in 0..sensors {
            sender.send(sensor, k);
        }
    }
    sender.flush();
    let arrivals = Arrivals::watch(&config);
    let job = start_job(&scenario, workers);
    // From the first segment out, so the model's load and warm-up do not count.
    arrivals.wait_for(1, Duration::from_secs(120), &scenario);
    let started = Instant::now();
    let windows = sensors * (seconds / 5);
    arrivals.wait_for(windows, Duration::from_secs(1_800), &scenario);
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(port) = port {
        print_refine_latency(port, windows);
    }
    let peak = stop_job(&scenario, job);
    let rate = (windows - 1) as f64 / elapsed;
    (rate, rate * 5.0, peak)
}

/// A hot tenant's backlog against a quiet tenant's real-time audio: the quiet tenant's p50 and p99 latency (ms),
/// the hot tenant's windows/s (first to last), the windows shed, and the job's peak memory (MiB).
fn tenants(profile: &str, hot_sensors: usize, backlog: usize, seconds: usize) -> (f64, f64, f64, u64, f64) {
    let (scenario, config, _broker, port) = scenario(profile, "tenants", true);
    let sender = Sender::new(&config);
    let hot = [(HEADER_SPACE, "hot"), (HEADER_PRIORITY, "low")];
    for k in 0..backlog {
        for sensor in 0..hot_sensors {
            sender.send_as(&format!("hot-{sensor:03}"), &hot, k);
        }
    }
    sender.flush();
    let arrivals = Arrivals::watch(&config);
    let job = start_job(&scenario, None);
    arrivals.wait_for(1, Duration::from_secs(120), &scenario);
    let quiet = [(HEADER_SPACE, "quiet")];
    let mut sent = HashMap::new();
    let started = Instant::now();
    for k in 0..seconds {
        while started.elapsed() < Duration::from_secs(k as u64) {
            std::thread::sleep(Duration::from_millis(1));
        }
        for sensor in 0..4 {
            sender.send_as(&format!("quiet-{sensor:03}"), &quiet, k);
            sent.insert((format!("quiet-{sensor:03}"), k), Instant::now());
        }
    }
    sender.flush();
    let quiet_windows = 4 * (seconds / 5);
    let deadline = Instant::now() + Duration::from_secs(300);
    let quiet_seen =
        |seen: &HashMap<(String, i64), Instant>| seen.keys().filter(|(s, _)| s.starts_with("quiet-")).count();
    while quiet_seen(&arrivals.seen.lock().unwrap()) < quiet_windows {
        assert!(Instant::now() < deadline, "the quiet tenant's windows did not all arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = port.and_then(|p| support::http_get(p, "/metrics")).map(|(_, t)| t).unwrap_or_default();
    let shed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("chorus_shed_windows_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    let peak = stop_job(&scenario, job);
    let seen = arrivals.seen.lock().unwrap();
    // The hot tenant's rate: its windows from the first to the last that arrived.
    let hot: Vec<Instant> = seen.iter().filter(|((s, _), _)| s.starts_with("hot-")).map(|(_, at)| *at).collect();
    let span = match (hot.iter().min(), hot.iter().max()) {
        (Some(first), Some(last)) => last.duration_since(*first).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    let hot_rate = hot.len().saturating_sub(1) as f64 / span;
    let mut latencies: Vec<f64> = seen
        .iter()
        .filter_map(|((sensor, second), arrived)| {
            let completed = sent.get(&(sensor.clone(), *second as usize + 4))?;
            Some(arrived.duration_since(*completed).as_secs_f64() * 1_000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99), hot_rate, shed, peak)
}

fn tenants_comparison(sensors: usize, seconds: usize, backlog: usize) {
    println!(
        "{:<16} {:>14} {:>14} {:>14} {:>10} {:>9}",
        "profile", "quiet p50 ms", "quiet p99 ms", "hot windows/s", "hot shed", "peak MiB"
    );
    for profile in ["balanced", "multi-tenant"] {
        let (p50, p99, hot, shed, peak) = tenants(&format!("{profile}.toml"), sensors, backlog, seconds);
        println!("{profile:<16} {p50:>14.1} {p99:>14.1} {hot:>14.1} {shed:>10} {peak:>9.0}");
    }
    println!(
        "reproduce: cargo bench --bench stream -- --tenants --sensors {sensors} --seconds {seconds} --backlog-seconds {backlog}"
    );
}

/// Waits until the refinement has taken `segments` segments (held or retired), then prints its rounds' update latency (from the
/// close of a round to its outputs settling) from the job's `chorus_refine_update_seconds` histogram.
fn print_refine_latency(port: u16, segments: usize) {
    let started = Instant::now();
    let metric = |text: &str, name: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
            .collect()
    };
    loop {
        let text = support::http_get(port, "/metrics").map(|(_, t)| t).unwrap_or_default();
        // Every segment is either in a space's graph or retired beyond its horizon.
        let sum = |name: &str| metric(&text, name).iter().map(|(_, v)| *v).sum::<f64>() as usize;
        let nodes = sum("chorus_refine_graph_nodes") + sum("chorus_refine_retired_total");
        if nodes >= segments || started.elapsed() > Duration::from_secs(600) {
            let count = metric(&text, "chorus_refine_update_seconds_count").first().map_or(0.0, |(_, v)| *v);
            let sum = metric(&text, "chorus_refine_update_seconds_sum").first().map_or(0.0, |(_, v)| *v);
            let p99 = metric(&text, "chorus_refine_update_seconds_bucket")
                .into_iter()
                .find(|(_, cumulative)| *cumulative >= 0.99 * count)
                .and_then(|(k, _)| k.split("le=\"").nth(1).map(|v| v.trim_end_matches("\"}").to_owned()))
                .unwrap_or_default();
            println!(
                "  refinement: {nodes} of {segments} segments in the graph {:.1} s after the last was indexed; \
                 {count:.0} rounds, mean update latency {:.0} ms, p99 ≤ {p99} s",
                started.elapsed().as_secs_f64(),
                sum / count.max(1.0) * 1e3
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn refine_comparison(sensors: usize, seconds: usize, backlog: usize) {
    println!("{:<16} {:>12} {:>12} {:>10} {:>10}", "refinement", "p50 ms", "p99 ms", "windows/s", "chunks/s");
    for refine in [false, true] {
        let (p50, p99, _, _) = latency("balanced.toml", sensors, seconds, refine);
        let (windows, chunks, _) = throughput("balanced.toml", None, sensors, backlog, refine);
        let name = if refine { "on" } else { "off" };
        println!("{name:<16} {p50:>12.1} {p99:>12.1} {windows:>10.1} {chunks:>10.1}");
    }
    println!(
        "reproduce: cargo bench --bench stream -- --refine --sensors {sensors} --seconds {seconds} --backlog-seconds {backlog}"
    );
}

fn main() {
    let sensors = arg("--sensors", 40);
    let seconds = arg("--seconds", 60);
    let backlog = arg("--backlog-seconds", 300);
    // Quiet the job's own logs; the tables below are the output.
    tracing_subscriber::fmt().with_env_filter("warn,hnsw_rs=error").with_writer(std::io::stderr).init();
    println!(
        "chorus stream bench: {sensors} sensors of 1 s chunks (32 kHz, 16-bit), 5 s windows at a 5 s hop, stand-in model; \
         latency over {seconds} s of real-time load, throughput over a backlog of {backlog} s per sensor"
    );
    if args::flag("--refine") {
        refine_comparison(sensors, seconds, backlog);
        return;
    }
    if args::flag("--tenants") {
        tenants_comparison(sensors, seconds, backlog);
        return;
    }
    let all = "low-latency,balanced,high-throughput,memory-constrained,multi-tenant".to_owned();
    let profiles: String = arg("--profiles", all.clone());
    println!(
        "{:<22} {:>8} {:>12} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "profile", "workers", "p50 ms", "p99 ms", "windows/s", "chunks/s", "segments", "peak MiB"
    );
    for profile in profiles.split(',').map(|p| format!("{}.toml", p.trim())) {
        let config = Config::load(&support::root().join("config").join(&profile)).unwrap_or_else(|e| panic!("{e}"));
        let refine = config.refine.enabled;
        let (p50, p99, n, peak_latency) = latency(&profile, sensors, seconds, refine);
        let (windows, chunks, peak_backlog) = throughput(&profile, None, sensors, backlog, refine);
        println!(
            "{:<22} {:>8} {p50:>12.1} {p99:>12.1} {windows:>10.1} {chunks:>10.1} {n:>9} {:>9.0}",
            profile.trim_end_matches(".toml"),
            config.workers,
            peak_latency.max(peak_backlog)
        );
    }
    if profiles != all {
        return;
    }
    let (one, one_chunks, _) = throughput("balanced.toml", Some(1), sensors, backlog, true);
    let (two, two_chunks, _) = throughput("balanced.toml", Some(2), sensors, backlog, true);
    println!(
        "scaling (balanced, backlog): 1 worker {one:.1} windows/s ({one_chunks:.1} chunks/s), \
         2 workers {two:.1} windows/s ({two_chunks:.1} chunks/s), ratio {:.2}",
        two / one
    );
    println!(
        "reproduce: cargo bench --bench stream -- --sensors {sensors} --seconds {seconds} --backlog-seconds {backlog}"
    );
}
