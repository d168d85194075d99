//! `chorus bench-query`: a load generator for the query API. Concurrent clients search by the ids of archived
//! segments, picked uniformly, from a hotspot (Zipf, s = 1.1: a few calls everybody asks about) or in bursts (all
//! clients for a second, then one for a second), and the run ends with latency percentiles, errors, throughput, the
//! share of answers from the cache, and the SLA line: p99 against `api.sla_p99_ms`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_connectors::parquet;

use crate::Error;
use crate::config::Config;

/// How clients pick and pace their queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Every archived segment equally likely, all clients busy.
    Uniform,
    /// Zipf-distributed over the segments (s = 1.1), all clients busy.
    Hotspot,
    /// Uniform, all clients busy for a second, then only one for a second.
    Burst,
}

/// A load run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The API's address.
    pub address: SocketAddr,
    /// Concurrent clients.
    pub clients: usize,
    /// Length of the run.
    pub duration: Duration,
    /// Query pattern.
    pub pattern: Pattern,
    /// Neighbours per query.
    pub k: usize,
    /// Bearer token, if the API needs one.
    pub token: Option<String>,
    /// At most this many segment ids are drawn from the archive.
    pub max_ids: usize,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: usize,
    /// Requests answered otherwise or not at all, by reason.
    pub errors: Vec<(String, usize)>,
    /// Latency percentiles of answered requests, in milliseconds: p50, p95, p99.
    pub percentiles: [f64; 3],
    /// Answered requests per second.
    pub qps: f64,
    /// Share of answers from the cache.
    pub cached: f64,
    /// The p99 target.
    pub sla_p99_ms: f64,
}

impl LoadReport {
    /// Whether p99 met the target and nothing failed.
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.percentiles[2] <= self.sla_p99_ms
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [p50, p95, p99] = self.percentiles;
        let errors: usize = self.errors.iter().map(|(_, n)| n).sum();
        writeln!(
            f,
            "requests  {} ok, {errors} errors, {:.1} queries/s, {:.0}% from the cache",
            self.ok,
            self.qps,
            100.0 * self.cached
        )?;
        writeln!(f, "latency   p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms")?;
        for (reason, n) in &self.errors {
            writeln!(f, "error     {n} × {reason}")?;
        }
        write!(
            f,
            "SLA       p99 {p99:.2} ms against api.sla_p99_ms = {} ms: {}",
            self.sla_p99_ms,
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Runs the load against the API of `config`'s archive.
pub fn run(config: &Config, options: &LoadOptions) -> Result<LoadReport, Error> {
    let mut ids = Vec::new();
    for space in parquet::spaces(&config.archive.dir)? {
        parquet::read_space(&config.archive.dir, &space, false, |row| {
            if ids.len() < options.max_ids {
                ids.push(row.id.to_string());
            }
        })?;
    }
    if ids.is_empty() {
        return Err(Error::NotFound(format!(
            "the archive {} holds no segments to query with: run the job first",
            config.archive.dir.display()
        )));
    }
    let ids = Arc::new(ids);
    let zipf = Arc::new(Zipf::new(ids.len(), 1.1));
    let results = Arc::new(Mutex::new(Vec::<Result<(f64, bool), String>>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..options.clients)
        .map(|client| {
            let (ids, zipf, results, stop, options) =
                (ids.clone(), zipf.clone(), results.clone(), stop.clone(), options.clone());
            std::thread::spawn(move || {
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (client as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if options.pattern == Pattern::Burst && client > 0 && started.elapsed().as_secs() % 2 == 1 {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let id = match options.pattern {
                        Pattern::Hotspot => &ids[zipf.sample((state >> 11) as f64 / (1u64 << 53) as f64)],
                        _ => &ids[(state % ids.len() as u64) as usize],
                    };
                    mine.push(search(&options, id));
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
            })
        })
        .collect();
    std::thread::sleep(options.duration);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    let mut latencies = Vec::new();
    let mut cached = 0;
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for result in results {
        match result {
            Ok((ms, from_cache)) => {
                latencies.push(ms);
                cached += usize::from(from_cache);
            }
            Err(reason) => *errors.entry(reason).or_default() += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(LoadReport {
        ok: latencies.len(),
        errors: errors.into_iter().collect(),
        percentiles: [at(0.5), at(0.95), at(0.99)],
        qps: latencies.len() as f64 / elapsed,
        cached: if latencies.is_empty() { 0.0 } else { cached as f64 / latencies.len() as f64 },
        sla_p99_ms: config.api.sla_p99_ms,
    })
}

/// One search by segment id: milliseconds and whether the answer came from the cache, or why it failed.
fn search(options: &LoadOptions, id: &str) -> Result<(f64, bool), String> {
    let body = format!("{{\"segment_id\":\"{id}\",\"k\":{}}}", options.k);
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&options.address, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let auth = options.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "POST /v1/search HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        options.address,
        body.len()
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("receive: {e}"))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let status = response.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("HTTP {status}"));
    }
    Ok((ms, response.contains("\"cached\":true")))
}

/// Zipf sampling over ranks `0..n` by inverting the cumulative distribution.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect();
        cumulative.iter_mut().for_each(|c| *c /= total);
        Zipf { cumulative }
    }

    /// The rank for a uniform draw `u` in [0, 1).
    fn sample(&self, u: f64) -> usize {
        self.cumulative.partition_point(|c| *c < u).min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_ranks() {
        let zipf = Zipf::new(1000, 1.1);
        let draws: Vec<usize> = (0..10_000).map(|i| zipf.sample((i as f64 + 0.5) / 10_000.0)).collect();
        let top10 = draws.iter().filter(|r| **r < 10).count();
        assert!(top10 > 3_000, "{top10} of 10 000 draws in the top 10 ranks");
        assert!(draws.iter().all(|r| *r < 1000));
    }
}
