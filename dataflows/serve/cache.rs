//! The API's answer cache: a least-recently-used map of answers, keyed by the query and the generations of the
//! spaces it searched.

use std::collections::HashMap;

use crate::search::Answer;

/// A least-recently-used map of answers by key.
pub(super) struct Cache {
    capacity: usize,
    tick: u64,
    entries: HashMap<u64, (u64, Vec<Answer>)>,
}

impl Cache {
    pub(super) fn new(capacity: usize) -> Cache {
        Cache { capacity, tick: 0, entries: HashMap::new() }
    }

    pub(super) fn get(&mut self, key: u64) -> Option<Vec<Answer>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&key).map(|(used, answers)| {
            *used = tick;
            answers.clone()
        })
    }

    pub(super) fn put(&mut self, key: u64, answers: Vec<Answer>) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        if self.entries.len() >= self.capacity
            && !self.entries.contains_key(&key)
            && let Some(oldest) = self.entries.iter().min_by_key(|(_, (used, _))| *used).map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (self.tick, answers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_evicts_the_least_recently_used_answer() {
        let answer = |q: &str| vec![Answer { query: q.into(), hits: Vec::new() }];
        let mut cache = Cache::new(2);
        cache.put(1, answer("a"));
        cache.put(2, answer("b"));
        assert!(cache.get(1).is_some());
        cache.put(3, answer("c"));
        assert!(cache.get(2).is_none(), "2 was least recently used");
        assert!(cache.get(1).is_some() && cache.get(3).is_some());
        let mut off = Cache::new(0);
        off.put(1, answer("a"));
        assert!(off.get(1).is_none());
    }
}
