//! What a space's index is on disk: `CURRENT`, the manifest it names, and the open shard's snapshot.
//!
//! Under the space's directory, `CURRENT` names the manifest in force (`manifest-N.json`), which names the open
//! shard's snapshot (`open-N/`: hnsw_rs's dump plus `rows.bin` and `sensors.json`) and the sealed shards (`shard-N/`,
//! written once by `shard.rs`) with their tiers. A publication writes beside the old state and replaces `CURRENT`
//! atomically, then removes the previous manifest and snapshot; what no manifest names is removed when the job opens
//! the index. A `CURRENT` naming an hnsw_rs dump, from before shards, is read as a manifest with only an open shard.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};

use super::build::{OpenShard, Store};
use super::builder::Growing;
use super::config::{Construction, IndexParams};
use super::graph::{Graph, hnsw_points};
use super::kernels::Tier;
use super::policy::now_seconds;
use super::shard::Shard;
use crate::Error;
use crate::durable::{self, write_synced};

const SNAPSHOT_BASENAME: &str = "index";

/// The state of a space's index that `CURRENT` publishes.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Manifest {
    /// The open shard's snapshot, unless the open shard was empty.
    pub(super) open: Option<String>,
    /// The number the next sealed shard's name takes.
    pub(super) next_shard: u64,
    /// The sealed shards, in order.
    pub(super) shards: Vec<ShardEntry>,
}

/// A sealed shard in a [`Manifest`].
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct ShardEntry {
    /// Its directory.
    pub(super) name: String,
    /// The tier it opens into.
    pub(super) tier: Tier,
    /// See [`Shard::last_used`].
    pub(super) last_used: u64,
}

impl Manifest {
    /// Reads the manifest `CURRENT` names in `dir`, with that name; `None` when nothing is published.
    pub(super) fn read(dir: &Path) -> Result<Option<(String, Manifest)>, Error> {
        let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
        let current = match fs::read_to_string(dir.join("CURRENT")) {
            Ok(name) => name.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed(format!("cannot read CURRENT: {e}"))),
        };
        let manifest = if current.ends_with(".json") {
            let bytes = fs::read(dir.join(&current)).map_err(|e| failed(format!("cannot read {current}: {e}")))?;
            serde_json::from_slice(&bytes).map_err(|e| failed(format!("{current} is not a manifest: {e}")))?
        } else {
            // A single-graph snapshot from before shards: it becomes the open shard.
            Manifest { open: Some(current.clone()), next_shard: 1, shards: Vec::new() }
        };
        Ok(Some((current, manifest)))
    }

    /// The names in the space's directory it uses, with `current` (its own) and `CURRENT`.
    pub(super) fn names(&self, current: &str) -> HashSet<String> {
        (self.open.iter().cloned())
            .chain(self.shards.iter().map(|s| s.name.clone()))
            .chain([current.to_owned(), "CURRENT".to_owned()])
            .collect()
    }
}

/// Removes from `dir` whatever `keep` does not name: what a seal or a save cut short left behind.
pub(super) fn remove_unnamed(dir: &Path, keep: &HashSet<String>) -> Result<(), Error> {
    let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
    for entry in fs::read_dir(dir).map_err(|e| failed(e.to_string()))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let path = entry.path();
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
    Ok(())
}

