//! The one retry policy of twill: the lease core's lost races and registry
//! errors, the lease manager's wait for a config, and the etcd watch's
//! reconnects all wait [`RetryPolicy::delay`].

use std::time::Duration;

/// How long to wait between retries: exponential from `initial` to `max`,
/// each delay jittered uniformly within `[delay / 2, delay]` so agents that
/// collided do not collide again.
///
/// Pure: it reads no clock and draws no random numbers; the caller counts
/// the attempts and brings the jitter (a number in `[0, 1]`).
///
/// ```
/// use std::time::Duration;
/// use twill_subnet::RetryPolicy;
/// let p = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));
/// assert_eq!(p.step(1), Duration::from_millis(100));
/// assert_eq!(p.step(3), Duration::from_millis(400));
/// assert_eq!(p.step(30), Duration::from_secs(5));
/// assert_eq!(p.delay(3, 0.0), Duration::from_millis(200));
/// assert_eq!(p.delay(3, 1.0), Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 50 ms doubling to 10 s: the lease manager's.
    fn default() -> Self {
        RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(10))
    }
}

impl RetryPolicy {
    /// From `initial` doubling to `max`.
    #[must_use]
    pub const fn new(initial: Duration, max: Duration) -> Self {
        RetryPolicy { initial, max }
    }

    /// The delay before retry number `attempt` (1 after the first failure;
    /// 0 counts as 1) without jitter: `initial * 2^(attempt - 1)`, at most
    /// `max`, at least a millisecond.
    #[must_use]
    pub fn step(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        exp.min(self.max).max(Duration::from_millis(1))
    }

    /// The delay before retry number `attempt`, jittered: `step / 2 +
    /// step / 2 * jitter`, `jitter` clamped to `[0, 1]` (draw it uniformly).
    #[must_use]
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let half = self.step(attempt) / 2;
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        // try_from: mul_f64 panics where the product rounds past Duration::MAX.
        let extra = Duration::try_from_secs_f64(half.as_secs_f64() * jitter).unwrap_or(half);
        half.saturating_add(extra.min(half))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

    #[test]
    fn doubles_from_initial_to_max() {
        let steps: Vec<u128> = (0..=8).map(|a| P.step(a).as_millis()).collect();
        assert_eq!(steps, [100, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(P.step(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        for attempt in 1..40 {
            let step = P.step(attempt);
            assert_eq!(P.delay(attempt, 0.0), step / 2);
            assert_eq!(P.delay(attempt, 1.0), step / 2 + step / 2);
            let mid = P.delay(attempt, 0.5);
            assert!(mid > step / 2 && mid < step, "{attempt}: {mid:?}");
        }
        assert_eq!(P.delay(1, -3.0), P.delay(1, 0.0));
        assert_eq!(P.delay(1, 7.0), P.delay(1, 1.0));
        assert_eq!(P.delay(1, f64::NAN), P.delay(1, 0.0));
    }

    #[test]
    fn never_zero_and_never_overflows() {
        let zero = RetryPolicy::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.step(1), Duration::from_millis(1));
        let huge = RetryPolicy::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.step(25), Duration::MAX);
        assert!(huge.delay(25, 1.0) <= Duration::MAX);
    }
}
