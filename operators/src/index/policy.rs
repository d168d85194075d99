//! The tier policy: when the open shard is sealed, and which tier each sealed shard belongs in.
//!
//! Decisions only, on plain figures — points, ages, hits, last uses — and the index parameters; the space
//! ([`SpaceIndex`](super::SpaceIndex)) applies them: it seals the open shard when an insert fills it and in
//! [`SpaceIndex::maintain`](super::SpaceIndex::maintain), where it also moves sealed shards between tiers by age,
//! hits and the memory budget, and publishes the result.

use std::cmp::Reverse;

use super::IndexParams;
use super::kernels::Tier;

/// Seconds between attempts to seal a full open shard after one failed.
pub(super) const SEAL_RETRY_SECONDS: u64 = 60;

impl IndexParams {
    /// The tier a shard unused for `idle` seconds belongs in, by age alone.
    pub fn tier_for_age(&self, idle: u64) -> Tier {
        let [f16, int8, archive] = self.tier_ages;
        let past = |limit: u64| limit > 0 && idle >= limit;
        if past(archive) {
            Tier::Archive
        } else if past(int8) {
            Tier::Int8
        } else if past(f16) {
            Tier::F16
        } else {
            Tier::F32
        }
    }

    /// Whether an open shard of `points` points is full: the insert that fills it seals it.
    pub(super) fn is_full(&self, points: usize) -> bool {
        points >= self.shard_max_points
    }

    /// Whether an open shard whose first point arrived at `opened_at` is old enough at `now` to be sealed.
    pub(super) fn is_due_by_age(&self, opened_at: Option<u64>, now: u64) -> bool {
        opened_at.is_some_and(|t| now.saturating_sub(t) >= self.shard_max_age.as_secs())
    }

    /// How many of `waiting` points an open shard of `points` points takes before it is full. One already full (its
    /// seal failed) takes them all: it keeps taking inserts until a seal succeeds.
    pub(super) fn room(&self, points: usize, waiting: usize) -> usize {
        let room = if self.is_full(points) { waiting } else { self.shard_max_points - points };
        room.min(waiting)
    }

    /// Where a sealed shard now in `tier` belongs at `now`, having answered `hits` queries since it last moved up
    /// and been last used at `last_used`: one tier up once `promote_after_hits` answers drew on it, otherwise the tier
    /// its age calls for — never a warmer one than it is in.
    pub(super) fn placement(&self, tier: Tier, hits: u32, last_used: u64, now: u64) -> Placement {
        if hits >= self.promote_after_hits {
            Placement { tier: tier.warmer().unwrap_or(Tier::F32), promoted: true }
        } else {
            Placement { tier: self.tier_for_age(now.saturating_sub(last_used)).max(tier), promoted: false }
        }
    }
}

/// Where [`IndexParams::placement`] puts a sealed shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Placement {
    /// The tier it belongs in.
    pub(super) tier: Tier,
    /// Moved up for its hits (or kept in f32 for them): its hits count afresh and it counts as used now.
    pub(super) promoted: bool,
}

/// Whether a seal that failed at `failed_at` is not to be tried again yet at `now`.
pub(super) fn seal_deferred(failed_at: Option<u64>, now: u64) -> bool {
    failed_at.is_some_and(|at| now < at.saturating_add(SEAL_RETRY_SECONDS))
}

/// Which of `shards`, given as `(tier, last used)`, a space over its memory budget moves one tier down next: the
/// least recently used of those still in memory and, among those last used together, the coldest (the first listed
/// of equals). `None` when every shard is in the archive tier.
pub(super) fn next_to_demote(shards: impl IntoIterator<Item = (Tier, u64)>) -> Option<usize> {
    (shards.into_iter().enumerate())
        .filter(|(_, (tier, _))| *tier != Tier::Archive)
        .min_by_key(|(_, (tier, last_used))| (*last_used, Reverse(*tier)))
        .map(|(i, _)| i)
}
