//! The index against exact search and against hnswlib, on generated data, in one run.
//!
//!     cargo bench --bench index -- [--points 100000] [--queries 1000] [--dim 1536] [--million] [--no-hnswlib]
//!                                   [--set clustered|hard]
//!     cargo bench --bench index -- --open-memory 20000 [--m 32] [--dim 1536]
//!     cargo bench --bench index -- --ingest 20000 [--dim 1536]
//!     cargo bench --bench index -- --burst 20000 [--dim 1536]
//!
//! The second form measures only what a point of the open shard costs in resident memory, against what the index
//! counts for it. The third measures precomputed embeddings end to end: `--ingest` vectors of the clustered set sent
//! as embeddings messages (64 a message, 100 sensors) to a broker of their own, then a `chorus run` of the balanced
//! profile (refinement off) reading them into its index and archive — vectors/s from the first segment indexed to
//! the last archived — against the same vectors inserted into a space's index in this process in the same batches
//! and with the same parameters (the index's own rate, as the job builds it). The fourth preloads a space held as the
//! job holds it (a background thread linking its write buffer) with `--burst` vectors at the builder's pace, sends
//! one full write buffer at ten times that rate while a thread queries, and prints the queries' latency while the
//! buffer drains, against the balanced profile's `api.sla_p99_ms`.
//!
//! Two data sets, generated with a fixed seed and L2-normalised: `clustered`, a mixture of 200 clusters on a
//! 24-dimensional latent space mapped into `--dim` dimensions with a little isotropic noise (embeddings of calls of
//! many species), and `hard`, one 64-dimensional latent Gaussian with a decaying spectrum and more noise, whose
//! neighbours are not separated by any cluster structure. Each set: `--points` vectors built in parallel, 2,000 more
//! inserted one at a time, `--queries` held-out queries from the same distribution, exact neighbours by brute force.
//!
//! Measured for chorus: build and incremental-insert throughput of both builders (`index.builder`: chorus's own,
//! timed until its write buffer is linked, and hnsw_rs's), then for the open shard (each builder's graph) and the
//! sealed shard (the frozen graph of chorus's builder) recall@10, recall@100, single-thread latency p50/p99 and queries/s on two
//! threads at several ef; then the sealed shard in each tier (memory per vector, recall@10, with and without
//! rescoring). hnswlib (pinned, built from source with -march=native by `scripts/tools.sh hnswlib`) and faiss's
//! `IndexHNSWFlat` (its pinned wheel, `scripts/tools.sh faiss`) build and query the same vectors with the same M and
//! ef_construction in the same run; the table ends with the ratios to each.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use chorus_operators::index::{
    Builder, Filter, IndexConfig, IndexParams, Indices, PointInfo, Registry, Request, SpaceIndex, Tier, read, write,
};
use chorus_operators::record::SegmentId;
use rayon::prelude::*;
use simsimd::SpatialSimilarity;

#[path = "args.rs"]
mod args;
#[path = "rng.rs"]
mod rng;
#[allow(dead_code)]
#[path = "../tests/support.rs"]
mod support;

use args::arg;
use args::flag;
use rng::Rng;

const EXTRA: usize = 2_000;
/// Points per shard beyond which the bench splits the index, as the job's default does.
const SHARD: usize = 100_000;
const EFS: [usize; 4] = [32, 64, 128, 256];
const M: usize = 32;
const EF_CONSTRUCTION: usize = 200;

/// How a data set places its points.
struct Generator {
    name: &'static str,
    dim: usize,
    latent: usize,
    /// `dim × latent`, row-major.
    mixing: Vec<f32>,
    /// Cluster centres in the latent space (none: one Gaussian).
    centres: Vec<Vec<f32>>,
    /// Standard deviation of latent coordinate `j` around its centre.
    spread: Vec<f32>,
    noise: f32,
}

impl Generator {
    fn clustered(dim: usize) -> Generator {
        let latent = 24;
        let mut rng = Rng(11);
        let centres = (0..200).map(|_| (0..latent).map(|_| 1.5 * rng.normal()).collect()).collect();
        Generator::new("clustered", dim, latent, centres, vec![0.5; latent], 0.05, &mut rng)
    }

