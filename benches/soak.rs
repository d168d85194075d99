//! The soak: a simulated network of many sensors over a simulated day, time-compressed, against one `chorus run`
//! process per profile, with the refinement on and searches by segment id during ingest.
//!
//!     cargo bench --bench soak -- [--profiles balanced,memory-constrained] [--sensors 1000] [--hours 24]
//!                                  [--every-minutes 20] [--warm-up-hours N] [--ahead 1500] [--qps 5]
//!                                  [--no-refine] [--no-fill] [--set KEY=VALUE]...
//!
//! The `--hours` measured follow a warm-up: by default as many simulated hours as it takes the refinement to hold
//! its horizon and the index to seal its first shard, so that the measured hours run with the state a job keeps all
//! season (`--warm-up-hours 0` measures from the cold start). The cold start's first hour is printed too.
//!
//! Each sensor records a 5.99 s bout every `--every-minutes` simulated minutes (staggered over the sensors, on the
//! 5 s window grid: one window per bout, its last second too short to make another), as 1 kHz 8-bit mono —
//! low-rate audio keeps the bundled broker from being the bottleneck, and costs chorus the most memory per payload
//! byte (it is resampled to the model's 32 kHz). Each bout is one of twenty call types (a tone of its own pitch and
//! tremolo) over noise. A producer thread keeps `--ahead` bouts ahead of what the job has indexed, so the job runs at
//! its own pace all along (the simulated day passes as fast as the job can take it) — to the end of the day, when
//! the next day's first bouts are already waiting — and the broker holds the whole day's audio by the end. A search
//! thread asks `POST /v1/search` for the neighbours of a segment indexed earlier, `--qps` times a second (0: none).
//! `--set` overrides a setting of every profile's config for the run, the value in TOML (`--set memory_budget_mb=2048
//! --set index.shard_max_points=4000`).
//!
//! Before each profile's job starts, the bench fills the machine's free memory with the page cache of a sparse file
//! of its own (read through once; removed with the run), as a season's uptime does: the job's archive, which grows
//! by tens of GB in a time-compressed run, then recycles the pages the kernel reclaims, as it will all season,
//! rather than taking free memory — which a virtual machine whose host takes free memory back (free page reporting)
//! pays a fault on the host for, page by page: that made the rate fall over the first hours by a seventh.
//! `--no-fill` runs on the machine as it is.
//!
//! Every wall minute it prints the job's resident memory (VmRSS), the segments indexed, the segments the index holds
//! and its memory, the segments the refinement holds and the records it has published, windows/s over the minute,
//! the searches' p99, and the cores the job and the broker kept busy over the minute. At the end:
//! the peak resident memory (VmHWM) against `memory_budget_mb`; the slope of resident memory less the index's own
//! (which its budget bounds) per 100 000 segments, once the refinement holds its horizon and the index has sealed a
//! shard (or, when it never does, over the second half); windows/s in every simulated hour, and over the last
//! measured against the first measured; the searches' p99 against `api.sla_p99_ms`; and where the workers' time per
//! window went in the cold start's first simulated hour and in the first and last measured (each stage's
//! `chorus_stage_seconds`, and their busy time outside the stages), with the model's mean batch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus::config::Config;
use chorus_operators::record::SegmentId;

#[allow(dead_code)]
#[path = "../tests/support.rs"]
mod support;

#[path = "args.rs"]
mod args;

#[path = "rng.rs"]
mod rng;

use args::arg;
use rng::Rng;
use support::{RawChunk, Scenario};

/// The bouts' sample rate, and their length in samples: 5.99 s, so that the resampler's 0.96 s blocks complete the
/// window of the bout's first 5 s at once, and the rest is too short for a window of its own (`min_coverage_seconds`
/// is 1 s).
const RATE: u32 = 1_000;
const BOUT: usize = 5_990;
/// The model's rate: segment ids count samples at it.
const MODEL_RATE: i64 = 32_000;

/// The simulated network: who records when.
#[derive(Clone, Copy)]
struct Network {
    sensors: usize,
    /// Seconds between a sensor's bouts.
    every: i64,
    /// Bouts in the whole run.
    bouts: usize,
}

