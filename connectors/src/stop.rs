//! When a source stops reading. It belongs to the job's sources as a whole, not to Kafka: a job hands the same
//! [`Stop`] to its sources, its query API and its signal handler, and any other source would stop the same way.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// When a source stops reading.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    /// Once every partition is drained and nothing arrived for this long.
    pub idle: Option<Duration>,
    /// Once this is set (by a signal handler): the job then drains, flushes and commits.
    pub requested: Arc<AtomicBool>,
}