    fn hard(dim: usize) -> Generator {
        let latent = 64;
        let mut rng = Rng(13);
        let spread = (0..latent).map(|j| 1.0 / (1.0 + j as f32).powf(0.35)).collect();
        Generator::new("hard", dim, latent, Vec::new(), spread, 0.12, &mut rng)
    }

    fn new(
        name: &'static str,
        dim: usize,
        latent: usize,
        centres: Vec<Vec<f32>>,
        spread: Vec<f32>,
        noise: f32,
        rng: &mut Rng,
    ) -> Generator {
        let scale = 1.0 / (latent as f32).sqrt();
        let mixing = (0..dim * latent).map(|_| scale * rng.normal()).collect();
        Generator { name, dim, latent, mixing, centres, spread, noise }
    }

    /// Row `i` of stream `stream`, normalised.
    fn row(&self, stream: u64, i: usize) -> Vec<f32> {
        let mut rng = Rng(stream.wrapping_mul(0x1000_0000_01b3) ^ (i as u64).wrapping_mul(0x9e37_79b9));
        rng.next();
        let centre =
            if self.centres.is_empty() { None } else { Some(&self.centres[rng.next() as usize % self.centres.len()]) };
        let z: Vec<f32> =
            (0..self.latent).map(|j| centre.map_or(0.0, |c| c[j]) + self.spread[j] * rng.normal()).collect();
        let mut x: Vec<f32> = self
            .mixing
            .chunks_exact(self.latent)
            .map(|a| a.iter().zip(&z).map(|(a, z)| a * z).sum::<f32>() + self.noise * rng.normal())
            .collect();
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        x.iter_mut().for_each(|v| *v /= norm);
        x
    }

    fn rows(&self, stream: u64, n: usize) -> Vec<Vec<f32>> {
        (0..n).into_par_iter().map(|i| self.row(stream, i)).collect()
    }
}

/// The exact 100 nearest rows of `data` to each query, by brute force (queries in blocks for the cache).
fn exact(data: &[Vec<f32>], queries: &[Vec<f32>], k: usize) -> Vec<Vec<u64>> {
    queries
        .par_chunks(32)
        .flat_map_iter(|block| {
            let mut best: Vec<Vec<(f32, u64)>> = vec![Vec::with_capacity(4 * k); block.len()];
            for (i, row) in data.iter().enumerate() {
                for (q, query) in block.iter().enumerate() {
                    let d = 1.0 - f32::dot(query, row).unwrap_or(0.0) as f32;
                    let list = &mut best[q];
                    list.push((d, i as u64));
                    if list.len() >= 4 * k {
                        list.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
                        list.truncate(k);
                    }
                }
            }
            best.into_iter().map(move |mut list| {
                list.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                list.into_iter().take(k).map(|(_, i)| i).collect()
            })
        })
        .collect()
}

