//! Time, in one place: durations and deadlines from numbers a user, a config file or a worker
//! supplied, without the overflow panics of `Duration::from_secs_f64(1e30)` or
//! `Instant + Duration::MAX`; wall-clock Unix time; and the "sleep until an optional
//! deadline" future that every `select!` with a deadline arm uses.

use std::time::Duration;

use tokio::time::Instant;

/// Longest duration accepted anywhere (about 31 years): "practically never".
pub const MAX_SECS: f64 = 1e9;

/// `secs` as a duration, if it is a finite, non-negative number of at most [`MAX_SECS`].
pub fn duration_from_secs(secs: f64) -> Option<Duration> {
    (secs.is_finite() && (0.0..=MAX_SECS).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// `secs` as a duration, clamped into `0..=MAX_SECS` (NaN: zero). For values that are not
/// the caller's to refuse (a worker's report, a computed wait).
pub fn clamped_duration(secs: f64) -> Duration {
    if secs.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(secs.clamp(0.0, MAX_SECS))
}

/// `from + after`, saturating at `MAX_SECS` from `from` instead of overflowing.
pub fn deadline(from: Instant, after: Duration) -> Instant {
    let capped = after.min(Duration::from_secs_f64(MAX_SECS));
    from.checked_add(capped).unwrap_or(from)
}

/// Seconds since the Unix epoch (0.0 if the clock is before it), for timestamps shown to
/// clients.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Sleeps until `at`, or forever when there is no deadline: the timer arm of a `select!`
/// whose deadline may be absent (then another arm, a notification, re-arms it).
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        // not polling: one timer for the one deadline; none at all without a deadline.
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_numbers_never_panic() {
        assert_eq!(duration_from_secs(1e30), None);
        assert_eq!(duration_from_secs(-1.0), None);
        assert_eq!(duration_from_secs(f64::NAN), None);
        assert_eq!(duration_from_secs(2.5), Some(Duration::from_millis(2500)));
        assert_eq!(clamped_duration(1e300), Duration::from_secs(1_000_000_000));
        assert_eq!(clamped_duration(f64::NAN), Duration::ZERO);
        let now = Instant::now();
        assert!(deadline(now, Duration::MAX) > now);
    }
}