impl Network {
    fn new(sensors: usize, hours: usize, every_minutes: usize) -> Network {
        let every = every_minutes as i64 * 60;
        let rounds = hours * 3_600 / every as usize;
        Network { sensors, every, bouts: rounds * sensors }
    }

    /// Simulated hours until `segments` have been recorded: a warm-up long enough to fill the job's bounds.
    fn hours_for(sensors: usize, every_minutes: usize, segments: usize) -> usize {
        let per_hour = Network::new(sensors, 1, every_minutes).per_hour().max(1);
        segments.div_ceil(per_hour)
    }

    fn sensor_name(i: usize) -> String {
        format!("pole-{i:05}")
    }

    /// Bout `n`: its sensor and its start, in seconds after T0. Bouts come in time order: round by round, each
    /// sensor at its own offset in the round, on the 5 s grid.
    fn bout(&self, n: usize) -> (usize, i64) {
        let (round, sensor) = (n / self.sensors, n % self.sensors);
        let offset = (sensor as i64 * self.every / self.sensors as i64) / 5 * 5;
        (sensor, round as i64 * self.every + offset)
    }

    /// Bouts per simulated hour.
    fn per_hour(&self) -> usize {
        self.sensors * 3_600 / self.every as usize
    }

    /// The segment bout `n` makes.
    fn id(&self, n: usize) -> SegmentId {
        let (sensor, at) = self.bout(n);
        SegmentId::of("default", &Network::sensor_name(sensor), (support::T0_SECONDS + at) * MODEL_RATE)
    }

    /// Bout `n` as a message: one of twenty call types over noise, 1 kHz 8-bit.
    fn message(&self, n: usize) -> RawChunk {
        let (sensor, at) = self.bout(n);
        let call = (sensor * 7 + n / self.sensors * 3) % 20;
        let (pitch, tremolo) = (40.0 + 20.0 * call as f32, 1.0 + (call % 5) as f32);
        let mut rng = Rng(n as u64 + 1);
        let samples: Vec<f32> = (0..BOUT)
            .map(|i| {
                let t = i as f32 / RATE as f32;
                let envelope = 0.5 + 0.5 * (std::f32::consts::TAU * tremolo * t).sin();
                0.3 * envelope * (std::f32::consts::TAU * pitch * t).sin() + 0.02 * rng.normal()
            })
            .collect();
        RawChunk::new(
            &Network::sensor_name(sensor),
            &support::t0_plus(at * 1_000_000_000),
            support::wav_pcm(RATE, 1, 8, &samples),
        )
    }
}

/// The job's stages with a timer (`chorus_stage_seconds`).
const STAGES: [&str; 5] = ["decode", "segment", "embed", "index", "archive"];

/// Counters read at every look besides the stages' seconds: the workers' busy seconds, and the model's batches
/// (windows, and calls).
const BUSY: usize = STAGES.len();
const BATCHED: usize = STAGES.len() + 1;
const BATCHES: usize = STAGES.len() + 2;

/// One look at the job.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// Seconds since the first segment was indexed.
    at: f64,
    segments: f64,
    rss_mib: f64,
    index_points: f64,
    index_mib: f64,
    refine_nodes: f64,
    /// Seconds each of [`STAGES`] took so far, then [`BUSY`], [`BATCHED`] and [`BATCHES`], summed over the workers.
    counters: [f64; STAGES.len() + 3],
}

impl Sample {
    /// The counters at `segments`, linear between the samples on either side.
    fn counters_at(samples: &[Sample], segments: f64) -> Vec<f64> {
        let after = samples.partition_point(|s| s.segments < segments).min(samples.len() - 1);
        let Some(before) = after.checked_sub(1) else { return samples[after].counters.to_vec() };
        let (a, b) = (&samples[before], &samples[after]);
        let share = if b.segments > a.segments { (segments - a.segments) / (b.segments - a.segments) } else { 1.0 };
        a.counters.iter().zip(b.counters).map(|(x, y)| x + (y - x) * share.clamp(0.0, 1.0)).collect()
    }
}

