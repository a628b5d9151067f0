//! The request deadline: every stage asks it how much time is left instead of keeping its own clock.

use std::time::{Duration, Instant};

/// The instant by which a decision must be answered, fixed at admission.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    admitted: Instant,
    budget: Duration,
}

impl Deadline {
    /// A deadline `budget` after `admitted`.
    pub fn new(admitted: Instant, budget: Duration) -> Self {
        Self { admitted, budget }
    }

    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Self::new(Instant::now(), budget)
    }

    /// When the request was admitted.
    pub fn admitted(&self) -> Instant {
        self.admitted
    }

    /// The whole budget the request was given.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Time left until the deadline; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.budget.saturating_sub(self.admitted.elapsed())
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Time since admission.
    pub fn elapsed(&self) -> Duration {
        self.admitted.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_never_goes_negative() {
        let d = Deadline::new(
            Instant::now() - Duration::from_secs(1),
            Duration::from_millis(20),
        );
        assert!(d.expired());
        assert_eq!(d.remaining(), Duration::ZERO);
        let fresh = Deadline::after(Duration::from_secs(60));
        assert!(!fresh.expired());
        assert!(fresh.remaining() > Duration::from_secs(59));
    }
}