/// Publishes in `dir` a manifest naming `open` and `sealed`, then removes the previous manifest and, when it is not
/// named again, the previous snapshot. The open shard's snapshot is written anew unless the shard is empty (no
/// snapshot) or `open_saved` says it is as the previous manifest's snapshot holds it (that one is named again).
pub(super) fn publish(
    dir: &Path,
    open: &OpenShard,
    open_saved: bool,
    next_shard: u64,
    sealed: &[Shard],
) -> Result<(), Error> {
    let failed = |message: String| Error::Index { path: dir.display().to_string(), message };
    fs::create_dir_all(dir).map_err(|e| failed(format!("cannot create directory: {e}")))?;
    let previous = fs::read_to_string(dir.join("CURRENT")).ok().map(|s| s.trim().to_owned());
    let sequence = previous.as_deref().and_then(sequence_of).unwrap_or(0) + 1;
    let previous_open = previous.as_deref().and_then(|p| {
        if p.ends_with(".json") {
            fs::read(dir.join(p)).ok().and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()).and_then(|m| m.open)
        } else {
            Some(p.to_owned())
        }
    });
    let open_name = if open.len() == 0 {
        None
    } else if open_saved && previous_open.is_some() {
        previous_open.clone()
    } else {
        let name = format!("open-{sequence:010}");
        write_open(&dir.join(&name), open).map_err(|e| failed(format!("cannot write snapshot: {e}")))?;
        Some(name)
    };
    let manifest = Manifest {
        open: open_name.clone(),
        next_shard,
        shards: sealed
            .iter()
            .map(|s| ShardEntry { name: s.name.clone(), tier: s.tier(), last_used: s.last_used() })
            .collect(),
    };
    let name = format!("manifest-{sequence:010}.json");
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
    write_synced(&dir.join(&name), &body).map_err(|e| failed(format!("cannot write {name}: {e}")))?;
    durable::replace(&dir.join("CURRENT"), format!("{name}\n").as_bytes())
        .map_err(|e| failed(format!("cannot publish {name}: {e}")))?;
    for old in [previous, previous_open.filter(|p| Some(p) != open_name.as_ref())].into_iter().flatten() {
        if old != name {
            let path = dir.join(&old);
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
    Ok(())
}

fn sequence_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    stem.rsplit('-').next()?.parse().ok()
}