fn recall(found: &[Vec<u64>], truth: &[Vec<u64>], k: usize) -> f64 {
    let hits: usize =
        found.iter().zip(truth).map(|(f, t)| f.iter().take(k).filter(|id| t[..k].contains(id)).count()).sum();
    hits as f64 / (k * truth.len()) as f64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One sweep point.
#[derive(Clone, Copy, Default)]
struct Run {
    ef: usize,
    recall10: f64,
    recall100: f64,
    p50: f64,
    p99: f64,
    qps: f64,
}

/// A search: query, k, ef → ids, nearest first.
type Search<'a> = &'a (dyn Fn(&[f32], usize, usize) -> Vec<u64> + Sync);

/// Queries `search` one at a time on this thread (latency) and then on two threads (throughput).
fn sweep(search: Search<'_>, queries: &[Vec<f32>], truth: &[Vec<u64>]) -> Vec<Run> {
    EFS.iter()
        .map(|&ef| {
            let mut latencies = Vec::with_capacity(queries.len());
            let mut found = Vec::with_capacity(queries.len());
            for query in queries {
                let started = Instant::now();
                found.push(search(query, 10, ef));
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
            }
            latencies.sort_by(f64::total_cmp);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let started = Instant::now();
            pool.install(|| queries.par_iter().for_each(|q| drop(search(q, 10, ef))));
            let qps = queries.len() as f64 / started.elapsed().as_secs_f64();
            let found100: Vec<Vec<u64>> =
                pool.install(|| queries.par_iter().map(|q| search(q, 100, ef.max(100))).collect());
            Run {
                ef,
                recall10: recall(&found, truth, 10),
                recall100: recall(&found100, truth, 100),
                p50: percentile(&latencies, 0.5),
                p99: percentile(&latencies, 0.99),
                qps,
            }
        })
        .collect()
}

fn print_runs(label: &str, runs: &[Run]) {
    for r in runs {
        println!(
            "  {label:<24} ef {:>4}  recall@10 {:.4}  recall@100 {:.4}  p50 {:>7.3} ms  p99 {:>7.3} ms  {:>8.0} q/s (2 threads)",
            r.ef, r.recall10, r.recall100, r.p50, r.p99, r.qps
        );
    }
}

/// Latency at `target` recall@10, interpolated along a sweep (None when the sweep never reaches it).
fn latency_at(runs: &[Run], target: f64) -> Option<f64> {
    let mut previous: Option<&Run> = None;
    for run in runs {
        if run.recall10 >= target {
            return Some(match previous {
                Some(p) if run.recall10 > p.recall10 => {
                    p.p50 + (run.p50 - p.p50) * (target - p.recall10) / (run.recall10 - p.recall10)
                }
                _ => run.p50,
            });
        }
        previous = Some(run);
    }
    None
}

/// Writes rows as a NumPy `.npy` file of float32 (`rows × dim`).
fn write_npy_f32(path: &Path, rows: &[Vec<f32>]) {
    let dim = rows.first().map_or(0, Vec::len);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write_npy_header(&mut out, "<f4", rows.len(), dim);
    for row in rows {
        for v in row {
            out.write_all(&v.to_le_bytes()).unwrap();
        }
    }
}

/// Writes id lists as a NumPy `.npy` file of int64 (`rows × k`).
fn write_npy_i64(path: &Path, rows: &[Vec<u64>]) {
    let k = rows.first().map_or(0, Vec::len);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write_npy_header(&mut out, "<i8", rows.len(), k);
    for row in rows {
        for v in row {
            out.write_all(&(*v as i64).to_le_bytes()).unwrap();
        }
    }
}

/// The vectors, queries and exact neighbours as `.npy` files for hnswlib.
fn write_inputs(dir: &Path, data: &[Vec<f32>], queries: &[Vec<f32>], truth: &[Vec<u64>]) {
    write_npy_f32(&dir.join("data.npy"), data);
    write_npy_f32(&dir.join("queries.npy"), queries);
    write_npy_i64(&dir.join("truth.npy"), truth);
}

fn write_npy_header(out: &mut impl Write, descr: &str, rows: usize, cols: usize) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00").unwrap();
    out.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    out.write_all(header.as_bytes()).unwrap();
}

/// `library` (`hnswlib` or `faiss`) on the files [`write_inputs`] wrote, or why not.
fn compared(dir: &Path, library: &str) -> Result<(f64, Vec<Run>), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(root.join("scripts/tools.sh")).arg(library).status().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("scripts/tools.sh {library} failed"));
    }
    let tools = std::env::var_os("CHORUS_TOOLS").map(std::path::PathBuf::from).unwrap_or_else(|| root.join(".tools"));
    let (d, q, t) = (dir.join("data.npy"), dir.join("queries.npy"), dir.join("truth.npy"));
    let efs: Vec<String> = EFS.iter().map(|e| e.to_string()).collect();
    let output = Command::new(tools.join("venv/bin/python"))
        .arg(root.join("benches/hnswlib_compare.py"))
        .args([&d, &q, &t])
        .args(["--library", library, "--m", &M.to_string(), "--ef-construction", &EF_CONSTRUCTION.to_string()])
        .args(["--threads", "2", "--ef"])
        .args(&efs)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    let runs = value["runs"]
        .as_array()
        .ok_or("no runs")?
        .iter()
        .map(|r| Run {
            ef: r["ef"].as_u64().unwrap_or(0) as usize,
            recall10: r["recall10"].as_f64().unwrap_or(0.0),
            recall100: r["recall100"].as_f64().unwrap_or(0.0),
            p50: r["p50_ms"].as_f64().unwrap_or(0.0),
            p99: r["p99_ms"].as_f64().unwrap_or(0.0),
            qps: r["qps"].as_f64().unwrap_or(0.0),
        })
        .collect();
    Ok((value["build_seconds"].as_f64().unwrap_or(f64::NAN), runs))
}

