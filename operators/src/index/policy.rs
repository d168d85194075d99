//! The tier policy: when the open shard is sealed, and which tier each sealed shard belongs in.
//!
//! Decisions only, on plain figures — points, ages, hits, last uses — and the index parameters; the space
//! ([`SpaceIndex`](super::SpaceIndex)) applies them: it seals the open shard when an insert fills it and in
//! [`SpaceIndex::maintain`](super::SpaceIndex::maintain), where it also moves sealed shards between tiers by age,
//! hits and the memory budget, and publishes the result.

use std::cmp::Reverse;
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::IndexParams;
use super::kernels::Tier;

/// Seconds since the epoch.
pub fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

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
    /// and been last used at `last_used`: one tier up once `promote_after_hits` answers drew on it and the space
    /// `fits` it there (within its memory budget: a promotion the budget would undo at once is not made), otherwise
    /// the tier its age calls for — never a warmer one than it is in.
    pub(super) fn placement(
        &self,
        tier: Tier,
        hits: u32,
        last_used: u64,
        now: u64,
        fits: impl FnOnce(Tier) -> bool,
    ) -> Placement {
        let up = tier.warmer().unwrap_or(Tier::F32);
        if hits >= self.promote_after_hits && (up == tier || fits(up)) {
            Placement { tier: up, promoted: true }
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
/// least recently used of those holding vectors in memory and, among those last used together, the coldest (the
/// first listed of equals); once none holds vectors, the least recently used in the disk tier, whose graph leaves
/// memory too, with its rows. A graph is a tenth of its vectors or less, and a shard without one reads it from disk
/// at each search. `None` when every shard is in the archive tier.
pub(super) fn next_to_demote(shards: impl IntoIterator<Item = (Tier, u64)> + Clone) -> Option<usize> {
    let least_recent = |holding: fn(Tier) -> bool| {
        (shards.clone().into_iter().enumerate())
            .filter(|(_, (tier, _))| holding(*tier))
            .min_by_key(|(_, (tier, last_used))| (*last_used, Reverse(*tier)))
            .map(|(i, _)| i)
    };
    least_recent(|tier| tier < Tier::Disk).or_else(|| least_recent(|tier| tier == Tier::Disk))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::index::tests::{info, insert_range, params, search, vector};
    use crate::index::{Filter, IndexConfig, Request, Shard, SpaceIndex, TierUsage};
    use crate::record::SegmentId;

    #[test]
    fn an_open_shard_seals_when_full_or_old_and_waits_a_minute_after_a_failed_seal() {
        let params = IndexParams { shard_max_age: Duration::from_secs(100), ..params(4) };
        // Full at shard_max_points; until then it takes what fits, and once full (its seal failed) everything.
        assert!(!params.is_full(3) && params.is_full(4) && params.is_full(9));
        assert_eq!([params.room(0, 10), params.room(3, 10), params.room(0, 2)], [4, 1, 2]);
        assert_eq!([params.room(4, 10), params.room(9, 3)], [10, 3]);
        // Old once its first point is shard_max_age old; an empty shard never is, nor one opened after `now`.
        assert!(!params.is_due_by_age(None, u64::MAX));
        assert!(!params.is_due_by_age(Some(1_000), 1_099));
        assert!(params.is_due_by_age(Some(1_000), 1_100));
        assert!(!params.is_due_by_age(Some(1_000), 10));
        // A failed seal is tried again SEAL_RETRY_SECONDS later, not before.
        assert!(!seal_deferred(None, 0));
        assert!(seal_deferred(Some(1_000), 1_000) && seal_deferred(Some(1_000), 1_000 + SEAL_RETRY_SECONDS - 1));
        assert!(!seal_deferred(Some(1_000), 1_000 + SEAL_RETRY_SECONDS));
    }

    #[test]
    fn sealed_shards_age_down_by_idle_time_and_move_up_one_tier_for_their_hits() {
        let config = IndexConfig {
            f16_after_seconds: 100,
            int8_after_seconds: 200,
            archive_after_seconds: 300,
            promote_after_hits: 2,
            ..Default::default()
        };
        let params = config.build(Path::new("/")).unwrap();
        let place = |tier, hits, last_used, now| params.placement(tier, hits, last_used, now, |_| true);
        let aged = |tier| Placement { tier, promoted: false };
        let promoted = |tier| Placement { tier, promoted: true };
        // By the time since its last use (or its sealing).
        assert_eq!(place(Tier::F32, 0, 1_000, 1_099), aged(Tier::F32));
        assert_eq!(place(Tier::F32, 1, 1_000, 1_100), aged(Tier::F16));
        assert_eq!(place(Tier::F32, 0, 1_000, 1_250), aged(Tier::Int8));
        assert_eq!(place(Tier::F16, 0, 1_000, 1_300), aged(Tier::Archive));
        // Age never moves a shard up: one the budget pushed down stays down, however recently used.
        assert_eq!(place(Tier::Int8, 0, 1_000, 1_000), aged(Tier::Int8));
        assert_eq!(place(Tier::F16, 0, 2_000, 1_000), aged(Tier::F16));
        // promote_after_hits answers move it one tier up, whatever its age; a shard in f32 stays there.
        assert_eq!(place(Tier::Archive, 2, 0, 5_000), promoted(Tier::Disk));
        assert_eq!(place(Tier::Disk, 2, 0, 5_000), promoted(Tier::Int8));
        assert_eq!(place(Tier::Int8, 3, 0, 5_000), promoted(Tier::F16));
        assert_eq!(place(Tier::F32, 2, 0, 5_000), promoted(Tier::F32));
        // An age of 0 is never reached.
        let only_f16 = IndexConfig { int8_after_seconds: 0, archive_after_seconds: 0, ..config };
        let only_f16 = only_f16.build(Path::new("/")).unwrap();
        assert_eq!(only_f16.placement(Tier::F32, 0, 0, u64::MAX, |_| true), aged(Tier::F16));
        // A promotion the space has no room for is not made: the shard stays where its age puts it.
        assert_eq!(params.placement(Tier::Archive, 2, 0, 5_000, |to| to != Tier::Disk), aged(Tier::Archive));
        assert_eq!(params.placement(Tier::Int8, 2, 1_000, 1_050, |to| to != Tier::F16), aged(Tier::Int8));
        assert_eq!(params.placement(Tier::Int8, 2, 1_000, 1_050, |to| to == Tier::F16), promoted(Tier::F16));
        // Staying in f32 needs no room.
        assert_eq!(params.placement(Tier::F32, 2, 0, 5_000, |_| false), promoted(Tier::F32));
    }

    #[test]
    fn over_budget_the_least_recently_used_shard_in_memory_moves_down_first() {
        use Tier::*;
        assert_eq!(next_to_demote([(F16, 50), (F32, 10), (Int8, 30)]), Some(1));
        // Among shards last used together, the coldest; among equals, the first listed.
        assert_eq!(next_to_demote([(F32, 10), (Int8, 10), (F16, 10)]), Some(1));
        assert_eq!(next_to_demote([(F16, 10), (F16, 10)]), Some(0));
        // A shard in the archive tier holds nothing in memory to give up.
        assert_eq!(next_to_demote([(Archive, 0), (F32, 10)]), Some(1));
        assert_eq!(next_to_demote([(Archive, 0), (Archive, 5)]), None);
        assert_eq!(next_to_demote(Vec::new()), None);
        // Vectors leave memory before any graph does, however recently their shard was used.
        assert_eq!(next_to_demote([(Disk, 0), (F32, 10), (Int8, 20)]), Some(1));
        assert_eq!(next_to_demote([(Disk, 5), (Archive, 0), (Disk, 3)]), Some(2));
    }

    #[test]
    fn shards_age_down_the_tiers_fit_the_budget_and_come_back_up_when_used() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            m: 8,
            ef_construction: 32,
            shard_max_points: 50,
            shard_max_age_seconds: 100,
            f16_after_seconds: 1_000,
            int8_after_seconds: 2_000,
            archive_after_seconds: 0,
            promote_after_hits: 2,
            ..Default::default()
        };
        let params = config.build(Path::new("/")).unwrap();
        let dim = 32;
        let mut index = SpaceIndex::new(dir.path(), &params, dim);
        insert_range(&mut index, 0..120, dim);
        let tiers = |index: &SpaceIndex| index.shards().iter().map(Shard::tier).collect::<Vec<_>>();
        assert_eq!(tiers(&index), [Tier::F32, Tier::F32]);
        // The open shard (20 points) seals by age; old shards age into f16, then int8.
        assert!(index.maintain(150, None).unwrap());
        assert_eq!(tiers(&index), [Tier::F32; 3]);
        index.maintain(1_100, None).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::F16, Tier::F32]);
        index.maintain(2_050, None).unwrap();
        assert_eq!(tiers(&index), [Tier::Int8, Tier::Int8, Tier::F16]);
        // Two answers from the first shard promote it one tier.
        for _ in 0..2 {
            let found = index
                .search(&Request { vector: &vector(1, dim), k: 1, ef: 32, filter: &Filter::default() }, 2_060)
                .unwrap();
            assert_eq!(found[0].0, SegmentId(1));
        }
        index.maintain(2_070, None).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::Int8, Tier::F16]);
        // A budget just below what the space holds pushes the least recently used shard down one tier; again, the
        // next one.
        index.maintain(2_080, Some(index.reckoned_bytes() - 1)).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::Disk, Tier::F16]);
        index.maintain(2_090, Some(index.reckoned_bytes() - 1)).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::Disk, Tier::Int8]);
        let usage: HashMap<Tier, TierUsage> = index.usage().into_iter().collect();
        assert_eq!((usage[&Tier::F16].points, usage[&Tier::Disk].points, usage[&Tier::Int8].points), (50, 50, 20));
        assert!(usage[&Tier::F16].bytes_per_point() > usage[&Tier::Disk].bytes_per_point());
        let held = |tier| index.shards()[0].bytes_in(tier);
        assert!(held(Tier::F16) > held(Tier::Int8) && held(Tier::Int8) > held(Tier::Disk));
        // A shard answering every query stays where the budget put it when the budget has no room for it one tier
        // up: a promotion the budget would undo at the same maintenance is not made (it would only churn).
        let budget = index.reckoned_bytes();
        for now in 2_100..2_110 {
            let request = Request { vector: &vector(110, dim), k: 1, ef: 32, filter: &Filter::default() };
            assert_eq!(index.search(&request, now).unwrap()[0].0, SegmentId(110));
        }
        assert_eq!(index.shards()[2].hits(), 10);
        assert!(!index.maintain(2_120, Some(budget)).unwrap(), "nothing moves");
        assert_eq!(tiers(&index), [Tier::F16, Tier::Disk, Tier::Int8]);
        // Given the room, it moves up.
        index.maintain(2_130, Some(budget + index.shards()[2].bytes_in(Tier::F16))).unwrap();
        assert_eq!(tiers(&index), [Tier::F16, Tier::Disk, Tier::F16]);
        // A budget for the graphs alone: every shard's vectors leave memory, and no graph does.
        let graphs =
            index.reckoned_bytes() - index.shards().iter().map(|s| s.bytes() - s.bytes_in(Tier::Disk)).sum::<usize>();
        index.maintain(2_140, Some(graphs)).unwrap();
        assert_eq!(tiers(&index), [Tier::Disk; 3]);
        // Below that, the least recently used graph goes, with its rows: that shard is searched from its files.
        index.maintain(2_150, Some(graphs - 1)).unwrap();
        assert_eq!(tiers(&index), [Tier::Disk, Tier::Archive, Tier::Disk]);
        // A budget for the (empty) open shard at its full size and what every shard holds whatever its size: every
        // graph leaves memory.
        let fixed: usize = index.shards().iter().map(|s| s.bytes_in(Tier::Archive)).sum();
        index.maintain(2_160, Some(params.open_shard_bytes(dim) + fixed)).unwrap();
        assert_eq!(tiers(&index), [Tier::Archive; 3]);
        for i in [1, 60, 110] {
            let request = Request { vector: &vector(i, dim), k: 1, ef: 32, filter: &Filter::default() };
            assert_eq!(index.search(&request, 2_170).unwrap()[0].0, SegmentId(i));
        }
    }

    #[test]
    fn r15_a_sealed_shard_starts_in_the_warmest_tier_its_space_has_room_for() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 64;
        let mut index = SpaceIndex::new(dir.path(), &params(50), dim);
        let fill = |index: &mut SpaceIndex, from: u64| {
            insert_range(index, from..from + 50, dim);
        };
        // No budget: f32.
        fill(&mut index, 0);
        let tiers = |index: &SpaceIndex| index.shards().iter().map(Shard::tier).collect::<Vec<_>>();
        assert_eq!(tiers(&index), [Tier::F32]);
        // A margin well under the 3.2 KB between tiers, for the next shard's graph differing from the first's.
        let (first, margin) = (&index.shards()[0], 50 * dim / 2);
        let (room_for_f16, room_for_graph) = (first.bytes_in(Tier::F16) + margin, first.bytes_in(Tier::Disk) + margin);
        // Room for half-precision vectors but not full ones: f16.
        index.set_budget(Some(index.reckoned_bytes() + room_for_f16));
        fill(&mut index, 50);
        assert_eq!(tiers(&index), [Tier::F32, Tier::F16]);
        // Room for the graph alone: the disk tier.
        index.set_budget(Some(index.reckoned_bytes() + room_for_graph));
        fill(&mut index, 100);
        assert_eq!(tiers(&index), [Tier::F32, Tier::F16, Tier::Disk]);
        for i in [0, 75, 149] {
            assert_eq!(search(&index, &vector(i, dim), 1, 64, &Filter::default())[0].0, SegmentId(i));
        }
    }

    #[test]
    fn r13_a_seal_that_cannot_be_written_changes_nothing_and_is_tried_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut index = SpaceIndex::new(dir.path(), &params(4), dim);
        // A file where the seal writes its shard makes the write fail, as a full disk would.
        let blocker = dir.path().join(".shard-000001.tmp");
        std::fs::write(&blocker, b"in the way").unwrap();
        for i in 0..6 {
            assert!(index.insert(SegmentId(i), &info(i), &vector(i, dim), 10).unwrap(), "point {i} is inserted");
        }
        assert_eq!(
            (index.len(), index.points(), index.shards().len()),
            (6, 6, 0),
            "every point stays in the open shard"
        );
        let found = |index: &SpaceIndex, i: u64| search(index, &vector(i, dim), 1, 64, &Filter::default())[0].0;
        for i in 0..6 {
            assert_eq!(found(&index, i), SegmentId(i));
            assert_eq!(index.point(SegmentId(i)), Some(info(i)));
        }
        // Within a minute of the failure no seal is tried; then one is, and succeeds once the disk has room.
        std::fs::remove_file(&blocker).unwrap();
        index.insert(SegmentId(6), &info(6), &vector(6, dim), 20).unwrap();
        assert_eq!(index.shards().len(), 0);
        index.insert(SegmentId(7), &info(7), &vector(7, dim), 80).unwrap();
        assert_eq!((index.shards().len(), index.shards()[0].len(), index.len()), (1, 8, 8));
        for i in 8..12 {
            index.insert(SegmentId(i), &info(i), &vector(i, dim), 80).unwrap();
        }
        assert_eq!(index.shards().len(), 2);
        for i in 0..12 {
            assert_eq!(found(&index, i), SegmentId(i), "point {i} after the seals");
            assert_eq!(index.point(SegmentId(i)), Some(info(i)));
            assert!(index.vector(SegmentId(i)).is_some());
        }
        index.save().unwrap();
        let reopened = SpaceIndex::open(dir.path(), &params(4), dim).unwrap();
        assert_eq!((reopened.len(), reopened.points()), (12, 12));
    }
}