/// The open shard's snapshot: `rows.bin` (id, sensor number, start) and `sensors.json`, with hnsw_rs's dump, or with
/// chorus's own graph: `graph.bin` (the linked rows' graph), `vectors.f32` (every row, in order) and `rows.bin` in row
/// order (the rows past the graph's are the write buffer's).
fn write_open(target: &Path, open: &OpenShard) -> std::io::Result<()> {
    let _ = fs::remove_dir_all(target);
    fs::create_dir_all(target)?;
    let (sensors, info) = open.described();
    let mut rows = Vec::with_capacity(info.len() * 20);
    let mut row = |id: u64, (sensor, start): (u32, i64)| {
        rows.extend_from_slice(&id.to_le_bytes());
        rows.extend_from_slice(&sensor.to_le_bytes());
        rows.extend_from_slice(&start.to_le_bytes());
    };
    match open.store() {
        Store::Hnsw(hnsw) => {
            hnsw.file_dump(target, SNAPSHOT_BASENAME).map_err(std::io::Error::other)?;
            for file in ["graph", "data"] {
                fs::File::open(target.join(format!("{SNAPSHOT_BASENAME}.hnsw.{file}")))?.sync_all()?;
            }
            for (id, described) in info {
                row(*id, *described);
            }
        }
        Store::Own { graph, ids } => {
            let mut out = std::io::BufWriter::new(fs::File::create(target.join("graph.bin"))?);
            graph.freeze().write(&mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            let mut out = std::io::BufWriter::new(fs::File::create(target.join("vectors.f32"))?);
            for r in 0..graph.len() as u32 {
                graph.vector(r).iter().try_for_each(|x| std::io::Write::write_all(&mut out, &x.to_le_bytes()))?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            for id in ids {
                row(*id, info[id]);
            }
        }
    }
    write_synced(&target.join("rows.bin"), &rows)?;
    write_synced(&target.join("sensors.json"), &serde_json::to_vec(sensors)?)
}

/// Reads the open shard's snapshot in `target`, whichever builder wrote it; refuses one whose vectors are not `dim`
/// long.
pub(super) fn load_open(target: &Path, params: &IndexParams, dim: usize) -> Result<OpenShard, Error> {
    let failed = |message: String| Error::Index { path: target.display().to_string(), message };
    let other_model = |found: usize| {
        failed(format!(
            "snapshot holds {found}-dimensional vectors but the model produces {dim}: it belongs to another model"
        ))
    };
    let (mut sensors, mut rows) = (Vec::new(), Vec::new());
    if let Ok(listed) = fs::read(target.join("sensors.json")) {
        sensors = serde_json::from_slice(&listed).map_err(|e| failed(format!("sensors.json: {e}")))?;
        let bytes = fs::read(target.join("rows.bin")).map_err(|e| failed(format!("rows.bin: {e}")))?;
        rows = bytes
            .chunks_exact(20)
            .map(|row| {
                let id = u64::from_le_bytes(row[0..8].try_into().expect("8 bytes"));
                let sensor = u32::from_le_bytes(row[8..12].try_into().expect("4 bytes"));
                let start = i64::from_le_bytes(row[12..20].try_into().expect("8 bytes"));
                (id, sensor, start)
            })
            .collect();
    }
    let store = if target.join("graph.bin").is_file() {
        let read =
            |file: &str| fs::read(target.join(file)).map_err(|e| failed(format!("cannot load snapshot: {file}: {e}")));
        let graph = Graph::read(&mut read("graph.bin")?.as_slice())
            .map_err(|e| failed(format!("cannot load snapshot: graph.bin: {e}")))?;
        let bytes = read("vectors.f32")?;
        if bytes.len() != rows.len() * dim * 4 {
            let per_row = bytes.len() / rows.len().max(1) / 4;
            if bytes.len() == rows.len() * per_row * 4 && per_row != dim {
                return Err(other_model(per_row));
            }
            return Err(failed(format!(
                "cannot load snapshot: vectors.f32 holds {} bytes, not {} rows of {dim}",
                bytes.len(),
                rows.len()
            )));
        }
        if graph.len() > rows.len() {
            return Err(failed(format!("cannot load snapshot: a graph of {} rows for {}", graph.len(), rows.len())));
        }
        let vectors: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let quantized = params.construction == Construction::Int8;
        let linked = &vectors[..graph.len() * dim];
        let mut own = Growing::from_graph(&graph, linked, dim, params.m, params.ef_construction, quantized);
        for vector in vectors[graph.len() * dim..].chunks_exact(dim.max(1)) {
            own.push(vector);
        }
        Store::Own { graph: own, ids: rows.iter().map(|(id, _, _)| *id).collect() }
    } else {
        // A reloaded hnsw_rs graph borrows its loader for as long as it lives; the loader is a few bytes and an open
        // shard is loaded once per process, so it is leaked to give the graph a 'static lifetime.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(target, SNAPSHOT_BASENAME)));
        let hnsw: Hnsw<'static, f32, DistDot> =
            io.load_hnsw().map_err(|e| failed(format!("cannot load snapshot: {e}")))?;
        if hnsw.get_nb_point() > 0 {
            let found = hnsw_points(&hnsw).next().map_or(dim, |p| p.get_v().len());
            if found != dim {
                return Err(other_model(found));
            }
        }
        Store::Hnsw(hnsw)
    };
    Ok(OpenShard::reloaded(store, params, sensors, rows, now_seconds()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::build::prepare;
    use crate::index::config::Builder;
    use crate::index::point::unit;
    use crate::index::tests::{info, insert_range, open_shard, open_shard_by, params, sealed_shard, search, vector};
    use crate::index::{Filter, PointInfo, SpaceIndex};
    use crate::record::SegmentId;

    /// The names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// The name `CURRENT` gives, and the manifest it names.
    fn published(dir: &Path) -> (String, Manifest) {
        Manifest::read(dir).unwrap().expect("a manifest is published")
    }

    /// A manifest naming `open` and `shards`, each as `(name, tier, last used)`.
    fn manifest(open: Option<&str>, next_shard: u64, shards: &[(&str, Tier, u64)]) -> Manifest {
        let shards = shards.iter().map(|(name, tier, last_used)| ShardEntry {
            name: name.to_string(),
            tier: *tier,
            last_used: *last_used,
        });
        Manifest { open: open.map(str::to_owned), next_shard, shards: shards.collect() }
    }

    /// The message of the error [`Manifest::read`] returns.
    fn read_error(dir: &Path) -> String {
        match Manifest::read(dir).err() {
            Some(Error::Index { message, .. }) => message,
            other => panic!("expected an index error, got {other:?}"),
        }
    }

    #[test]
    fn a_published_state_reads_back_and_an_unchanged_open_shard_keeps_its_snapshot() {
        let (dim, dir) = (8, tempfile::tempdir().unwrap());
        let open = open_shard(0..12, dim);
        let mut sealed = [sealed_shard(dir.path(), "shard-000001", 20..30, dim, 40)];
        sealed[0].set_tier(Tier::Int8).unwrap();
        publish(dir.path(), &open, false, 2, &sealed).unwrap();
        let shards = [("shard-000001", Tier::Int8, 40)];
        let (current, read) = published(dir.path());
        assert_eq!(current, "manifest-0000000001.json");
        assert_eq!(read, manifest(Some("open-0000000001"), 2, &shards));
        let mut names: Vec<String> = read.names(&current).into_iter().collect();
        names.sort();
        assert_eq!(names, listing(dir.path()));
        assert_eq!(names, ["CURRENT", "manifest-0000000001.json", "open-0000000001", "shard-000001"]);
        // The snapshot holds the open shard's points and where and when each was recorded.
        let reloaded = load_open(&dir.path().join("open-0000000001"), &params(10), dim).unwrap();
        let mut ids: Vec<u64> = reloaded.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..12).collect::<Vec<_>>());
        assert!((0..12).all(|i| reloaded.info(i) == Some(info(i))));
        // Published again unchanged, the open shard keeps its snapshot; changed, it has a new one. Each publication
        // removes the previous manifest, and the previous snapshot once no longer named.
        publish(dir.path(), &open, true, 2, &sealed).unwrap();
        let again = manifest(Some("open-0000000001"), 2, &shards);
        assert_eq!(published(dir.path()), ("manifest-0000000002.json".into(), again));
        publish(dir.path(), &open, false, 3, &sealed).unwrap();
        let anew = manifest(Some("open-0000000003"), 3, &shards);
        assert_eq!(published(dir.path()), ("manifest-0000000003.json".into(), anew));
        assert_eq!(listing(dir.path()), ["CURRENT", "manifest-0000000003.json", "open-0000000003", "shard-000001"]);
        // An empty open shard has no snapshot.
        publish(dir.path(), &OpenShard::new(&params(10), dim), false, 3, &sealed).unwrap();
        assert_eq!(published(dir.path()), ("manifest-0000000004.json".into(), manifest(None, 3, &shards)));
        assert_eq!(listing(dir.path()), ["CURRENT", "manifest-0000000004.json", "shard-000001"]);
    }

    #[test]
    fn nothing_published_reads_as_no_manifest_and_opens_an_empty_index() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Manifest::read(dir.path()).unwrap().is_none());
        assert!(Manifest::read(&dir.path().join("absent")).unwrap().is_none());
        let index = SpaceIndex::open(&dir.path().join("absent"), &params(10), 8).unwrap();
        assert!(index.is_empty());
        assert!(!dir.path().join("absent").exists(), "opening writes nothing");
    }

    #[test]
    fn a_missing_or_damaged_manifest_is_an_index_error_and_the_job_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("CURRENT"), "manifest-0000000004.json\n").unwrap();
        fs::create_dir(dir.path().join("shard-000001")).unwrap();
        assert!(read_error(dir.path()).starts_with("cannot read manifest-0000000004.json: "));
        fs::write(dir.path().join("manifest-0000000004.json"), "{ \"open\": ").unwrap();
        assert!(read_error(dir.path()).starts_with("manifest-0000000004.json is not a manifest: "));
        let before = listing(dir.path());
        assert!(matches!(SpaceIndex::open(dir.path(), &params(10), 8), Err(Error::Index { .. })));
        assert_eq!(listing(dir.path()), before);
        // A manifest naming a shard or a snapshot that is not there cannot be opened either.
        fs::remove_dir(dir.path().join("shard-000001")).unwrap();
        let manifest = r#"{ "open": "open-0000000004", "next_shard": 2, "shards": [] }"#;
        fs::write(dir.path().join("manifest-0000000004.json"), manifest).unwrap();
        assert!(matches!(SpaceIndex::open(dir.path(), &params(10), 8), Err(Error::Index { .. })));
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join("CURRENT")).unwrap();
        assert!(read_error(other.path()).starts_with("cannot read CURRENT: "));
    }

    #[test]
    fn a_current_naming_a_graph_from_before_shards_opens_it_as_the_open_shard_with_undescribed_points() {
        let (dim, dir) = (8, tempfile::tempdir().unwrap());
        let snapshot = dir.path().join("index-legacy");
        write_open(&snapshot, &open_shard_by(Builder::HnswRs, 0..6, dim)).unwrap();
        // Such a snapshot was the hnsw_rs dump alone.
        fs::remove_file(snapshot.join("rows.bin")).unwrap();
        fs::remove_file(snapshot.join("sensors.json")).unwrap();
        fs::write(dir.path().join("CURRENT"), "index-legacy\n").unwrap();
        assert_eq!(published(dir.path()), ("index-legacy".into(), manifest(Some("index-legacy"), 1, &[])));
        let mut open = load_open(&snapshot, &params(10), dim).unwrap();
        let unknown = Some(PointInfo { sensor: String::new(), start_micros: 0 });
        assert!((0..6).all(|i| open.info(i) == unknown));
        open.redescribe(3, &info(3));
        assert_eq!(open.info(3), Some(info(3)));
        // Its first publication (after an insert) writes a snapshot of the new kind and removes the old one.
        publish(dir.path(), &open, false, 1, &[]).unwrap();
        assert_eq!(listing(dir.path()), ["CURRENT", "manifest-0000000001.json", "open-0000000001"]);
        let reloaded = load_open(&dir.path().join("open-0000000001"), &params(10), dim).unwrap();
        assert_eq!((reloaded.len(), reloaded.info(3), reloaded.info(4)), (6, Some(info(3)), unknown));
    }

    #[test]
    fn a_snapshot_of_another_dimension_or_none_at_all_is_refused() {
        for builder in [Builder::Chorus, Builder::HnswRs] {
            let dir = tempfile::tempdir().unwrap();
            write_open(&dir.path().join("open-0000000001"), &open_shard_by(builder, 0..4, 8)).unwrap();
            let message = |result: Result<OpenShard, Error>| match result.err() {
                Some(Error::Index { message, .. }) => message,
                _ => panic!("expected an index error"),
            };
            let other = message(load_open(&dir.path().join("open-0000000001"), &params(10), 9));
            assert!(other.ends_with("it belongs to another model"), "{builder:?}: {other}");
            let none = message(load_open(&dir.path().join("open-0000000002"), &params(10), 8));
            assert!(none.starts_with("cannot load snapshot: "), "{builder:?}: {none}");
        }
    }

    #[test]
    fn r17_a_snapshot_of_chorus_s_graph_keeps_its_graph_and_its_write_buffer() {
        let (dim, dir) = (16, tempfile::tempdir().unwrap());
        let params = IndexParams { buffer_max_points: 1_000, ..params(10_000) };
        let mut open = OpenShard::new(&params, dim);
        let infos: Vec<PointInfo> = (0..300).map(info).collect();
        let points: Vec<(u64, &PointInfo, Vec<f32>)> =
            (0..300).map(|i| (i, &infos[i as usize], prepare(&vector(i, dim), dim).unwrap())).collect();
        open.insert(&points[..200], 0);
        assert_eq!(open.link(200), 200);
        // 100 points wait in the write buffer when the snapshot is taken.
        open.insert(&points[200..], 0);
        assert_eq!(open.buffered(), 100);
        write_open(&dir.path().join("open-0000000001"), &open).unwrap();
        let reloaded = load_open(&dir.path().join("open-0000000001"), &params, dim).unwrap();
        assert_eq!((reloaded.len(), reloaded.buffered()), (300, 100));
        assert_eq!(reloaded.ids().collect::<Vec<_>>(), open.ids().collect::<Vec<_>>(), "rows keep their order");
        assert!((0..300).all(|i| reloaded.info(i) == Some(info(i))));
        // The same graph and buffer: every search answers as before, the buffered points found by their vectors.
        for q in 0..300 {
            let query = unit(&vector(q, dim), dim).unwrap();
            let before = open.search(&query, 10, 32, &Filter::default());
            assert_eq!(reloaded.search(&query, 10, 32, &Filter::default()), before, "query {q}");
            assert_eq!(before[0].0, q);
        }
        assert_eq!(reloaded.link(usize::MAX), 100);
        assert_eq!(reloaded.buffered(), 0);
    }

    #[test]
    fn what_no_manifest_names_is_removed_and_sequence_numbers_come_from_names() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["CURRENT", "manifest-0000000002.json", "manifest-0000000001.json", "stray"] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        for name in ["open-0000000002", "open-0000000001", ".shard-000003.tmp", "shard-000001"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        let keep = ["CURRENT", "manifest-0000000002.json", "open-0000000002", "shard-000001"];
        remove_unnamed(dir.path(), &keep.iter().map(|s| s.to_string()).collect()).unwrap();
        assert_eq!(listing(dir.path()), keep);
        assert!(matches!(remove_unnamed(&dir.path().join("absent"), &HashSet::new()), Err(Error::Index { .. })));
        let sequences = ["manifest-0000000012.json", "open-0000000003", "index-legacy", "index"].map(sequence_of);
        assert_eq!(sequences, [Some(12), Some(3), None, None]);
    }

    #[test]
    fn shards_tiers_and_open_points_survive_a_reopen_and_stale_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut index = SpaceIndex::new(dir.path(), &params(40), dim);
        insert_range(&mut index, 0..100, dim);
        index.sealed[0].set_tier(Tier::Int8).unwrap();
        index.sealed[1].set_tier(Tier::Archive).unwrap();
        index.changed = true;
        index.save().unwrap();
        std::fs::create_dir(dir.path().join("shard-999999")).unwrap();

        let mut reopened = SpaceIndex::open(dir.path(), &params(40), dim).unwrap();
        assert_eq!(reopened.len(), 100);
        let tiers: Vec<Tier> = reopened.shards().iter().map(Shard::tier).collect();
        assert_eq!(tiers, [Tier::Int8, Tier::Archive]);
        assert!(!dir.path().join("shard-999999").exists());
        assert!(!reopened.insert(SegmentId(5), &info(5), &vector(5, dim), 0).unwrap());
        assert!(reopened.insert(SegmentId(100), &info(100), &vector(100, dim), 0).unwrap());
        // The open shard kept where and when its points were recorded.
        let only_s2 = Filter { sensors: vec!["s2".into()], ..Default::default() };
        let found = search(&reopened, &vector(95, dim), 3, 64, &only_s2);
        assert!(found.iter().all(|(id, _)| id.0 % 3 == 2) && found[0].0 == SegmentId(95), "{found:?}");
        reopened.save().unwrap();
        assert_eq!(SpaceIndex::open(dir.path(), &params(40), dim).unwrap().len(), 101);
        assert!(matches!(SpaceIndex::open(dir.path(), &params(40), 9), Err(Error::Index { .. })));
    }

    #[test]
    fn r13_a_reader_never_writes_and_reads_an_index_that_a_writer_keeps_republishing() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut writer = SpaceIndex::new(dir.path(), &params(5), dim);
        for i in 0..12 {
            writer.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap();
        }
        writer.save().unwrap();
        // A seal cut short leaves a directory no manifest names: the owner removes it, a reader leaves it.
        std::fs::create_dir(dir.path().join(".shard-000099.tmp")).unwrap();
        let listing = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = listing();
        let mut reader = SpaceIndex::open_read_only(dir.path(), &params(5), dim).unwrap();
        assert_eq!(reader.len(), 12);
        for i in 12..30 {
            assert!(reader.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap());
        }
        reader.maintain(1_000_000, Some(1)).unwrap();
        assert!(reader.save().is_err(), "a reader refuses to publish");
        assert_eq!(reader.len(), 30);
        assert_eq!(listing(), before, "the reader changed the directory");

        // Readers racing a writer that seals and republishes all the time always open a consistent index.
        let path = dir.path().to_path_buf();
        let writing = std::thread::spawn(move || {
            for i in 12..400 {
                writer.insert(SegmentId(i), &info(i), &vector(i, dim), 0).unwrap();
                writer.save().unwrap();
            }
        });
        let mut opened = 0;
        while !writing.is_finished() {
            let index = SpaceIndex::open_read_only(&path, &params(5), dim).unwrap();
            assert!(index.len() >= 12 && index.len() == index.points());
            opened += 1;
        }
        writing.join().unwrap();
        assert!(opened > 0);
        assert_eq!(SpaceIndex::open(&path, &params(5), dim).unwrap().len(), 400);
    }
}
