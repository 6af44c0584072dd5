//! A limit on how often one log line is written, for failures that can repeat for every
//! request (such as every publication while a broker is down).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Allows one line per interval and counts the lines it held back.
pub(crate) struct LogLimit {
    interval: Duration,
    /// Milliseconds since [`epoch`] before which lines are held back.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimit {
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns the number of lines held back since the last one written when this line may
    /// be written now, or `None` when it is held back.
    pub(crate) fn check(&self) -> Option<u64> {
        let now_ms = epoch().elapsed().as_millis() as u64;
        let next_ms = self.next_ms.load(Ordering::Relaxed);
        let allowed = now_ms >= next_ms
            && self
                .next_ms
                .compare_exchange(
                    next_ms,
                    now_ms + self.interval.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if allowed {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_lines_within_interval() {
        let limit = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        // Force the interval to end.
        limit.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(limit.check(), Some(2));
    }
}
