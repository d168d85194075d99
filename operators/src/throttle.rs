//! A rate limit for repeated log lines: a warning that can recur on every activation (a consumer error, a failed
//! commit, a run of dead letters) is logged at most once per interval. It sits in operators, the bottom crate, so
//! that connectors and jobs log alike through one helper.

use std::time::{Duration, Instant};

/// Logs a repeated warning at most once per interval.
#[derive(Debug, Default)]
pub struct Throttle(Option<Instant>);

impl Throttle {
    /// Whether to log now.
    pub fn ready(&mut self, every: Duration) -> bool {
        if self.0.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        self.0 = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_logs_and_the_next_waits_out_the_interval() {
        let mut throttle = Throttle::default();
        assert!(throttle.ready(Duration::from_secs(3_600)));
        assert!(!throttle.ready(Duration::from_secs(3_600)));
        assert!(throttle.ready(Duration::ZERO));
    }
}
