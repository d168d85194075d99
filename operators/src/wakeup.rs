//! Timed re-activation of an operator that keeps at most one wake-up pending.

use std::time::{Duration, Instant};

use timely::scheduling::Activator;

/// Asks timely to schedule an operator again after a delay. Calling `activate_after` on every activation would add a
/// timer each time, and each timer that fires would add another: this keeps one.
pub struct Wakeup {
    activator: Activator,
    due: Option<Instant>,
}

impl Wakeup {
    /// Wake-ups for the operator `activator` schedules.
    pub fn new(activator: Activator) -> Self {
        Wakeup { activator, due: None }
    }

    /// Schedules the operator again as soon as the worker gets to it.
    pub fn now(&self) {
        self.activator.activate();
    }

    /// Schedules the operator within `delay`, unless a wake-up at least that early is already pending.
    pub fn within(&mut self, delay: Duration) {
        let now = Instant::now();
        let at = now + delay;
        if self.due.is_some_and(|due| due > now && due <= at) {
            return;
        }
        self.activator.activate_after(delay);
        self.due = Some(at);
    }
}
