//! Token-bucket rate limiting with computed wake-ups (PyREPL3's pattern 6, without the sleep
//! loop). Tokens are computed on demand from the time elapsed; a caller that must wait
//! reserves its tokens at once, which fixes the instant they are due, and sleeps exactly until
//! then: one wake-up per wait. Because reservations are made in arrival order, due instants
//! are too, so waiters are served first-come first-served with no thundering herd.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// A token bucket: `rate_per_second` tokens are added per second, up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens at `updated`; negative while waiters hold reservations.
    tokens: f64,
    updated: Instant,
    metrics: RateLimitMetrics,
}

/// Counters that show the limiter is event-driven: `wakeups == waits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RateLimitMetrics {
    /// Calls that got their tokens (at once or after waiting).
    pub acquires: u64,
    /// Calls that had to wait.
    pub waits: u64,
    /// Timer wake-ups of waiting calls (one per wait that was not cancelled).
    pub wakeups: u64,
    /// Waits abandoned (the caller's future was dropped); their tokens were given back.
    pub cancelled: u64,
    /// Total time callers spent waiting, in seconds.
    pub total_wait_secs: f64,
    /// `try_acquire` calls refused.
    pub rejected: u64,
}

/// Why an acquire cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateLimitError {
    #[error("asked for {asked} tokens but the burst is {burst}: it could never be granted")]
    ExceedsBurst { asked: u32, burst: u32 },
}

impl RateLimiter {
    /// `rate_per_second` must be positive and `burst` at least 1; smaller values are raised to
    /// the smallest usable ones (a limiter that never grants would hang its callers).
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        let rate_per_second = if rate_per_second.is_finite() && rate_per_second > 0.0 {
            rate_per_second
        } else {
            f64::MIN_POSITIVE
        };
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate_per_second,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                updated: Instant::now(),
                metrics: RateLimitMetrics::default(),
            }),
        }
    }

    pub fn rate_per_second(&self) -> f64 {
        self.rate_per_second
    }

    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        crate::sync::lock_unpoisoned(&self.state)
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_second).min(self.burst);
        bucket.updated = now;
    }

    /// Takes one token if one is available now, without waiting and without jumping ahead of
    /// callers that are already waiting.
    pub fn try_acquire(&self) -> bool {
        let mut bucket = self.lock();
        self.refill(&mut bucket, Instant::now());
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.metrics.acquires += 1;
            true
        } else {
            bucket.metrics.rejected += 1;
            false
        }
    }

    /// How long a `try_acquire` that just failed should wait before a token is free (for
    /// `Retry-After`).
    pub fn time_until_available(&self) -> Duration {
        let mut bucket = self.lock();
        self.refill(&mut bucket, Instant::now());
        let missing = 1.0 - bucket.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            crate::time::clamped_duration(missing / self.rate_per_second)
        }
    }

    pub async fn acquire(&self) {
        // One token never exceeds a burst of at least 1.
        let _ = self.acquire_n(1).await;
    }

    /// Waits until `n` tokens are granted. Cancellation-safe: dropping the future before it
    /// completes gives its reserved tokens back.
    pub async fn acquire_n(&self, n: u32) -> Result<(), RateLimitError> {
        let Some(due) = self.reserve(n)? else {
            return Ok(());
        };
        let mut reservation = Reservation {
            limiter: self,
            tokens: f64::from(n),
            done: false,
        };
        let started = Instant::now();
        // not polling: one sleep until the instant this reservation's tokens are due.
        tokio::time::sleep_until(due).await;
        reservation.done = true;
        let mut bucket = self.lock();
        bucket.metrics.wakeups += 1;
        bucket.metrics.total_wait_secs += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Takes `n` tokens now, going into debt if needed. Returns `None` when they were
    /// available, else the instant the debt is paid: the caller may proceed then. For callers
    /// that cannot await (the session actor pauses a pipe until then).
    pub fn reserve(&self, n: u32) -> Result<Option<Instant>, RateLimitError> {
        let asked = f64::from(n);
        if asked > self.burst {
            return Err(RateLimitError::ExceedsBurst {
                asked: n,
                burst: self.burst(),
            });
        }
        let now = Instant::now();
        let mut bucket = self.lock();
        self.refill(&mut bucket, now);
        bucket.tokens -= asked;
        bucket.metrics.acquires += 1;
        if bucket.tokens >= 0.0 {
            return Ok(None);
        }
        bucket.metrics.waits += 1;
        let debt = -bucket.tokens;
        Ok(Some(crate::time::deadline(
            now,
            crate::time::clamped_duration(debt / self.rate_per_second),
        )))
    }

    pub fn metrics(&self) -> RateLimitMetrics {
        self.lock().metrics
    }
}

/// Gives a waiter's tokens back if its wait is abandoned.
struct Reservation<'a> {
    limiter: &'a RateLimiter,
    tokens: f64,
    done: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut bucket = self.limiter.lock();
            bucket.tokens += self.tokens;
            bucket.metrics.acquires -= 1;
            bucket.metrics.cancelled += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn grants_rate_times_time_plus_burst() {
        let limiter = RateLimiter::new(50.0, 10);
        let start = Instant::now();
        let end = start + Duration::from_secs(2);
        let mut granted = 0u64;
        loop {
            limiter.acquire().await;
            if Instant::now() > end {
                break;
            }
            granted += 1;
        }
        let expected = 50.0 * 2.0 + 10.0;
        assert!(
            (granted as f64 - expected).abs() <= 1.0,
            "granted {granted}, expected {expected}"
        );
        let m = limiter.metrics();
        assert_eq!(m.wakeups, m.waits, "exactly one wake-up per wait");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let limiter = Arc::new(RateLimiter::new(10.0, 1));
        limiter.acquire().await; // empty the bucket
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let limiter = limiter.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                limiter.acquire().await;
                order.lock().unwrap().push(i);
            }));
            // Let task i register before task i+1.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
        let m = limiter.metrics();
        assert_eq!(m.waits, 20);
        assert_eq!(m.wakeups, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_gives_its_tokens_back() {
        let limiter = RateLimiter::new(1.0, 5);
        limiter.acquire_n(5).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), limiter.acquire_n(5)).await;
        assert!(waiting.is_err(), "could not have been granted yet");
        // Had the 5 tokens stayed reserved, this would need 10 s instead of 5.
        let t0 = Instant::now();
        limiter.acquire_n(5).await.unwrap();
        let waited = t0.elapsed();
        assert!(waited <= Duration::from_millis(4950), "{waited:?}");
        assert_eq!(limiter.metrics().cancelled, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_does_not_jump_the_queue_and_oversized_asks_fail() {
        let limiter = Arc::new(RateLimiter::new(1.0, 1));
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        assert_eq!(limiter.time_until_available(), Duration::from_secs(1));
        assert!(matches!(
            limiter.acquire_n(2).await,
            Err(RateLimitError::ExceedsBurst { .. })
        ));
    }
}
