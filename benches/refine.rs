//! Graph refinement: what it is worth and what it costs, on generated labelled embeddings.
//!
//!     cargo bench --bench refine -- [--dim 1536] [--species 20] [--quality-points 20000] [--per-class 100]
//!                                    [--points 100000] [--new 1000] [--labels-per-species 5]
//!                                    [--skip-quality] [--skip-embeddings] [--skip-audio] [--skip-latency]
//!                                    [--skip-memory] [--skip-search] [--skip-sliding]
//!                                    [--workers N] [--search-ef N] [--label-hops N] [--label-restart F] [--label-top N] [--min-label-score F]
//!                                    [--horizon 2000] [--per-round 25] [--hops N] [--cluster-max-distance F]
//!                                    [--noise 1.2] [--recording 1.0]
//!
//! The labelled set: `--species` species, each a few call types around a species centre on a 32-dimensional latent
//! space, with recording conditions (a per-recording offset shared across species) and isotropic noise, mapped into
//! `--dim` dimensions and L2-normalised; a fixed seed. Neighbours come from chorus's own index (HNSW, as in the job).
//!
//! Quality (`--quality-points`): half the segments are the reference (their species known), half are held out.
//! kNN classification (10 nearest references, majority vote) of the held-out half with raw and with refined
//! embeddings, over a small grid of `alpha` and `hops`; then label propagation from 1, 5 and 20 given labels per
//! species, scored on the held-out half against fully supervised kNN on raw embeddings (every reference labelled).
//!
//! Real audio (`--per-class`): ten call classes, each one second of the sample recording, placed at random offsets
//! and gains in 5 s windows over background noise with a quieter call of another class overlapping, embedded by the
//! default model; the same measures as above.
//!
//! Latency (`--points`, `--new`): a graph of `--points` segments is built and refined, then `--new` segments arrive:
//! the time to insert them into the index, find their neighbours, and the time until the dataflow has settled every
//! refined output they change — in one round, and in ten rounds of a tenth each. Peak memory at the end.
//!
//! Memory per segment: 6 000 random `--dim` segments with the default `[refine]` (k = 10, one hop, ten label hops),
//! one in fifty labelled, fed in rounds of 500; the resident memory the second 3 000 add (the dataflow's
//! arrangements, the refiner's graph and copies of its embeddings, the shared refinements), per segment. Run it alone
//! (`--skip-quality --skip-audio --skip-latency`): what ran before it leaves memory the allocator reuses.
//!
//! Neighbour search: the exact search over the segments the refinement holds, per newcomer, at several horizons.
//!
//! Sliding horizon (`--horizon`, `--per-round`): three horizons' worth of segments arrive in rounds, their neighbours
//! found exactly among those held, as in the job; once the horizon is full each newcomer retires the oldest segment.
//! The dataflow's time per newcomer while the horizon fills and once it is full — what the job's refinement costs
//! as it reaches its bound. Tighter species (`--noise 0.3 --recording 0.2`) put most edges within the cluster
//! threshold, as repeated calls of one kind do; `--cluster-max-distance 0` and `--hops 0` take clusters and embedding
//! propagation out, to see what each costs.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use chorus_operators::index::{Filter, IndexConfig, PointInfo, Request, SpaceIndex};
use chorus_operators::record::SegmentId;
use chorus_operators::refine::flow::Refiner;
use chorus_operators::refine::knn;
use chorus_operators::refine::{RefineConfig, RefineParams, Refinements};
use rayon::prelude::*;
use simsimd::{SpatialSimilarity, f16};

#[path = "args.rs"]
mod args;
#[path = "rng.rs"]
mod rng;

#[allow(dead_code)]
#[path = "../tests/support.rs"]
mod support;

use args::{arg, flag};
use rng::Rng;

const LATENT: usize = 32;
const CALL_TYPES: usize = 3;
const RECORDINGS: usize = 40;

/// Species with call types, recordings and noise.
struct Species {
    dim: usize,
    mixing: Vec<f32>,
    centres: Vec<Vec<f32>>,
    calls: Vec<Vec<Vec<f32>>>,
    recordings: Vec<Vec<f32>>,
    noise: f32,
}