/// Milliseconds per window each stage took between `from` and `to` segments, then the workers' busy time outside
/// the stages (the refinement's dataflow, the index's maintenance, the workers' scheduling) and in all; and the
/// model's mean batch.
fn breakdown(samples: &[Sample], from: f64, to: f64) -> String {
    let (a, b) = (Sample::counters_at(samples, from), Sample::counters_at(samples, to));
    let delta: Vec<f64> = a.iter().zip(&b).map(|(x, y)| y - x).collect();
    let per_window = |seconds: f64| seconds * 1e3 / (to - from).max(1.0);
    let stages = &delta[..STAGES.len()];
    let outside = per_window(delta[BUSY] - stages.iter().sum::<f64>());
    let named: Vec<String> =
        STAGES.iter().zip(stages).map(|(name, seconds)| format!("{name} {:.2}", per_window(*seconds))).collect();
    format!(
        "{}, outside the stages {outside:.2}, busy {:.2}; model batches of {:.2} windows",
        named.join(", "),
        per_window(delta[BUSY]),
        delta[BATCHED] / delta[BATCHES].max(1.0)
    )
}

/// The sum of a metric's series in Prometheus text, with the labels `filter` holds.
fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU seconds `pid` has used (user and system), from /proc (at 100 clock ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which may hold spaces, closed by the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    support::proc_status_bytes(Some(pid), "VmRSS") as f64 / f64::from(1 << 20)
}

/// Searches by the ids of segments indexed earlier, `qps` a second; keeps each answer's latency (ms) with the
/// second it was asked in, and counts failures.
struct Searcher {
    latencies: Arc<Mutex<Vec<(f64, f64)>>>,
    failures: Arc<Mutex<Vec<String>>>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Searcher {
    fn start(port: u16, network: Network, indexed: Arc<AtomicUsize>, started: Instant, qps: f64) -> Searcher {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (into, failed, stop) = (latencies.clone(), failures.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = Rng(0x50a4);
            while qps > 0.0 && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs_f64(1.0 / qps));
                // A segment well inside what is indexed: bouts are indexed roughly in the order they were produced,
                // a tenth of them or one bout a sensor (whichever is more) behind.
                let indexed = indexed.load(Ordering::Relaxed);
                let known = indexed.saturating_sub((indexed / 10).max(network.sensors));
                if known == 0 {
                    continue;
                }
                let id = network.id((rng.next() % known as u64) as usize);
                let body = format!("{{\"segment_id\":\"{id}\",\"k\":10}}");
                let asked = Instant::now();
                let answer =
                    support::http(port, "POST", "/v1/search", &[("content-type", "application/json")], body.as_bytes());
                let ms = asked.elapsed().as_secs_f64() * 1e3;
                match answer {
                    Some((200, _)) => into.lock().unwrap().push((started.elapsed().as_secs_f64(), ms)),
                    Some((status, text)) => failed.lock().unwrap().push(format!("{id}: HTTP {status} {text}")),
                    None => failed.lock().unwrap().push(format!("{id}: no answer")),
                }
            }
        });
        Searcher { latencies, failures, done, thread: Some(thread) }
    }

    /// The p99 of the answers asked from second `from` on, and how many.
    fn p99_since(&self, from: f64) -> (f64, usize) {
        let mut ms: Vec<f64> =
            self.latencies.lock().unwrap().iter().filter(|(at, _)| *at >= from).map(|(_, ms)| *ms).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        (if n == 0 { f64::NAN } else { ms[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1] }, n)
    }
}

impl Drop for Searcher {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    sxy / sxx
}

/// The time at which `segments` were indexed, from the samples (linear between two).
fn time_at(samples: &[Sample], segments: f64) -> f64 {
    let after = samples.partition_point(|s| s.segments < segments).min(samples.len() - 1);
    let Some(before) = after.checked_sub(1) else { return samples[after].at };
    let (a, b) = (samples[before], samples[after]);
    if b.segments <= a.segments {
        return b.at;
    }
    a.at + (b.at - a.at) * (segments - a.segments) / (b.segments - a.segments)
}

/// What a profile's run measured, for the summary table.
struct Outcome {
    profile: String,
    budget_mib: f64,
    peak_mib: f64,
    slope_mib: f64,
    slope_over: String,
    warm_hours: usize,
    cold_hour: f64,
    first_hour: f64,
    last_hour: f64,
    p99: f64,
    sla: f64,
    searches: usize,
    wall_minutes: f64,
}

