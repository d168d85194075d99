//! Search across a space's shards: the open shard and the sealed shards in memory, and those in the archive tier
//! through the cold scan, merged by distance.
//!
//! Each shard searches itself (`build.rs` the open shard with hnsw_rs, `shard.rs` a sealed one over its frozen graph);
//! this file fans a query out over them, in parallel when there are enough points to repay it, and merges the answers.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::build::OpenShard;
use super::kernels::{Tier, distance};
use super::shard::Shard;
use super::{ColdTier, Filter, unit};
use crate::Error;
use crate::record::SegmentId;

/// Below this many points in memory, one thread searches every shard.
const PARALLEL_POINTS: usize = 20_000;
/// Stands for the open shard where a candidate names the sealed shard it came from.
const FROM_OPEN: usize = usize::MAX;

/// A search in one space.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The query vector (any length-`dim` vector with a direction).
    pub vector: &'a [f32],
    /// Neighbours wanted.
    pub k: usize,
    /// Beam width.
    pub ef: usize,
    /// Which segments may answer.
    pub filter: &'a Filter,
}

/// A found point: `(id, cosine distance, the sealed shard it came from or FROM_OPEN)`.
type Candidate = (u64, f32, usize);

/// A space's shards as a query sees them.
pub(super) struct FanOut<'a> {
    /// The shard taking inserts.
    pub(super) open: &'a OpenShard,
    /// The sealed shards, in every tier.
    pub(super) sealed: &'a [Shard],
    /// Vector length.
    pub(super) dim: usize,
    /// See [`IndexParams::rescore_oversample`](super::IndexParams::rescore_oversample).
    pub(super) oversample: usize,
}

impl FanOut<'_> {
    /// The `k` nearest segments, nearest first, with cosine distances, over every shard; `cold` answers for shards
    /// in the archive tier (without it they are skipped). Shards that answer are marked used at `now`.
    pub(super) fn search(
        &self,
        request: &Request<'_>,
        cold: Option<&dyn ColdTier>,
        now: u64,
    ) -> Result<Vec<(SegmentId, f32)>, Error> {
        let query = unit(request.vector, self.dim)?;
        let mut found = self.in_memory(&query, request);
        if let Some(cold) = cold {
            self.archived(&query, request.filter, cold, &mut found)?;
        }
        let found = merge(found, request.k);
        let answered: HashSet<usize> = found.iter().map(|(_, _, shard)| *shard).collect();
        for shard in answered.into_iter().filter_map(|i| self.sealed.get(i)) {
            shard.touch(now);
        }
        Ok(found.into_iter().map(|(id, d, _)| (SegmentId(id), d)).collect())
    }

    /// The candidates of the open shard, then of each sealed shard in memory that the filter may admit.
    fn in_memory(&self, query: &[f32], request: &Request<'_>) -> Vec<Candidate> {
        let (k, ef, filter) = (request.k, request.ef, request.filter);
        let warm: Vec<(usize, &Shard)> = (self.sealed.iter().enumerate())
            .filter(|(_, s)| s.tier() != Tier::Archive && s.may_admit(filter))
            .collect();
        let in_memory = self.open.len() + warm.iter().map(|(_, s)| s.len()).sum::<usize>();
        let search_sealed = |(i, shard): &(usize, &Shard)| -> Vec<Candidate> {
            shard.search(query, k, ef, self.oversample, filter).into_iter().map(|(id, d)| (id, d, *i)).collect()
        };
        let search_open = || -> Vec<Candidate> {
            self.open.search(query, k, ef, filter).into_iter().map(|(id, d)| (id, d, FROM_OPEN)).collect()
        };
        // In parallel only when there are two searches or more to share out, and enough points to repay the handoff.
        let searches = warm.len() + usize::from(self.open.len() > 0);
        let (mut found, sealed): (Vec<_>, Vec<_>) = if in_memory >= PARALLEL_POINTS && searches >= 2 {
            rayon::join(search_open, || warm.par_iter().map(search_sealed).collect())
        } else {
            (search_open(), warm.iter().map(search_sealed).collect())
        };
        found.extend(sealed.into_iter().flatten());
        found
    }

    /// Adds the candidates of the archive-tier shards the filter may admit, from the cold scan: each archived
    /// segment one of them holds, compared exactly. Scans nothing when there is no such shard.
    fn archived(
        &self,
        query: &[f32],
        filter: &Filter,
        cold: &dyn ColdTier,
        found: &mut Vec<Candidate>,
    ) -> Result<(), Error> {
        let archived =
            || (self.sealed.iter().enumerate()).filter(|(_, s)| s.tier() == Tier::Archive && s.may_admit(filter));
        if archived().next().is_none() {
            return Ok(());
        }
        let members: HashMap<u64, usize> =
            archived().flat_map(|(i, s)| s.rows().ids.iter().map(move |id| (*id, i))).collect();
        cold.scan(filter, &mut |id, embedding| {
            if let Some(shard) = members.get(&id)
                && let Ok(vector) = unit(embedding, self.dim)
            {
                found.push((id, distance(query, &vector), *shard));
            }
        })
    }
}

/// The first `k` of `found` by distance (ties by id), where an id found again right after itself — the same point
/// in two shards, at the same distance — counts once, as its first candidate.
fn merge(mut found: Vec<Candidate>, k: usize) -> Vec<Candidate> {
    found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    found.dedup_by_key(|(id, _, _)| *id);
    found.truncate(k);
    found
}
