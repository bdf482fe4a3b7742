//! The service's counters and their Prometheus text rendering (`GET /metrics`): executions,
//! an execution-duration histogram, errors by exception type, and, from their owners at
//! render time, the pool's gauges and counters and each tenant's rate-limit counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sync::lock_unpoisoned;

use crate::pool::PoolInfo;
use crate::ratelimit::RateLimitMetrics;
use crate::session::Event;

/// Upper bounds (seconds) of the duration histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    executions: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    /// Sum of durations in microseconds (integer, so it can be atomic).
    duration_sum_us: AtomicU64,
    /// Keyed by [`error_label`]: a bounded set, whatever names user code gives its exceptions.
    errors_by_type: Mutex<BTreeMap<&'static str, u64>>,
    http_errors_by_status: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    /// Records a terminal event.
    pub fn record(&self, terminal: &Event, wall_secs: f64) {
        self.executions.fetch_add(1, Ordering::Relaxed);
        let secs = match terminal {
            Event::Result { execution_time, .. } => execution_time.as_secs_f64(),
            _ => wall_secs,
        };
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        if let Event::Error { exception_type, .. } = terminal {
            let mut errors = lock_unpoisoned(&self.errors_by_type);
            *errors.entry(error_label(exception_type)).or_default() += 1;
        }
    }

    pub fn record_http_error(&self, status: u16) {
        let mut m = lock_unpoisoned(&self.http_errors_by_status);
        *m.entry(status).or_default() += 1;
    }

    pub fn render(
        &self,
        sessions: usize,
        pool: &PoolInfo,
        tenants: &[(String, RateLimitMetrics)],
    ) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: String| vec![(String::new(), v)];
        metric(
            "pyrepl3_executions_total",
            "counter",
            "Executions that ended (result or error).",
            plain(self.executions.load(Ordering::Relaxed).to_string()),
        );
        let mut lines = Vec::new();
        for (i, bound) in BUCKETS.iter().enumerate() {
            lines.push((
                format!("_bucket{{le=\"{bound}\"}}"),
                self.buckets[i].load(Ordering::Relaxed).to_string(),
            ));
        }
        let count = self.duration_count.load(Ordering::Relaxed);
        lines.push(("_bucket{le=\"+Inf\"}".into(), count.to_string()));
        lines.push((
            "_sum".into(),
            format!(
                "{}",
                self.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6
            ),
        ));
        lines.push(("_count".into(), count.to_string()));
        metric(
            "pyrepl3_execution_duration_seconds",
            "histogram",
            "Execution time of ended executions.",
            lines,
        );
        let errors = lock_unpoisoned(&self.errors_by_type)
            .iter()
            .map(|(t, n)| (format!("{{type=\"{}\"}}", escape(t)), n.to_string()))
            .collect();
        metric(
            "pyrepl3_execution_errors_total",
            "counter",
            "Executions that ended with an error, by exception type.",
            errors,
        );
        let http = lock_unpoisoned(&self.http_errors_by_status)
            .iter()
            .map(|(s, n)| (format!("{{status=\"{s}\"}}"), n.to_string()))
            .collect();
        metric(
            "pyrepl3_http_errors_total",
            "counter",
            "Requests answered with an error status.",
            http,
        );
        metric(
            "pyrepl3_sessions",
            "gauge",
            "Sessions held by clients.",
            plain(sessions.to_string()),
        );
        for (name, value, help) in [
            ("idle", pool.idle, "Idle warm sessions in the pool."),
            ("active", pool.active, "Pool sessions in use."),
            ("creating", pool.creating, "Pool sessions being started."),
            ("total", pool.total, "All pool sessions."),
            ("waiting", pool.waiting, "Acquires waiting for a session."),
        ] {
            metric(
                &format!("pyrepl3_pool_{name}"),
                "gauge",
                help,
                plain(value.to_string()),
            );
        }
        let m = &pool.metrics;
        for (name, value, help) in [
            ("hits", m.hits, "Acquires served from an idle session."),
            ("misses", m.misses, "Acquires that created or waited."),
            ("acquisitions", m.acquisitions, "Successful acquires."),
            ("timeouts", m.timeouts, "Acquires that timed out."),
            ("sessions_created", m.sessions_created, "Sessions started."),
            ("sessions_removed", m.sessions_removed, "Sessions removed."),
            (
                "sessions_recycled",
                m.sessions_recycled,
                "Sessions recycled.",
            ),
            (
                "sessions_restarted",
                m.sessions_restarted,
                "Workers replaced.",
            ),
            ("spawn_failures", m.spawn_failures, "Failed session starts."),
            (
                "warmup_triggers",
                m.warmup_triggers,
                "Warmup notifications.",
            ),
            (
                "warmup_iterations",
                m.warmup_iterations,
                "Warmup task wake-ups.",
            ),
            (
                "sessions_created_by_warmup",
                m.sessions_created_by_warmup,
                "Sessions started by warmup.",
            ),
            (
                "health_check_runs_event",
                m.health_check_runs_event,
                "Health checks run on a session's death.",
            ),
            (
                "health_check_runs_deadline",
                m.health_check_runs_deadline,
                "Health checks run at an idle deadline.",
            ),
            (
                "removed_by_health",
                m.removed_by_health,
                "Sessions removed by health checks.",
            ),
            (
                "removed_dead_on_release",
                m.removed_dead_on_release,
                "Sessions found dead when released.",
            ),
            (
                "timer_wakeups",
                m.timer_wakeups,
                "Timer wake-ups of the pool's tasks.",
            ),
        ] {
            metric(
                &format!("pyrepl3_pool_{name}_total"),
                "counter",
                help,
                plain(value.to_string()),
            );
        }
        metric(
            "pyrepl3_pool_hit_rate",
            "gauge",
            "Share of acquires served from idle.",
            plain(format!("{}", m.hit_rate)),
        );
        metric(
            "pyrepl3_pool_acquire_seconds_p99",
            "gauge",
            "99th percentile of recent acquire times.",
            plain(format!("{}", m.p99_acquire_secs)),
        );
        type Counter = fn(&RateLimitMetrics) -> String;
        let counters: [(&str, &str, Counter); 5] = [
            ("acquires", "Requests let through.", |r| {
                r.acquires.to_string()
            }),
            ("waits", "Requests that waited.", |r| r.waits.to_string()),
            ("wakeups", "Timer wake-ups of waiting requests.", |r| {
                r.wakeups.to_string()
            }),
            ("rejected", "Requests refused (429).", |r| {
                r.rejected.to_string()
            }),
            ("cancelled", "Waits abandoned.", |r| r.cancelled.to_string()),
        ];
        for (name, help, get) in counters {
            metric(
                &format!("pyrepl3_ratelimit_{name}_total"),
                "counter",
                help,
                tenants
                    .iter()
                    .map(|(t, r)| (format!("{{tenant=\"{}\"}}", escape(t)), get(r)))
                    .collect(),
            );
        }
        out
    }
}