/// The run's shape: sensors, simulated hours measured, minutes between a sensor's bouts, and the simulated hours
/// before them (`None`: as many as fill the profile's bounds).
#[derive(Clone, Copy)]
struct Shape {
    sensors: usize,
    hours: usize,
    every_minutes: usize,
    warm_hours: Option<usize>,
}

/// A file whose page cache takes the machine's free memory, as a machine up for a season has it: the kernel then
/// reclaims its clean pages for whatever the job writes or allocates. The file is sparse — the size of the free
/// memory when it is made, none of it on disk — and read through once, which gives each of its pages a page of the
/// cache; it is removed with the value.
struct PageCacheFill {
    path: std::path::PathBuf,
}

impl PageCacheFill {
    fn new(dir: &std::path::Path) -> PageCacheFill {
        use std::io::Read;
        let path = dir.join("page-cache-fill");
        let free = meminfo_bytes("MemFree");
        let started = Instant::now();
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("the page-cache fill's file");
        file.set_len(free).expect("the page-cache fill's file is sized");
        let mut block = vec![0u8; 8 << 20];
        while file.read(&mut block).expect("the page-cache fill's file is read") > 0 {}
        println!(
            "page cache filled: {:.1} GiB in {:.0} s, free memory {} → {} MiB (--no-fill runs without)",
            free as f64 / f64::from(1 << 30),
            started.elapsed().as_secs_f64(),
            free >> 20,
            meminfo_bytes("MemFree") >> 20
        );
        PageCacheFill { path }
    }
}

impl Drop for PageCacheFill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A line of /proc/meminfo, in bytes (0 if it cannot be read).
fn meminfo_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.split(':').next() == Some(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib << 10)
}

/// What a run does besides its shape: bouts ahead, searches a second, the refinement on, the page cache filled.
#[derive(Clone, Copy)]
struct Load {
    ahead: usize,
    qps: f64,
    refine: bool,
    fill: bool,
}