fn bench(generator: &Generator, points: usize, n_queries: usize, compare: bool) {
    let started = Instant::now();
    let data = generator.rows(1, points + EXTRA);
    let queries = generator.rows(2, n_queries);
    println!(
        "\n{} ({} + {EXTRA} vectors of {} dimensions, {n_queries} queries): generated in {:.1} s",
        generator.name,
        points,
        generator.dim,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let truth = exact(&data, &queries, 100);
    println!("  exact neighbours by brute force in {:.1} s", started.elapsed().as_secs_f64());

    let dir = tempfile::tempdir().unwrap();
    if compare {
        write_inputs(dir.path(), &data, &queries, &truth);
    }
    // One shard, to compare with hnswlib's one graph; beyond 100 000 points, shards of 100 000 as the job keeps them
    // (one hnsw_rs graph of a million 1536-dimensional vectors does not fit in 24 GiB beside the data).
    let shard_max_points = if points > SHARD { SHARD } else { points + EXTRA + 1 };
    let config = IndexConfig { m: M, ef_construction: EF_CONSTRUCTION, shard_max_points, ..Default::default() };
    let info = |i: usize| PointInfo { sensor: format!("s{}", i % 16), start_micros: i as i64 * 5_000_000 };
    let batch: Vec<(SegmentId, PointInfo, &[f32])> =
        data[..points].iter().enumerate().map(|(i, v)| (SegmentId(i as u64), info(i), v.as_slice())).collect();
    // hnsw_rs's open shard (index.builder = "hnsw_rs"): built, inserted into one at a time, searched, dropped.
    let hnsw_params = IndexConfig { builder: Builder::HnswRs, ..config.clone() }.build(dir.path()).unwrap();
    let mut hnsw = SpaceIndex::new(&dir.path().join("space=hnsw"), &hnsw_params, generator.dim);
    let started = Instant::now();
    hnsw.insert_many(&batch, 0).unwrap();
    let hnsw_build = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (i, v) in data.iter().enumerate().skip(points) {
        hnsw.insert(SegmentId(i as u64), &info(i), v, 0).unwrap();
    }
    let hnsw_incremental = started.elapsed().as_secs_f64();
    let hnsw_rate = points as f64 / hnsw_build;
    println!(
        "  hnsw_rs build: {hnsw_build:.1} s, {hnsw_rate:.0} vectors/s (2 threads); incremental insert: {:.0} vectors/s \
         (1 thread)",
        EXTRA as f64 / hnsw_incremental
    );
    let filter = Filter::default();
    let search = |index: &SpaceIndex, query: &[f32], k: usize, ef: usize| -> Vec<u64> {
        let request = Request { vector: query, k, ef, filter: &filter };
        index.search(&request, 0).unwrap().into_iter().map(|(id, _)| id.0).collect()
    };
    if hnsw.shards().is_empty() {
        print_runs("chorus open (hnsw_rs)", &sweep(&|q, k, ef| search(&hnsw, q, k, ef), &queries, &truth));
    }
    drop(hnsw);
    // chorus's builder, as the job runs it: the inserts fill the write buffer (each batch linking what exceeds
    // its bound), the rest linked behind them; timed until every point is in the graph.
    let params = config.build(dir.path()).unwrap();
    let mut index = SpaceIndex::new(&dir.path().join("space=bench"), &params, generator.dim);
    let started = Instant::now();
    index.insert_many(&batch, 0).unwrap();
    while index.link(usize::MAX) > 0 {}
    let build = started.elapsed().as_secs_f64();
    drop(batch);
    let started = Instant::now();
    for (i, v) in data.iter().enumerate().skip(points) {
        index.insert(SegmentId(i as u64), &info(i), v, 0).unwrap();
        index.link(1);
    }
    let incremental = started.elapsed().as_secs_f64();
    drop(data);
    let own_rate = points as f64 / build;
    println!(
        "  chorus build (own builder): {build:.1} s, {own_rate:.0} vectors/s (2 threads); incremental insert and \
         link: {:.0} vectors/s",
        EXTRA as f64 / incremental
    );
    let open = sweep(&|q, k, ef| search(&index, q, k, ef), &queries, &truth);
    let label = match index.shards().len() {
        0 => "chorus open (own builder)".to_owned(),
        n => format!("chorus {n} sealed + open"),
    };
    print_runs(&label, &open);
    let started = Instant::now();
    index.seal(0).unwrap();
    println!("  sealed in {:.1} s", started.elapsed().as_secs_f64());
    let sealed = sweep(&|q, k, ef| search(&index, q, k, ef), &queries, &truth);
    print_runs("chorus sealed", &sealed);

    println!("  tiers (sealed shard, ef 128, k 10):");
    for tier in Tier::ALL {
        index.set_shard_tier(0, tier).unwrap();
        let shard = &index.shards()[0];
        let per_vector = shard.bytes() as f64 / shard.len() as f64;
        let run = |oversample: usize| {
            let found: Vec<Vec<u64>> = queries
                .par_iter()
                .map(|q| shard.search(q, 10, 128, oversample, &filter).unwrap().into_iter().map(|(id, _)| id).collect())
                .collect();
            let mut latencies: Vec<f64> = queries
                .iter()
                .map(|q| {
                    let started = Instant::now();
                    drop(shard.search(q, 10, 128, oversample, &filter));
                    started.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            latencies.sort_by(f64::total_cmp);
            (recall(&found, &truth, 10), percentile(&latencies, 0.5))
        };
        let (raw, raw_p50) = run(0);
        if matches!(tier, Tier::F32 | Tier::Disk | Tier::Archive) {
            // Full precision already: nothing to rescore (the disk and archive tiers read each row from disk).
            println!(
                "    {:<8} {per_vector:>8.1} bytes/vector   recall@10 {raw:.4}   p50 {raw_p50:.3} ms",
                tier.name()
            );
        } else {
            let (rescored, p50) = run(params.rescore_oversample);
            println!(
                "    {:<8} {per_vector:>8.0} bytes/vector   recall@10 {raw:.4} (p50 {raw_p50:.3} ms), rescored ×{} {rescored:.4} (p50 {p50:.3} ms)",
                tier.name(),
                params.rescore_oversample
            );
        }
    }
    drop(index);

    if !compare {
        return;
    }
    for (library, name) in [("hnswlib", "hnswlib 0.8.0"), ("faiss", "faiss 1.15.1 IndexHNSWFlat")] {
        let (seconds, runs) = match compared(dir.path(), library) {
            Err(why) => {
                println!("  {name}: not run: {why}");
                continue;
            }
            Ok(measured) => measured,
        };
        let total = (points + EXTRA) as f64;
        println!("  {name} build: {seconds:.1} s, {:.0} vectors/s (2 threads)", total / seconds);
        print_runs(library, &runs);
        println!(
            "  ratio chorus/{library}: build throughput {:.2} (own builder), {:.2} (hnsw_rs)",
            own_rate / (total / seconds),
            hnsw_rate / (total / seconds)
        );
        for target in [0.90, 0.95, 0.99] {
            match (latency_at(&sealed, target), latency_at(&open, target), latency_at(&runs, target)) {
                (Some(s), Some(o), Some(h)) => println!(
                    "  at recall@10 {target:.2}: p50 chorus sealed {s:.3} ms, open {o:.3} ms, {library} {h:.3} ms; ratio sealed/{library} {:.2}, open/{library} {:.2}",
                    s / h,
                    o / h
                ),
                (s, o, h) => println!(
                    "  at recall@10 {target:.2}: not reached by every index (sealed {s:?}, open {o:?}, {library} {h:?})"
                ),
            }
        }
    }
}

/// Resident memory of this process, in bytes.
fn resident() -> f64 {
    support::proc_status_bytes(None, "VmRSS") as f64
}

/// What an open shard's point costs in resident memory, against what the index counts for it
/// (`chorus_index_bytes`): `points` vectors inserted in the job's batches of 64 into one open shard.
fn open_shard_memory(generator: &Generator, points: usize, m: usize) {
    let data = generator.rows(3, points);
    let dir = tempfile::tempdir().unwrap();
    let config =
        IndexConfig { m, ef_construction: EF_CONSTRUCTION, shard_max_points: points + 1, ..Default::default() };
    let params = config.build(dir.path()).unwrap();
    let before = resident();
    let mut index = SpaceIndex::new(&dir.path().join("space=memory"), &params, generator.dim);
    let info = |i: usize| PointInfo { sensor: format!("s{}", i % 1_000), start_micros: i as i64 * 5_000_000 };
    for (c, chunk) in data.chunks(64).enumerate() {
        let batch: Vec<(SegmentId, PointInfo, &[f32])> = (chunk.iter().enumerate())
            .map(|(i, v)| (SegmentId((c * 64 + i) as u64), info(c * 64 + i), v.as_slice()))
            .collect();
        index.insert_many(&batch, 0).unwrap();
    }
    let held = resident() - before;
    let counted = index.bytes() as f64;
    drop(index);
    let after = resident() - before;
    println!(
        "
open shard memory, {points} points of {} dimensions, M {m}: {:.0} bytes per point resident, {:.0} counted \
         ({:.2}×); {:.0} MiB still resident after the shard is dropped",
        generator.dim,
        held / points as f64,
        counted / points as f64,
        held / counted,
        after / f64::from(1 << 20)
    );
}

/// Vectors per embeddings message, and sensors sending them.
const INGEST_BATCH: usize = 64;
const INGEST_SENSORS: usize = 100;

/// Precomputed embeddings end to end against the index's own rate (see the module documentation).
fn ingest(generator: &Generator, points: usize) {
    use chorus_connectors::kafka::{Acks, HEADER_CAPTURED_AT, HEADER_DIM, HEADER_MODEL, Producer, Record};

    let data = generator.rows(5, points);
    let broker = support::PrivateBroker::start();
    let port = support::free_port();
    let overrides = [
        ("refine.enabled", false.into()),
        ("archive.flush_interval_seconds", 1.into()),
        ("http.listen", format!("127.0.0.1:{port}").into()),
    ];
    let scenario = support::Scenario::from_profile("balanced.toml", &broker.address(), "ingest", &overrides);
    let config = chorus::config::Config::load(&scenario.config).unwrap();
    assert_eq!(config.model.dim, generator.dim, "--dim must be the balanced profile's model.dim");

    // Sensor `c mod 100` sends message `c`: each sensor's vectors are consecutive windows, one hop apart.
    let started = Instant::now();
    let producer = Producer::open(&config.kafka).unwrap();
    let acks = std::sync::Arc::new(Acks::default());
    let hop_nanos = i64::from(config.windows.hop) * 1_000_000_000 / i64::from(config.windows.sample_rate);
    for (c, chunk) in data.chunks(INGEST_BATCH).enumerate() {
        let round = (c / INGEST_SENSORS) as i64;
        let captured_at = support::T0_SECONDS * 1_000_000_000 + round * INGEST_BATCH as i64 * hop_nanos;
        let headers = vec![
            (HEADER_MODEL.to_owned(), config.model.name.as_bytes().to_vec()),
            (HEADER_DIM.to_owned(), generator.dim.to_string().into_bytes()),
            (HEADER_CAPTURED_AT.to_owned(), chorus_operators::record::rfc3339(captured_at).into_bytes()),
        ];
        let payload = chunk.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        let key = format!("edge-{:03}", c % INGEST_SENSORS).into_bytes();
        producer.send(&config.kafka.audio_topic, &Record { key: Some(key), payload, headers }, &acks, 0).unwrap();
    }
    while !producer.flush(std::time::Duration::from_secs(30)).unwrap() {}
    assert!(acks.failure().is_none(), "{:?}", acks.failure());
    let bytes = points * generator.dim * 4;
    println!(
        "ingest: {points} vectors ({:.0} MiB) produced in {:.1} s",
        bytes as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64()
    );

    let job = scenario.spawn(&["run"]);
    let count = |stage: &str| -> Option<f64> {
        let (_, text) = support::http_get(port, "/metrics")?;
        let series = format!("chorus_records_out_total{{stage=\"{stage}\"}}");
        text.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(3_600);
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", scenario.job_log());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait("the first segment indexed", &|| count("index").is_some_and(|n| n >= 1.0));
    let first = Instant::now();
    wait("every vector archived", &|| count("archive").is_some_and(|n| n >= points as f64));
    let archived = first.elapsed().as_secs_f64();
    // The write buffer lets the archive run ahead of the graph: the figure counts until the graph holds every vector.
    let buffered = || -> Option<f64> {
        let (_, text) = support::http_get(port, "/metrics")?;
        text.lines()
            .filter_map(|l| l.strip_prefix("chorus_index_buffered{")?.split_once("} ")?.1.trim().parse::<f64>().ok())
            .reduce(|a, b| a + b)
    };
    wait("the write buffer drained", &|| buffered() == Some(0.0));
    let seconds = first.elapsed().as_secs_f64();
    let peak = support::peak_rss(job.id()) as f64 / f64::from(1 << 20);
    support::terminate(job.id());
    let mut job = job;
    assert!(job.wait().unwrap().success(), "the job failed:\n{}", scenario.job_log());
    let end_to_end = (points - 1) as f64 / seconds;

    // The index alone: the same vectors, the same batches, the same parameters, in this process.
    let dir = tempfile::tempdir().unwrap();
    let params = config.index.clone();
    let mut index = SpaceIndex::new(&dir.path().join("space=ingest"), &params, generator.dim);
    let started = Instant::now();
    for (c, chunk) in data.chunks(INGEST_BATCH).enumerate() {
        let batch: Vec<(SegmentId, PointInfo, &[f32])> = (chunk.iter().enumerate())
            .map(|(i, v)| {
                let n = c * INGEST_BATCH + i;
                let info = PointInfo { sensor: format!("edge-{:03}", c % INGEST_SENSORS), start_micros: n as i64 };
                (SegmentId(n as u64), info, v.as_slice())
            })
            .collect();
        index.insert_many(&batch, 0).unwrap();
    }
    while index.link(usize::MAX) > 0 {}
    let alone = points as f64 / started.elapsed().as_secs_f64();
    println!(
        "ingest: Kafka → index → archive {end_to_end:.0} vectors/s ({seconds:.1} s until the graph held every vector, \
         {archived:.1} s until the archive did; job peak {peak:.0} MiB); the index alone (SpaceIndex::insert_many, \
         then linked), same batches and parameters (M {}, ef_construction {}, shards of {}): {alone:.0} vectors/s; \
         ratio {:.2}",
        params.m,
        params.ef_construction,
        params.shard_max_points,
        end_to_end / alone
    );
    println!("reproduce: cargo bench --bench index -- --ingest {points} --dim {}", generator.dim);
}

/// A burst into a space as the job holds it (a background thread draining the write buffer): `preload` vectors
/// inserted at the builder's pace (their rate is the builder's), then one full write buffer (`index.buffer_max_points`
/// of the balanced profile) at ten times that rate, while a thread queries without pause; prints how long the burst's
/// inserts took, how long the buffer took to drain, and the queries' latency meanwhile against `api.sla_p99_ms`.
fn burst(generator: &Generator, preload: usize) {
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/balanced.toml");
    let config = chorus::config::Config::load(&profile).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = config.index.buffer_max_points;
    let params =
        IndexParams { dir: dir.path().to_path_buf(), shard_max_points: preload + size + 1, ..config.index.clone() };
    let (dim, ef) = (generator.dim, params.ef_search);
    let data = generator.rows(7, preload + size);
    let queries = generator.rows(8, 1_000);
    let mut indices = Indices::new(params.clone(), dim, Registry::default());
    let space = indices.space("burst").unwrap();
    let offer = |indices: &Indices, from: usize, to: usize| {
        let points: Vec<(SegmentId, PointInfo, &[f32])> = (from..to)
            .map(|i| {
                let info = PointInfo { sensor: format!("s{}", i % 100), start_micros: i as i64 * 5_000_000 };
                (SegmentId(i as u64), info, data[i].as_slice())
            })
            .collect();
        write(&space).offer_many(&points, 0);
        indices.nudge();
    };
    let drained = |since: Instant| {
        while read(&space).buffered() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        since.elapsed().as_secs_f64()
    };
    let started = Instant::now();
    for from in (0..preload).step_by(INGEST_BATCH) {
        offer(&indices, from, (from + INGEST_BATCH).min(preload));
    }
    let rate = preload as f64 / drained(started);
    println!(
        "burst: {preload} vectors of {dim} dimensions preloaded at {rate:.0} vectors/s (M {}, ef_construction {}, \
         write buffer {size})",
        params.m, params.ef_construction
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut latencies, inserted, drain, most) = std::thread::scope(|scope| {
        let querying = scope.spawn(|| {
            let filter = Filter::default();
            let mut latencies = Vec::new();
            for query in queries.iter().cycle() {
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let started = Instant::now();
                let request = Request { vector: query, k: 10, ef, filter: &filter };
                read(&space).search(&request, 0).unwrap();
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
            }
            latencies
        });
        let started = Instant::now();
        let mut most = 0;
        for from in (preload..preload + size).step_by(INGEST_BATCH) {
            let due = (from - preload) as f64 / (10.0 * rate);
            let wait = due - started.elapsed().as_secs_f64();
            if wait > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(wait));
            }
            offer(&indices, from, (from + INGEST_BATCH).min(preload + size));
            most = most.max(read(&space).buffered());
        }
        let inserted = started.elapsed().as_secs_f64();
        let drain = drained(started);
        done.store(true, std::sync::atomic::Ordering::Release);
        (querying.join().unwrap(), inserted, drain, most)
    });
    latencies.sort_by(f64::total_cmp);
    let sla = config.api.sla_p99_ms;
    let p99 = percentile(&latencies, 0.99);
    println!(
        "burst: {size} vectors at 10× that rate: inserted in {inserted:.2} s ({:.0} vectors/s, at most {most} \
         buffered), the buffer drained {:.1} s later; {} queries meanwhile (k 10, ef {ef}, one thread): p50 \
         {:.2} ms, p99 {p99:.2} ms ({} the balanced profile's api.sla_p99_ms of {sla} ms)",
        size as f64 / inserted,
        drain - inserted,
        latencies.len(),
        percentile(&latencies, 0.5),
        if p99 <= sla { "within" } else { "over" }
    );
    println!("reproduce: cargo bench --bench index -- --burst {preload} --dim {dim}");
}

fn main() {
    if let Some(points) = std::env::args().skip_while(|a| a != "--burst").nth(1) {
        let points = points.parse().expect("--burst PRELOAD");
        burst(&Generator::clustered(arg("--dim", 1536)), points);
        return;
    }
    if let Some(points) = std::env::args().skip_while(|a| a != "--ingest").nth(1) {
        let points = points.parse().expect("--ingest POINTS");
        ingest(&Generator::clustered(arg("--dim", 1536)), points);
        return;
    }
    if let Some(points) = std::env::args().skip_while(|a| a != "--open-memory").nth(1) {
        let points = points.parse().expect("--open-memory POINTS");
        open_shard_memory(&Generator::clustered(arg("--dim", 1536)), points, arg("--m", M));
        return;
    }
    let points = if flag("--million") { 1_000_000 } else { arg("--points", 100_000) };
    let queries = arg("--queries", 1_000);
    let dim = arg("--dim", 1536);
    let compare = !flag("--no-hnswlib");
    println!(
        "chorus index bench: M {M}, ef_construction {EF_CONSTRUCTION}, cosine distance; latency single-thread, throughput on 2 threads"
    );
    let only = std::env::args().skip_while(|a| a != "--set").nth(1);
    for generator in [Generator::clustered(dim), Generator::hard(dim)] {
        if only.as_deref().is_some_and(|name| name != generator.name) {
            continue;
        }
        bench(&generator, points, queries, compare);
    }
    let peak = support::proc_status_bytes(None, "VmHWM") >> 10;
    println!("\npeak memory of this process: {peak} kB");
    println!("reproduce: cargo bench --bench index -- --points {points} --queries {queries} --dim {dim}");
}