/// The `type` label for an error: Python's builtin exception names and the host's own error
/// types are kept, anything else (names user code chose) is `other`. User code can raise
/// exceptions of any name; labelling by them would let one session create unbounded series.
fn error_label(exception_type: &str) -> &'static str {
    KNOWN_ERROR_TYPES
        .binary_search(&exception_type)
        .map_or("other", |i| KNOWN_ERROR_TYPES[i])
}

/// Sorted (binary search): the builtin exception classes of CPython 3.8-3.13
/// (`BaseException` subclasses in `builtins`) and the error types the host itself reports.
const KNOWN_ERROR_TYPES: [&str; 84] = [
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BadRequest",
    "BaseException",
    "BaseExceptionGroup",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "BytesWarning",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "CpuLimitExceeded",
    "DeprecationWarning",
    "EOFError",
    "EncodingWarning",
    "EnvironmentError",
    "Exception",
    "ExceptionGroup",
    "ExecutionCancelled",
    "ExecutionKilled",
    "ExecutionTimeout",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "FutureWarning",
    "GeneratorExit",
    "IOError",
    "ImportError",
    "ImportWarning",
    "IndentationError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "KeyboardInterrupt",
    "LookupError",
    "MemoryError",
    "MemoryLimitExceeded",
    "ModuleNotFoundError",
    "NameError",
    "NotADirectoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PendingDeprecationWarning",
    "PermissionError",
    "ProcessLookupError",
    "ProtocolError",
    "PythonFinalizationError",
    "RecursionError",
    "ReferenceError",
    "ResourceWarning",
    "RuntimeError",
    "RuntimeWarning",
    "ServerShutdown",
    "SessionClosed",
    "SessionDead",
    "SessionRestarted",
    "SessionShutdown",
    "StopAsyncIteration",
    "StopIteration",
    "SyntaxError",
    "SyntaxWarning",
    "SystemError",
    "SystemExit",
    "TabError",
    "TimeoutError",
    "TypeError",
    "UnboundLocalError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "UnicodeTranslateError",
    "UnicodeWarning",
    "UserWarning",
    "ValueError",
    "Warning",
    "WorkerDied",
    "WorkerKilled",
    "ZeroDivisionError",
];

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_error_types_are_sorted_so_binary_search_finds_them() {
        assert!(KNOWN_ERROR_TYPES.windows(2).all(|w| w[0] < w[1]));
        for name in KNOWN_ERROR_TYPES {
            assert_eq!(error_label(name), name);
        }
        assert_eq!(error_label("MyOwnError"), "other");
    }
}