fn soak(profile: &str, shape: Shape, load: Load, sets: &[(String, toml::Value)]) -> Outcome {
    let Load { ahead, qps, refine, fill } = load;
    let broker = support::PrivateBroker::start();
    let port = support::free_port();
    let mut overrides: Vec<(&str, toml::Value)> =
        vec![("refine.enabled", refine.into()), ("http.listen", format!("127.0.0.1:{port}").into())];
    if profile == "memory-constrained" && refine {
        // The profile ships without the refinement: with it, a horizon whose state fits its 512 MiB.
        overrides.push(("refine.horizon_segments", 2_000.into()));
    }
    overrides.extend(sets.iter().map(|(key, value)| (key.as_str(), value.clone())));
    let scenario = Scenario::from_profile(&format!("{profile}.toml"), &broker.address(), "soak", &overrides);
    let config = Config::load(&scenario.config).unwrap();
    let budget_mib = (config.memory_budget >> 20) as f64;
    let index_budget_mib = ((config.index.memory_budget.unwrap_or(0) * config.workers) >> 20) as f64;
    let horizon = if refine { config.refine.horizon_segments as f64 } else { 0.0 };
    // The index seals its first shard at this many points; with the refinement's horizon, the job's bounds.
    let sealed_at = (config.index.shard_max_points * config.workers) as f64;
    // The warm-up: simulated hours before the measured ones, by default until the refinement holds its horizon and
    // the index has sealed a shard — from there on, the job holds what its bounds allow, as it will all season.
    let warm_hours = shape
        .warm_hours
        .unwrap_or_else(|| Network::hours_for(shape.sensors, shape.every_minutes, horizon.max(sealed_at) as usize));
    let network = Network::new(shape.sensors, warm_hours + shape.hours, shape.every_minutes);
    println!(
        "\n{profile}: memory_budget_mb {budget_mib}, index {index_budget_mib} MiB, refinement horizon {horizon} \
         segments, {} worker(s); {} bouts: {warm_hours} simulated hours of warm-up (index and refinement filled), \
         then {} measured",
        config.workers, network.bouts, shape.hours
    );

    let _fill = fill.then(|| PageCacheFill::new(scenario.dir.path()));
    let indexed = Arc::new(AtomicUsize::new(0));
    let produced = Arc::new(AtomicUsize::new(0));
    let stop_feeding = Arc::new(AtomicBool::new(false));
    let scenario = Arc::new(scenario);
    let feeder = {
        let (scenario, indexed, produced, stop) =
            (scenario.clone(), indexed.clone(), produced.clone(), stop_feeding.clone());
        std::thread::spawn(move || {
            // Past the measured day too (the next round's bouts), so that its last hour is not the input's drain:
            // a network does not stop recording when the measurement does.
            let (mut next, last) = (0, network.bouts + ahead);
            while next < last && !stop.load(Ordering::Relaxed) {
                if next >= indexed.load(Ordering::Relaxed) + ahead {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let end = (next + 250).min(last);
                scenario.produce_raw(&(next..end).map(|n| network.message(n)).collect::<Vec<_>>());
                next = end;
                produced.store(next, Ordering::Relaxed);
            }
        })
    };

    let mut job = scenario.spawn(&["run"]);
    let pid = job.id();
    let metrics = || support::http_get(port, "/metrics").map(|(_, text)| text).unwrap_or_default();
    let segments_of = |text: &str| metric_sum(text, "chorus_records_out_total", "stage=\"index\"");
    // The clock starts with the first segment indexed: the model's load and warm-up do not count.
    let waited = Instant::now();
    while segments_of(&metrics()) < 1.0 {
        assert!(job.try_wait().unwrap().is_none(), "the job ended:\n{}", scenario.job_log());
        assert!(waited.elapsed() < Duration::from_secs(300), "no segment indexed:\n{}", scenario.job_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    let searcher = Searcher::start(port, network, indexed.clone(), started, qps);
    println!(
        "{:>6} {:>9} {:>9} {:>7} {:>9} {:>8} {:>11} {:>10} {:>12} {:>11} {:>10} {:>11} {:>8} {:>11}",
        "minute",
        "sim hour",
        "produced",
        "lag",
        "segments",
        "RSS MiB",
        "index segs",
        "index MiB",
        "refine segs",
        "refine recs",
        "windows/s",
        "search p99",
        "job CPU",
        "broker CPU"
    );
    let broker_pid = broker.pid().expect("the broker runs");
    let cpu = || (cpu_seconds(pid), cpu_seconds(broker_pid));
    let mut samples: Vec<Sample> = Vec::new();
    let mut minute_start = (0.0, 0.0);
    let mut minute_cpu = cpu();
    let mut minute = 1;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        if let Some(status) = job.try_wait().unwrap() {
            panic!("the job ended ({status}):\n{}", scenario.job_log());
        }
        let text = metrics();
        let sample = Sample {
            at: started.elapsed().as_secs_f64(),
            segments: segments_of(&text),
            rss_mib: rss_mib(pid),
            index_points: metric_sum(&text, "chorus_index_points", ""),
            index_mib: metric_sum(&text, "chorus_index_bytes", "") / f64::from(1 << 20),
            refine_nodes: metric_sum(&text, "chorus_refine_graph_nodes", ""),
            counters: {
                let mut counters = [0.0; STAGES.len() + 3];
                for (counter, stage) in counters.iter_mut().zip(STAGES) {
                    *counter = metric_sum(&text, "chorus_stage_seconds_sum", &format!("stage=\"{stage}\""));
                }
                counters[BUSY] = metric_sum(&text, "chorus_worker_busy_seconds_total", "");
                counters[BATCHED] = metric_sum(&text, "chorus_embed_batch_size_sum", "");
                counters[BATCHES] = metric_sum(&text, "chorus_embed_batch_size_count", "");
                counters
            },
        };
        indexed.store(sample.segments as usize, Ordering::Relaxed);
        samples.push(sample);
        let finished = sample.segments as usize >= network.bouts;
        if sample.at >= 60.0 * minute as f64 || finished {
            let rate = (sample.segments - minute_start.1) / (sample.at - minute_start.0).max(1e-3);
            let (p99, _) = searcher.p99_since(minute_start.0);
            let sim_hour = sample.segments / network.per_hour() as f64;
            // Cores busy over the minute: the job's process and the broker's.
            let (now_cpu, seconds) = (cpu(), (sample.at - minute_start.0).max(1e-3));
            let (job_cpu, broker_cpu) = ((now_cpu.0 - minute_cpu.0) / seconds, (now_cpu.1 - minute_cpu.1) / seconds);
            println!(
                "{minute:>6} {sim_hour:>9.1} {:>9} {:>7} {:>9} {:>8.0} {:>11} {:>10.0} {:>12} {:>11} {rate:>10.1} \
                 {p99:>9.1}ms {job_cpu:>8.2} {broker_cpu:>11.2}",
                produced.load(Ordering::Relaxed),
                metric_sum(&text, "chorus_kafka_consumer_lag", ""),
                sample.segments,
                sample.rss_mib,
                sample.index_points,
                sample.index_mib,
                sample.refine_nodes,
                metric_sum(&text, "chorus_records_out_total", "stage=\"refine\"")
            );
            minute_start = (sample.at, sample.segments);
            minute_cpu = now_cpu;
            minute += 1;
        }
        if finished {
            break;
        }
    }
    let wall_minutes = started.elapsed().as_secs_f64() / 60.0;
    stop_feeding.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let peak_mib = support::peak_rss(pid) as f64 / f64::from(1 << 20);
    let failures = searcher.failures.lock().unwrap().clone();
    support::terminate(pid);
    let status = job.wait().unwrap();
    assert!(status.success(), "the job failed ({status}):\n{}", scenario.job_log());

    // Warm-up ends once the refinement holds its horizon and the index has sealed a shard: from there the refinement
    // holds what its bound allows and the index's memory rises and falls with its open shard, within its budget.
    // The slope is of the resident memory less the index's (bounded by its budget, as the refinement is by its
    // horizon): what grows beyond the configured bounds.
    let warm = samples.iter().position(|s| s.refine_nodes >= horizon && s.index_points >= sealed_at);
    let (from, slope_over) = match warm {
        Some(at) if samples.len() - at >= 10 => (at, format!("from {:.0} segments", samples[at].segments)),
        _ => (samples.len() / 2, "second half".to_owned()),
    };
    let points: Vec<(f64, f64)> = samples[from..].iter().map(|s| (s.segments, s.rss_mib - s.index_mib)).collect();
    let slope_mib = slope(&points) * 100_000.0;
    // Resident memory swings by a hundred MiB between samples (memory freed and not yet returned, audio stretches
    // starting and ending): the slope of its floor — the least of each eighth of the run after warm-up — is steadier.
    let floors: Vec<(f64, f64)> = points
        .chunks(points.len().div_ceil(8).max(1))
        .filter_map(|bucket| bucket.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)))
        .collect();
    let floor_slope_mib = if floors.len() >= 3 { slope(&floors) * 100_000.0 } else { f64::NAN };
    let hour = network.per_hour() as f64;
    let hours = (network.bouts as f64 / hour).floor();
    let rate_of = |h: f64| hour / (time_at(&samples, (h + 1.0) * hour) - time_at(&samples, h * hour)).max(1e-3);
    let warm = warm_hours as f64;
    let (cold_hour, first_hour, last_hour) = (rate_of(0.0), rate_of(warm), rate_of(hours - 1.0));
    let hourly = |range: std::ops::Range<usize>| -> String {
        range.map(|h| format!("{:.0}", rate_of(h as f64))).collect::<Vec<_>>().join(" ")
    };
    println!(
        "{profile}: windows/s per simulated hour: warm-up {}; measured {}",
        hourly(0..warm_hours),
        hourly(warm_hours..hours as usize)
    );
    let (p99, searches) = searcher.p99_since(samples[from].at);
    // Where the time per window went: in the cold start's first simulated hour, and the first and last measured.
    for (name, h) in [("cold start's first", 0.0), ("first measured", warm), ("last", hours - 1.0)] {
        println!(
            "{profile}: ms per window, {name} simulated hour: {}",
            breakdown(&samples, h * hour, (h + 1.0) * hour)
        );
    }
    println!(
        "{profile}: peak RSS {peak_mib:.0} MiB of {budget_mib:.0}; RSS slope {slope_mib:+.2} MiB per 100 000 segments \
         less the index's memory ({slope_over}), of its floor {floor_slope_mib:+.2}; windows/s first measured \
         simulated hour {first_hour:.1}, last {last_hour:.1} ({:.0} %; the cold start's first hour {cold_hour:.1}); \
         search p99 {p99:.1} ms over {searches} searches \
         after warm-up (api.sla_p99_ms {}); {} failed searches{}",
        100.0 * last_hour / first_hour,
        config.api.sla_p99_ms,
        failures.len(),
        failures.first().map(|f| format!(", e.g. {f}")).unwrap_or_default()
    );
    Outcome {
        profile: profile.to_owned(),
        budget_mib,
        peak_mib,
        slope_mib,
        slope_over,
        warm_hours,
        cold_hour,
        first_hour,
        last_hour,
        p99,
        sla: config.api.sla_p99_ms,
        searches,
        wall_minutes,
    }
}