impl Species {
    fn new(species: usize, dim: usize) -> Species {
        let mut rng = Rng(2026);
        let scale = 1.0 / (LATENT as f32).sqrt();
        let mixing = (0..dim * LATENT).map(|_| scale * rng.normal()).collect();
        let mut vector = |s: f32| (0..LATENT).map(|_| s * rng.normal()).collect::<Vec<f32>>();
        let centres = (0..species).map(|_| vector(1.0)).collect();
        let calls = (0..species).map(|_| (0..CALL_TYPES).map(|_| vector(0.6)).collect()).collect();
        let recordings = (0..RECORDINGS).map(|_| vector(arg("--recording", 1.0))).collect();
        Species { dim, mixing, centres, calls, recordings, noise: arg("--noise", 1.2) }
    }

    /// Segment `i`: its species and its embedding.
    fn segment(&self, i: usize) -> (usize, Vec<f32>) {
        let mut rng = Rng(0x5eed ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
        let species = rng.next() as usize % self.centres.len();
        let call = &self.calls[species][rng.next() as usize % CALL_TYPES];
        let recording = &self.recordings[rng.next() as usize % RECORDINGS];
        let z: Vec<f32> = (0..LATENT)
            .map(|j| self.centres[species][j] + call[j] + recording[j] + self.noise * rng.normal())
            .collect();
        let mut x: Vec<f32> = self
            .mixing
            .chunks_exact(LATENT)
            .map(|a| a.iter().zip(&z).map(|(a, z)| a * z).sum::<f32>() + 0.06 * rng.normal())
            .collect();
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        x.iter_mut().for_each(|v| *v /= norm);
        debug_assert_eq!(x.len(), self.dim);
        (species, x)
    }
}

fn index_config() -> IndexConfig {
    IndexConfig { m: 32, ef_construction: 200, shard_max_points: 1 << 30, ..Default::default() }
}

/// An index, each point's neighbours, and the seconds taken to build and to search.
type Graph = (SpaceIndex, Vec<Vec<(u64, f32)>>, f64, f64);

/// Builds an index of `vectors` (ids are positions) and the neighbours each found for itself, as the job does.
fn index_with_neighbours(dir: &std::path::Path, vectors: &[Vec<f32>], k: usize) -> Graph {
    let params = index_config().build(std::path::Path::new("/")).unwrap();
    let mut index = SpaceIndex::new(dir, &params, vectors[0].len());
    let info = PointInfo { sensor: "s".into(), start_micros: 0 };
    let points: Vec<(SegmentId, PointInfo, &[f32])> =
        vectors.iter().enumerate().map(|(i, v)| (SegmentId(i as u64), info.clone(), v.as_slice())).collect();
    let started = Instant::now();
    index.insert_many(&points, 0).unwrap();
    let built = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let found = neighbours(&index, vectors, 0, k);
    (index, found, built, started.elapsed().as_secs_f64())
}

/// Each new segment's `k` nearest others by the index, at a beam of one and a half times the neighbours wanted (at
/// least 16): an approximation of the job's exact search among the segments its refinement holds
/// (`refine::knn::nearest`, measured by `exact_search`), which keeps this bench's graphs of 100 000 segments quick.
fn neighbours(index: &SpaceIndex, vectors: &[Vec<f32>], first_id: usize, k: usize) -> Vec<Vec<(u64, f32)>> {
    let filter = Filter::default();
    let ef = arg("--search-ef", (3 * (k + 1) / 2).max(16));
    vectors
        .par_iter()
        .enumerate()
        .map(|(i, v)| {
            let request = Request { vector: v, k: k + 1, ef, filter: &filter };
            let found = index.search(&request, 0).unwrap();
            found.into_iter().filter(|(id, _)| id.0 != (first_id + i) as u64).map(|(id, d)| (id.0, d)).collect()
        })
        .collect()
}

/// Refines `vectors` with their `found` neighbours in one round, applying `labels` (node, species) first; returns
/// what came out.
fn refine_once(
    params: &RefineParams,
    vectors: &[Vec<f32>],
    found: &[Vec<(u64, f32)>],
    labels: &[(u64, String)],
) -> Refinements {
    let (params, vectors, found, labels) = (params.clone(), vectors.to_vec(), found.to_vec(), labels.to_vec());
    timely::execute_directly(move |worker| {
        let mut refiner = Refiner::new(worker, &params);
        for (i, v) in vectors.iter().enumerate() {
            refiner.add(i as u64, v, &found[i]);
        }
        for (node, label) in &labels {
            refiner.label(*node, Some(label.clone())).expect("species labels have distinct ids");
        }
        let last = refiner.close();
        worker.step_while(|| !refiner.settled(last));
        let mut state = Refinements::default();
        if let Some((_, _, changes)) = refiner.take() {
            state.apply(&changes);
        }
        state
    })
}

/// Accuracy of nearest-neighbour (1-NN) and majority-vote 10-NN classification of `test` against `reference`, by
/// brute force.
fn knn_accuracy(vectors: &[Vec<f32>], species: &[usize], reference: &[usize], test: &[usize]) -> (f64, f64) {
    let (one, ten): (usize, usize) = test
        .par_iter()
        .map(|&t| {
            let mut best: Vec<(f64, usize)> =
                reference.iter().map(|&r| (f32::dot(&vectors[t], &vectors[r]).unwrap_or(0.0), species[r])).collect();
            best.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
            best[..10].sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut votes: HashMap<usize, usize> = HashMap::new();
            for (_, s) in &best[..10] {
                *votes.entry(*s).or_default() += 1;
            }
            let vote = votes.into_iter().max_by_key(|(s, n)| (*n, usize::MAX - s)).map(|(s, _)| s);
            (usize::from(best[0].1 == species[t]), usize::from(vote == Some(species[t])))
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    (one as f64 / test.len() as f64, ten as f64 / test.len() as f64)
}

fn peak_rss_mib() -> f64 {
    support::proc_status_bytes(None, "VmHWM") as f64 / 1024.0 / 1024.0
}

fn quality(generator: &Species, n: usize, species_count: usize) {
    println!("\nquality: {n} segments of {species_count} species, {} dimensions", generator.dim);
    let (species, vectors): (Vec<usize>, Vec<Vec<f32>>) = (0..n).into_par_iter().map(|i| generator.segment(i)).unzip();
    evaluate(&species, &vectors);
}

/// Windows of real audio: each "species" is one second of the sample recording, placed at a random offset in a 5 s
/// window with a random gain over background noise of a random level, with a quieter second of another species
/// overlapping; embedded by the default model.
fn audio(per_class: usize) {
    let config = chorus::config::Config::load(&support::root().join("config/balanced.toml")).unwrap();
    let file = chorus_connectors::wav::WavFile::read(&support::tools().sample).expect("the sample: scripts/tools.sh");
    let chorus_connectors::wav::Samples::Int(samples) = &file.samples else { panic!("the sample is 16-bit PCM") };
    let rate = config.model.sample_rate as usize;
    assert_eq!(file.spec.sample_rate as usize, rate, "the sample is at the model's rate");
    let calls: Vec<Vec<f32>> =
        (0..10).map(|s| samples[s * rate..(s + 1) * rate].iter().map(|x| *x as f32 / 32_768.0).collect()).collect();
    let window = config.model.window as usize;
    let mut rng = Rng(77);
    let mut species = Vec::new();
    let mut windows = Vec::new();
    for i in 0..calls.len() * per_class {
        // Consecutive windows share a class, so the even (reference) and odd (held-out) halves both hold every class.
        let class = i / per_class;
        let noise = 0.002 + 0.02 * rng.uniform();
        let mut w: Vec<f32> = (0..window).map(|_| noise * rng.normal()).collect();
        let mut place = |call: &[f32], gain: f32, rng: &mut Rng| {
            let at = (rng.next() as usize) % (window - call.len());
            for (x, c) in w[at..].iter_mut().zip(call) {
                *x += gain * c;
            }
        };
        place(&calls[class], 0.3 + 0.7 * rng.uniform(), &mut rng);
        let other = (class + 1 + rng.next() as usize % (calls.len() - 1)) % calls.len();
        place(&calls[other], 0.3 * rng.uniform(), &mut rng);
        species.push(class);
        windows.push(w);
    }
    let mut embedder = chorus::search::open_embedder(&config).unwrap();
    let started = Instant::now();
    let mut vectors = Vec::new();
    for batch in windows.chunks(16) {
        let views: Vec<&[f32]> = batch.iter().map(Vec::as_slice).collect();
        for v in embedder.embed(&views).unwrap() {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            vectors.push(v.iter().map(|x| x / norm).collect::<Vec<f32>>());
        }
    }
    println!(
        "\nquality, real audio: {} windows of 10 call classes cut from the sample recording, embedded by {} in {:.1} s",
        vectors.len(),
        config.model.name,
        started.elapsed().as_secs_f64()
    );
    evaluate(&species, &vectors);
}

/// The default parameters, with label propagation's as the command line sets them (`--label-hops`,
/// `--label-restart`, `--label-top`, `--min-label-score`).
fn label_params() -> RefineParams {
    let defaults = RefineConfig::default();
    RefineConfig {
        label_hops: arg("--label-hops", defaults.label_hops),
        min_label_score: arg("--min-label-score", defaults.min_label_score),
        label_restart: arg("--label-restart", defaults.label_restart),
        label_top: arg("--label-top", defaults.label_top),
        ..defaults
    }
    .build(std::path::Path::new("."))
    .unwrap()
}

/// kNN accuracy with raw and refined embeddings, and label propagation from a few labels, on a labelled set.
fn evaluate(species: &[usize], vectors: &[Vec<f32>]) {
    let n = vectors.len();
    let species = species.to_vec();
    let defaults = RefineConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let (_index, found, built, searched) = index_with_neighbours(dir.path(), vectors, defaults.k);
    println!("  graph: index built in {built:.1} s, neighbours found in {searched:.1} s (k = {})", defaults.k);
    let reference: Vec<usize> = (0..n).filter(|i| i % 2 == 0).collect();
    let test: Vec<usize> = (0..n).filter(|i| i % 2 == 1).collect();
    let raw = knn_accuracy(vectors, &species, &reference, &test);
    println!(
        "  accuracy, raw embeddings:                  1-NN {:.2} %   10-NN vote {:.2} %",
        raw.0 * 100.0,
        raw.1 * 100.0
    );
    let compared = if flag("--skip-embeddings") { 0 } else { 2 };
    for hops in 1..=compared {
        for alpha in [0.3, 0.5, 0.7] {
            let params = RefineConfig { alpha, hops, label_hops: 1, ..Default::default() }
                .build(std::path::Path::new("."))
                .unwrap();
            let started = Instant::now();
            let state = refine_once(&params, vectors, &found, &[]);
            let took = started.elapsed().as_secs_f64();
            let refined: Vec<Vec<f32>> =
                (0..n).map(|i| state.get(i as u64).and_then(|s| s.refined()).expect("every node is refined")).collect();
            let accuracy = knn_accuracy(&refined, &species, &reference, &test);
            println!(
                "  accuracy, refined (alpha {alpha}, hops {hops}):   1-NN {:.2} % ({:+.2})   10-NN vote {:.2} % ({:+.2}); \
                 refined in {took:.1} s",
                accuracy.0 * 100.0,
                (accuracy.0 - raw.0) * 100.0,
                accuracy.1 * 100.0,
                (accuracy.1 - raw.1) * 100.0
            );
        }
    }
    let params = label_params();
    for seeds in [1, 5, 20] {
        let mut given: BTreeMap<usize, usize> = BTreeMap::new();
        let mut labels = Vec::new();
        for &r in &reference {
            let taken = given.entry(species[r]).or_default();
            if *taken < seeds {
                *taken += 1;
                labels.push((r as u64, format!("species-{}", species[r])));
            }
        }
        let state = refine_once(&params, vectors, &found, &labels);
        let correct = test
            .iter()
            .filter(|&&t| state.label(t as u64).is_some_and(|(l, _)| l == format!("species-{}", species[t])))
            .count();
        let unnormalised = test
            .iter()
            .filter(|&&t| {
                state.get(t as u64).and_then(|s| s.label()).is_some_and(|(l, _)| l == format!("species-{}", species[t]))
            })
            .count();
        println!("  (without class mass normalisation: {:.2} %)", unnormalised as f64 * 100.0 / test.len() as f64);
        let reached = test.iter().filter(|&&t| state.label(t as u64).is_some()).count();
        let accuracy = correct as f64 / test.len() as f64;
        println!(
            "  label propagation, {seeds:>2} labels per species: {:.2} % of held-out segments right ({:.1} % reached), \
             {:.1} % of supervised 1-NN, {:.1} % of supervised 10-NN",
            accuracy * 100.0,
            reached as f64 * 100.0 / test.len() as f64,
            accuracy / raw.0 * 100.0,
            accuracy / raw.1 * 100.0
        );
    }
}

fn latency(generator: &Species, n: usize, new: usize) {
    println!("\nlatency: {new} new segments into a graph of {n}, {} dimensions", generator.dim);
    let (species, vectors): (Vec<usize>, Vec<Vec<f32>>) =
        (0..n + new).into_par_iter().map(|i| generator.segment(i)).unzip();
    let params = label_params();
    // Given labels (`--labels-per-species`, default 5), so that the update also moves label scores.
    let per_species = arg("--labels-per-species", 5usize);
    let mut given: HashMap<usize, usize> = HashMap::new();
    let labels: Vec<(u64, String)> = (0..n)
        .filter(|i| {
            let taken = given.entry(species[*i]).or_default();
            *taken += 1;
            *taken <= per_species
        })
        .map(|i| (i as u64, format!("species-{}", species[i])))
        .collect();
    println!("  {} labels given ({per_species} per species)", labels.len());
    let dir = tempfile::tempdir().unwrap();
    let (index, found, built, searched) = index_with_neighbours(dir.path(), &vectors[..n], params.k);
    println!("  index of {n} built in {built:.1} s, neighbours found in {searched:.1} s");
    // Worker 0 indexes and feeds the refinement, as the job's worker owning the space does; the others (`--workers`)
    // take their share of the keys.
    let workers = arg("--workers", 1usize);
    let fed = std::sync::Mutex::new(Some((index, found, labels)));
    let reports = timely::execute(timely::Config::process(workers), move |worker| {
        let mut refiner = Refiner::new(worker, &params);
        let mut mine = if worker.index() == 0 { fed.lock().unwrap().take() } else { None };
        let mut state = Refinements::default();
        let mut settle = |worker: &mut timely::worker::Worker, refiner: &mut Refiner| {
            let round = refiner.advance();
            // Parked while waiting, so that an idle worker leaves its core to worker 0's index work.
            while !refiner.settled(round) {
                worker.step_or_park(None);
            }
            refiner.take().map_or(0, |(_, _, changes)| state.apply(&changes).len())
        };
        let started = Instant::now();
        if let Some((_, found, labels)) = &mine {
            for (i, v) in vectors[..n].iter().enumerate() {
                refiner.add(i as u64, v, &found[i]);
            }
            for (node, label) in labels {
                refiner.label(*node, Some(label.clone())).expect("species labels have distinct ids");
            }
        }
        settle(worker, &mut refiner);
        let loaded = started.elapsed().as_secs_f64();
        let info = PointInfo { sensor: "s".into(), start_micros: 0 };
        // Per phase: seconds inserting, searching and refining, in all, and the outputs this worker saw change.
        let mut phases = vec![(0.0, 0.0, 0.0, loaded, 0)];
        for rounds in [1, 10] {
            let batch = new / rounds;
            let (mut inserting, mut searching, mut refining, mut touched) = (0.0, 0.0, 0.0, 0);
            let first = n + if rounds == 1 { 0 } else { new };
            let started = Instant::now();
            for r in 0..rounds {
                let t = Instant::now();
                if let Some((index, _, _)) = &mut mine {
                    let ids = first + r * batch..first + (r + 1) * batch;
                    let arriving: Vec<Vec<f32>> = ids.clone().map(|i| vectors[i % (n + new)].clone()).collect();
                    let points: Vec<(SegmentId, PointInfo, &[f32])> = ids
                        .clone()
                        .zip(&arriving)
                        .map(|(i, v)| (SegmentId(i as u64), info.clone(), v.as_slice()))
                        .collect();
                    index.insert_many(&points, 0).unwrap();
                    inserting += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let found = neighbours(index, &arriving, ids.start, params.k);
                    searching += t.elapsed().as_secs_f64();
                    for (i, v) in ids.clone().zip(&arriving) {
                        refiner.add(i as u64, v, &found[i - ids.start]);
                    }
                }
                let t = Instant::now();
                touched += settle(worker, &mut refiner);
                refining += t.elapsed().as_secs_f64();
            }
            phases.push((inserting, searching, refining, started.elapsed().as_secs_f64(), touched));
        }
        phases
    })
    .unwrap()
    .join();
    let reports: Vec<_> = reports.into_iter().map(|r| r.unwrap()).collect();
    let touched = |phase: usize| reports.iter().map(|r| r[phase].4).sum::<usize>();
    println!("  initial refinement of {n} segments on {workers} worker(s): {:.1} s", reports[0][0].3);
    for (phase, rounds) in [(1, 1), (2, 10)] {
        let (inserting, searching, refining, total, _) = reports[0][phase];
        println!(
            "  {new} new in {rounds:>2} round(s): {total:.3} s from first insert to last refined output \
             (index insert {inserting:.3} s, neighbour search {searching:.3} s, differential {refining:.3} s); \
             {} refined outputs changed",
            touched(phase)
        );
    }
    println!("  peak memory: {:.0} MiB", peak_rss_mib());
}

/// The process's resident memory in bytes.
fn resident_bytes() -> u64 {
    support::proc_status_bytes(None, "VmRSS") as u64
}

/// The refinement's memory per segment (see the module documentation).
fn memory_per_segment(dim: usize) {
    const N: usize = 6_000;
    timely::execute_directly(move |worker| {
        let params = RefineParams::default();
        let mut rng = Rng(7);
        let mut refiner = Refiner::new(worker, &params);
        let mut state = Refinements::default();
        let mut half = 0;
        for round in 0..2 {
            for node in (round * N / 2)..((round + 1) * N / 2) {
                let v: Vec<f32> = (0..dim).map(|_| rng.uniform() - 0.5).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let unit: Vec<f32> = v.iter().map(|x| x / norm).collect();
                let found: Vec<(u64, f32)> =
                    (0..=params.k).map(|_| (rng.next() % node.max(1) as u64, rng.uniform())).collect();
                refiner.add(node as u64, &unit, &found);
                if node % 50 == 0 {
                    refiner.label(node as u64, Some(["owl", "wren", "frog"][node % 3].to_owned())).unwrap();
                }
                if node % 500 == 499 {
                    let closed = refiner.advance();
                    worker.step_while(|| !refiner.settled(closed));
                    if let Some((_, _, changes)) = refiner.take() {
                        state.apply(&changes);
                    }
                }
            }
            if round == 0 {
                half = resident_bytes();
            }
        }
        let added = resident_bytes().saturating_sub(half);
        println!("memory: {} bytes per segment held by the refinement ({N} segments, {dim}-D)", added / (N as u64 / 2));
    });
}

fn main() {
    let dim = arg("--dim", 1536usize);
    let species = arg("--species", 20usize);
    let generator = Species::new(species, dim);
    if !flag("--skip-quality") {
        quality(&generator, arg("--quality-points", 20_000usize), species);
    }
    if !flag("--skip-audio") {
        audio(arg("--per-class", 100usize));
    }
    if !flag("--skip-latency") {
        latency(&generator, arg("--points", 100_000usize), arg("--new", 1_000usize));
    }
    if !flag("--skip-memory") {
        memory_per_segment(dim);
    }
    if !flag("--skip-search") {
        exact_search(&generator);
    }
    if !flag("--skip-sliding") {
        sliding(&generator, arg("--horizon", 2_000usize), arg("--per-round", 25usize));
    }
}

/// What the refinement costs per newcomer as the horizon fills and once it is full (each newcomer then retires the
/// oldest segment): segments arrive in rounds of `per_round`, their neighbours found exactly among those held (as
/// the job does), and each round is settled before the next. Prints the differential's time per newcomer over
/// each horizon's worth of arrivals.
fn sliding(generator: &Species, horizon: usize, per_round: usize) {
    let phases = 3;
    let total = horizon * phases;
    println!(
        "\nsliding horizon: {total} segments in rounds of {per_round} through a horizon of {horizon}, {} dimensions",
        generator.dim
    );
    let vectors: Vec<Vec<f32>> = (0..total).into_par_iter().map(|i| generator.segment(i).1).collect();
    let defaults = RefineConfig::default();
    let params = RefineConfig {
        cluster_max_distance: arg("--cluster-max-distance", defaults.cluster_max_distance),
        hops: arg("--hops", defaults.hops),
        ..defaults
    }
    .build(std::path::Path::new("."))
    .unwrap();
    let per_phase = timely::execute_directly(move |worker| {
        let mut refiner = Refiner::new(worker, &params);
        let mut state = Refinements::default();
        let mut held: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
        // Per phase: seconds searching, seconds in the dataflow, outputs changed.
        let mut phases = vec![(0.0, 0.0, 0usize); phases];
        for first in (0..total).step_by(per_round) {
            let phase = &mut phases[first / horizon];
            let ids = first..(first + per_round).min(total);
            let queries: Vec<(u64, &[f32])> = ids.clone().map(|i| (i as u64, vectors[i].as_slice())).collect();
            let t = Instant::now();
            let found = refiner.nearest(held.iter().copied(), &queries, params.k);
            phase.0 += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for ((node, unit), neighbours) in queries.iter().zip(&found) {
                refiner.add(*node, unit, neighbours);
                held.push_back(*node);
                if held.len() > horizon {
                    refiner.retire(held.pop_front().expect("held"));
                }
            }
            let round = refiner.advance();
            worker.step_while(|| !refiner.settled(round));
            phase.2 += refiner.take().map_or(0, |(_, _, changes)| state.apply(&changes).len());
            phase.1 += t.elapsed().as_secs_f64();
        }
        phases
    });
    for (phase, (searching, refining, touched)) in per_phase.into_iter().enumerate() {
        let what = if phase == 0 { "filling the horizon" } else { "horizon full, each retires one" };
        println!(
            "  segments {:>6}..{:<6} ({what}): {:.2} ms per newcomer in the dataflow, {:.2} ms searching; \
             {:.1} outputs changed per newcomer",
            phase * horizon,
            (phase + 1) * horizon,
            refining * 1e3 / horizon as f64,
            searching * 1e3 / horizon as f64,
            touched as f64 / horizon as f64
        );
    }
}

/// What the job's neighbour search costs per new segment: an exact search over the segments the refinement holds,
/// for a round of 100 newcomers at several horizons.
fn exact_search(generator: &Species) {
    println!("\nneighbour search: exact over the segments held, {} dimensions, rounds of 100 newcomers", generator.dim);
    let largest = 50_000;
    let halves: Vec<Vec<f16>> =
        (0..largest + 100).into_par_iter().map(|i| knn::half(&generator.segment(i).1)).collect();
    for horizon in [2_000, 5_000, 20_000, 50_000] {
        let held: Vec<(u64, &[f16])> = (0..horizon).map(|i| (i as u64, halves[i].as_slice())).collect();
        let queries: Vec<(u64, &[f16])> = (largest..largest + 100).map(|i| (i as u64, halves[i].as_slice())).collect();
        let started = Instant::now();
        let rounds = 5;
        for _ in 0..rounds {
            std::hint::black_box(knn::nearest(&held, &queries, 10));
        }
        let per = started.elapsed().as_secs_f64() / (rounds * queries.len()) as f64;
        println!(
            "  horizon {horizon:>6}: {:.3} ms per newcomer on {} threads ({:.2} ns per comparison)",
            per * 1e3,
            rayon::current_num_threads(),
            per * 1e9 / horizon as f64
        );
    }
}
