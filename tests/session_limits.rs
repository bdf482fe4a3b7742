//! Resource limits of a worker (rlimits): each is reported in Python's own terms when hit
//! (`MemoryError`, `OSError`) or, when the kernel ends the worker, as a clear error event;
//! the session goes on.

mod common;

use common::*;
use pyrepl3::{Event, ResourceLimits, SessionConfig};

fn with_limits(limits: ResourceLimits) -> SessionConfig {
    SessionConfig {
        limits,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_memory_limit_raises_memory_error_and_the_worker_lives_on() {
    let s = start_with(with_limits(ResourceLimits {
        memory_bytes: Some(400 << 20),
        ..Default::default()
    }))
    .await;
    let pid = s.info().await.unwrap().pid;
    let out = run(&s, "x = bytearray(1 << 30)").await;
    assert_eq!(out.error_type(), Some("MemoryError"), "{out:?}");
    assert_eq!(
        eval(&s, "len(bytearray(50 << 20))").await.as_deref(),
        Some("52428800")
    );
    assert_eq!(s.info().await.unwrap().pid, pid, "the same worker");
    assert_eq!(s.info().await.unwrap().limits.memory_bytes, Some(400 << 20));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cpu_time_limit_ends_the_worker_with_a_clear_error_and_a_fresh_one_starts() {
    let s = start_with(with_limits(ResourceLimits {
        cpu_time_secs: Some(1),
        ..Default::default()
    }))
    .await;
    let out = run(&s, "while True: pass").await;
    assert_eq!(out.error_type(), Some("CpuLimitExceeded"), "{out:?}");
    assert_eq!(eval(&s, "'usable'").await.as_deref(), Some("'usable'"));
    assert_eq!(s.info().await.unwrap().restarts, 1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn open_file_and_file_size_limits_raise_os_errors() {
    let s = start_with(with_limits(ResourceLimits {
        open_files: Some(40),
        file_size_bytes: Some(1 << 20),
        ..Default::default()
    }))
    .await;
    let files = "import errno\nkept = []\ntry:\n    for i in range(100):\n        kept.append(open(f'f{i}', 'w'))\nexcept OSError as e:\n    result = errno.errorcode[e.errno]\nfor f in kept: f.close()\nresult";
    assert_eq!(eval(&s, files).await.as_deref(), Some("'EMFILE'"));
    let size = "import errno\ntry:\n    with open('big', 'wb') as f: f.write(b'x' * (2 << 20))\nexcept OSError as e:\n    result = errno.errorcode[e.errno]\nresult";
    assert_eq!(eval(&s, size).await.as_deref(), Some("'EFBIG'"));
    s.shutdown().await.unwrap();
}

/// A pooled session gets its tenant's limits when it is handed over: set on the live worker,
/// and kept for the workers that replace it.
#[tokio::test]
async fn limits_set_on_a_live_session_apply_at_once_and_after_a_restart() {
    let s = start().await;
    assert_eq!(
        eval(&s, "len(bytearray(300 << 20))").await.as_deref(),
        Some("314572800")
    );
    let limits = ResourceLimits {
        memory_bytes: Some(200 << 20),
        ..Default::default()
    };
    s.set_limits(limits).await.unwrap();
    assert_eq!(
        run(&s, "bytearray(300 << 20)").await.error_type(),
        Some("MemoryError")
    );
    s.restart().await.unwrap();
    assert_eq!(
        run(&s, "bytearray(300 << 20)").await.error_type(),
        Some("MemoryError")
    );
    assert_eq!(s.info().await.unwrap().limits, limits);
    s.shutdown().await.unwrap();
}

/// A fork bomb meets the session's process limit (its `pids` cgroup): `fork` fails with
/// EAGAIN, and the session goes on.
#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_process_limit() {
    let s = start_with(with_limits(ResourceLimits {
        processes: Some(40),
        ..Default::default()
    }))
    .await;
    // In force (this needs a writable pids cgroup, as CI has: root, cgroup v1 or v2).
    assert_eq!(s.info().await.unwrap().limits.processes, Some(40));
    // Children block on a pipe and end when the parent closes it, whatever happens.
    let bomb = "import errno, os\nr, w = os.pipe()\nforked = 0\ntry:\n    for _ in range(10_000):\n        \
                if os.fork() == 0:\n            os.close(w)\n            os.read(r, 1)\n            os._exit(0)\n        \
                forked += 1\nexcept OSError as e:\n    result = (errno.errorcode[e.errno], forked < 40)\nos.close(w)\n\
                for _ in range(forked):\n    os.wait()\nresult";
    assert_eq!(eval(&s, bomb).await.as_deref(), Some("('EAGAIN', True)"));
    assert_eq!(eval(&s, "'alive'").await.as_deref(), Some("'alive'"));
    s.shutdown().await.unwrap();
}

/// Ending a session ends every process it started, also one in a session of its own
/// (`setsid`), which the group kill does not reach.
#[tokio::test]
async fn a_setsid_child_does_not_outlive_its_session() {
    let s = start().await;
    let pid = eval(
        &s,
        "import subprocess\nsubprocess.Popen(['sleep', '300'], start_new_session=True).pid",
    )
    .await
    .unwrap();
    let pid: u32 = pid.parse().unwrap();
    s.shutdown().await.unwrap();
    assert!(
        wait_pid_exit(pid, std::time::Duration::from_secs(5)).await,
        "the setsid child outlived its session"
    );
}

/// The session's memory in all (its memory cgroup): past it the kernel's OOM killer ends the
/// worker, and the execution says why, naming the limit; a fresh worker starts.
#[tokio::test]
async fn a_session_over_its_memory_limit_ends_with_memory_limit_exceeded() {
    let s = start_with(with_limits(ResourceLimits {
        session_memory_bytes: Some(150 << 20),
        ..Default::default()
    }))
    .await;
    // In force (this needs a writable memory cgroup, as CI has).
    assert_eq!(
        s.info().await.unwrap().limits.session_memory_bytes,
        Some(150 << 20)
    );
    // Resident memory: every page written.
    let out = run(
        &s,
        "x = bytearray(400 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1",
    )
    .await;
    assert_eq!(out.error_type(), Some("MemoryLimitExceeded"), "{out:?}");
    let Event::Error {
        exception_message, ..
    } = &out.terminal
    else {
        unreachable!()
    };
    assert!(
        exception_message.contains("157286400 bytes"),
        "{exception_message}"
    );
    assert_eq!(eval(&s, "'alive'").await.as_deref(), Some("'alive'"));
    s.shutdown().await.unwrap();
}