fn main() {
    let sensors = arg("--sensors", 1_000);
    let hours = arg("--hours", 24);
    let every = arg("--every-minutes", 20);
    let ahead = arg("--ahead", 1_500);
    let qps = arg("--qps", 5.0);
    let profiles: String = arg("--profiles", "balanced,memory-constrained".to_owned());
    // For comparison: what the refinement costs over a run.
    let refine = !args::flag("--no-refine");
    let fill = !args::flag("--no-fill");
    let sets: Vec<(String, toml::Value)> = args::all("--set")
        .iter()
        .map(|set| {
            let (key, value) = set.split_once('=').unwrap_or_else(|| panic!("--set takes KEY=VALUE, not {set}"));
            let parsed: toml::Table = toml::from_str(&format!("v = {value}"))
                .unwrap_or_else(|e| panic!("--set {set}: the value is not TOML: {e}"));
            (key.to_owned(), parsed["v"].clone())
        })
        .collect();
    tracing_subscriber::fmt().with_env_filter("warn,hnsw_rs=error").with_writer(std::io::stderr).init();
    let warm_hours = args::all("--warm-up-hours").first().map(|h| {
        h.parse::<usize>().unwrap_or_else(|_| panic!("--warm-up-hours takes a number of simulated hours, not {h}"))
    });
    let shape = Shape { sensors, hours, every_minutes: every, warm_hours };
    println!(
        "chorus soak: {sensors} sensors, a 5.99 s bout of 1 kHz 8-bit audio each every {every} simulated minutes, \
         {hours} simulated hours measured ({} windows) after a warm-up, refinement {}, {qps} searches/s by segment id",
        Network::new(sensors, hours, every).bouts,
        if refine { "on" } else { "off" }
    );
    let outcomes: Vec<Outcome> =
        profiles.split(',').map(|p| soak(p.trim(), shape, Load { ahead, qps, refine, fill }, &sets)).collect();
    println!(
        "\n{:<20} {:>11} {:>16} {:>22} {:>22} {:>16} {:>10}",
        "profile", "peak RSS", "RSS slope", "windows/s first→last h", "search p99 (SLA)", "wall minutes", "searches"
    );
    for o in &outcomes {
        println!(
            "{:<20} {:>5.0}/{:<5.0} {:>+9.2} MiB/100k {:>10.1} → {:<5.1} ({:>3.0} %) {:>9.1} ms ({:.0} ms) {:>16.1} {:>10}",
            o.profile,
            o.peak_mib,
            o.budget_mib,
            o.slope_mib,
            o.first_hour,
            o.last_hour,
            100.0 * o.last_hour / o.first_hour,
            o.p99,
            o.sla,
            o.wall_minutes,
            o.searches
        );
        println!(
            "{:<20} slope over: {}; measured after {} simulated hours of warm-up, whose first ran at {:.1} windows/s \
             ({:.0} % of it in the last measured hour)",
            "",
            o.slope_over,
            o.warm_hours,
            o.cold_hour,
            100.0 * o.last_hour / o.cold_hour
        );
    }
    println!(
        "reproduce: cargo bench --bench soak -- --profiles {profiles} --sensors {sensors} --hours {hours} \
         --every-minutes {every} --ahead {ahead} --qps {qps}{}{}{}{}",
        warm_hours.map(|h| format!(" --warm-up-hours {h}")).unwrap_or_default(),
        if refine { "" } else { " --no-refine" },
        if fill { "" } else { " --no-fill" },
        args::all("--set").iter().map(|set| format!(" --set {set}")).collect::<String>()
    );
}
