//! The service's rules, checked without any transport (real Python workers).

use std::time::Duration;

use super::*;

const ALICE: &str = "alice-token-0001";
const BOB: &str = "bob-token-000002";

async fn start(shutdown_grace: Duration) -> Service {
    start_with(shutdown_grace, Bounds::default()).await
}

async fn start_with(shutdown_grace: Duration, bounds: Bounds) -> Service {
    let tenant = |name: &str, token: &str| TenantConfig {
        name: name.into(),
        token: token.into(),
        max_sessions: 1,
        ..TenantConfig::default()
    };
    Service::start(ServiceConfig {
        tenants: vec![tenant("alice", ALICE), tenant("bob", BOB)],
        pool: PoolConfig {
            min_idle: 0,
            max_sessions: 4,
            ..PoolConfig::default()
        },
        max_code_bytes: 100,
        reconnect_grace: Duration::from_secs(30),
        shutdown_grace,
        bounds,
        store: None,
    })
    .await
    .expect("the service starts")
}

/// Every event of `reader` until the end.
async fn read_all(mut reader: Reader) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    while let Some(batch) = reader.next_batch().await {
        events.extend(batch.iter().filter_map(LoggedEvent::event));
    }
    events
}

fn request(code: &str, execution_id: Option<&str>) -> ExecuteRequest {
    ExecuteRequest {
        code: code.into(),
        timeout: None,
        execution_id: execution_id.map(str::to_string),
        transaction_policy: Default::default(),
        stdin: Vec::new(),
    }
}

#[tokio::test]
async fn tenants_limits_and_executions_follow_the_services_rules() {
    let service = start(Duration::from_secs(1)).await;
    assert!(matches!(
        service.authenticate(Some("nobody-token")),
        Err(ServiceError::Unauthorized)
    ));
    let alice = service.authenticate(Some(ALICE)).unwrap();
    let bob = service.authenticate(Some(BOB)).unwrap();
    let id = service.create_session(&alice).await.unwrap().id;
    assert!(matches!(
        service.create_session(&alice).await,
        Err(ServiceError::SessionLimit { limit: 1, .. })
    ));
    assert!(matches!(
        service.session(&bob, &id),
        Err(ServiceError::SessionNotFound { .. })
    ));
    assert!(service.list_sessions(&bob).is_empty());
    let session = service.session(&alice, &id).unwrap();

    assert!(matches!(
        session.execute(request(&"x".repeat(101), None)),
        Err(ServiceError::CodeTooLarge {
            bytes: 101,
            limit: 100
        })
    ));
    let bad_timeout = ExecuteRequest {
        timeout: Some(-1.0),
        ..request("1", None)
    };
    assert!(matches!(
        session.execute(bad_timeout),
        Err(ServiceError::InvalidTimeout { .. })
    ));

    let execution = session
        .execute(request("print('hi'); 6*7", Some("a")))
        .unwrap();
    let events = read_all(execution.follow(0)).await;
    assert!(matches!(&events[0], ClientEvent::Output { data, .. } if data == "hi\n"));
    assert!(
        matches!(&events[1], ClientEvent::Result { repr: Some(r), .. } if r == "42"),
        "{events:?}"
    );
    assert!(matches!(
        session.execute(request("1", Some("a"))),
        Err(ServiceError::DuplicateExecutionId { .. })
    ));
    let listed = session.executions();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].done && listed[0].execution_id == "a");
    assert_eq!(session.execution("a").unwrap().snapshot(1).len(), 1);
    assert!(matches!(
        session.execution("zz"),
        Err(ServiceError::ExecutionNotFound { .. })
    ));

    // The code's stdin answers input() first, then a reader with end of file.
    let execution = session
        .execute(ExecuteRequest {
            stdin: vec!["x".to_string()],
            ..request(
                "a = input()\ntry:\n    input()\nexcept EOFError:\n    a += '!'\na",
                None,
            )
        })
        .unwrap();
    let events = read_all(execution.follow_answering_eof(0)).await;
    assert!(
        matches!(events.last(), Some(ClientEvent::Result { repr: Some(r), .. }) if r == "'x!'"),
        "{events:?}"
    );
    assert!(matches!(
        session.input("nope", None).await,
        Err(ServiceError::UnknownInput { .. })
    ));

    service.delete_session(&alice, &id).unwrap();
    assert!(matches!(
        service.delete_session(&alice, &id),
        Err(ServiceError::SessionNotFound { .. })
    ));
    service.shut_down().await;
    service.close().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_what_still_runs_after_the_grace() {
    let service = start(Duration::from_millis(200)).await;
    let alice = service.authenticate(Some(ALICE)).unwrap();
    let id = service.create_session(&alice).await.unwrap().id;
    let session = service.session(&alice, &id).unwrap();
    let execution = session
        .execute(request("import time\ntime.sleep(30)", None))
        .unwrap();
    let reader = execution.follow(0);
    service.shut_down().await;
    let events = read_all(reader).await;
    assert!(
        matches!(events.last(), Some(ClientEvent::Error { exception_type, .. }) if exception_type == "ServerShutdown"),
        "{events:?}"
    );
    assert!(matches!(
        service.authenticate(Some(ALICE)),
        Err(ServiceError::ShuttingDown)
    ));
    assert!(matches!(
        session.execute(request("1", None)),
        Err(ServiceError::ShuttingDown)
    ));
    service.close().await.unwrap();
}

#[tokio::test]
async fn dropping_the_last_handle_drops_the_service_and_its_pool() {
    let service = start(Duration::from_secs(1)).await;
    let alive = Arc::downgrade(&service.inner);
    drop(service);
    // Let the culler see the change (it holds only a weak reference).
    tokio::task::yield_now().await;
    assert!(
        alive.upgrade().is_none(),
        "something still holds the service"
    );
}

#[tokio::test]
async fn finished_logs_beyond_the_services_budget_are_dropped_oldest_first_across_sessions() {
    // Each execution's log holds about 100 kB; the service keeps 250 kB of finished logs.
    let bounds = Bounds {
        retained_log_bytes_total: 250_000,
        ..Bounds::default()
    };
    let service = start_with(Duration::from_secs(1), bounds).await;
    let alice = service.authenticate(Some(ALICE)).unwrap();
    let bob = service.authenticate(Some(BOB)).unwrap();
    let a = service
        .session(&alice, &service.create_session(&alice).await.unwrap().id)
        .unwrap();
    let b = service
        .session(&bob, &service.create_session(&bob).await.unwrap().id)
        .unwrap();
    let print = "print('x' * 100_000)";
    // a1's reader stays attached without reading: a live stream is dropped last.
    let held = a.execute(request(print, Some("a1"))).unwrap().follow(0);
    for (session, id) in [(&a, "a2"), (&b, "b1"), (&b, "b2")] {
        let execution = session.execute(request(print, Some(id))).unwrap();
        read_all(execution.follow(0)).await;
    }
    // One more execution applies the budget to everything finished so far.
    read_all(b.execute(request("1", Some("b3"))).unwrap().follow(0)).await;
    assert!(matches!(
        a.execution("a2"),
        Err(ServiceError::ExecutionExpired { .. })
    ));
    assert!(matches!(
        b.execution("b1"),
        Err(ServiceError::ExecutionExpired { .. })
    ));
    assert!(b.execution("b2").is_ok() && b.execution("b3").is_ok());
    assert!(matches!(
        a.execution("never"),
        Err(ServiceError::ExecutionNotFound { .. })
    ));
    // The held stream was kept whole.
    let events = read_all(held).await;
    assert!(
        matches!(events.last(), Some(ClientEvent::Result { .. })),
        "{events:?}"
    );
    // Once read, it is the oldest, but a reader that resumed it and is behind again keeps it
    // (never an ExecutionExpired in place of its result): over the budget, the next oldest
    // goes instead.
    let late = a.execution("a1").unwrap().follow(0);
    read_all(b.execute(request(print, Some("b4"))).unwrap().follow(0)).await;
    read_all(b.execute(request("1", Some("b5"))).unwrap().follow(0)).await;
    assert!(a.execution("a1").is_ok(), "kept for the reader behind");
    assert!(matches!(
        b.execution("b2"),
        Err(ServiceError::ExecutionExpired { .. })
    ));
    let events = read_all(late).await;
    assert!(
        matches!(events.last(), Some(ClientEvent::Result { .. })),
        "{events:?}"
    );
    // Read, it is the oldest again, and goes first.
    read_all(b.execute(request(print, Some("b6"))).unwrap().follow(0)).await;
    assert!(matches!(
        a.execution("a1"),
        Err(ServiceError::ExecutionExpired { .. })
    ));
    assert!(b.execution("b6").is_ok());
    service.shut_down().await;
    service.close().await.unwrap();
}

#[tokio::test]
async fn a_sessions_queue_is_capped() {
    let bounds = Bounds {
        max_queued_executions: 2,
        ..Bounds::default()
    };
    let service = start_with(Duration::from_secs(1), bounds).await;
    let alice = service.authenticate(Some(ALICE)).unwrap();
    let a = service
        .session(&alice, &service.create_session(&alice).await.unwrap().id)
        .unwrap();
    let running = a.execute(request("input()", Some("r"))).unwrap();
    let queued: Vec<_> = (0..2)
        .map(|i| a.execute(request("1", Some(&format!("q{i}")))).unwrap())
        .collect();
    assert!(matches!(
        a.execute(request("1", None)),
        Err(ServiceError::QueueFull { limit: 2, .. })
    ));
    read_all(running.follow_answering_eof(0)).await;
    for q in queued {
        read_all(q.follow(0)).await;
    }
    assert!(a.execute(request("1", None)).is_ok(), "room again");
    service.shut_down().await;
    service.close().await.unwrap();
}

#[tokio::test]
async fn retention_never_takes_a_result_from_a_reader_that_is_behind() {
    // More executions listed than a session keeps (32 finished), each followed from the
    // moment it is accepted by a reader that reads nothing until all have run (a WebSocket
    // writer busy with an earlier execution): every reader still gets its result.
    let bounds = Bounds {
        retained_log_bytes_per_session: 50_000,
        ..Bounds::default()
    };
    let service = start_with(Duration::from_secs(1), bounds).await;
    let alice = service.authenticate(Some(ALICE)).unwrap();
    let a = service
        .session(&alice, &service.create_session(&alice).await.unwrap().id)
        .unwrap();
    let block = a.execute(request("input()", Some("block"))).unwrap();
    let readers: Vec<Reader> = (0..45)
        .map(|i| {
            let code = "print('x' * 10_000)";
            a.execute(request(code, Some(&format!("q{i}"))))
                .unwrap()
                .follow(0)
        })
        .collect();
    read_all(block.follow_answering_eof(0)).await;
    let mut readers = readers.into_iter();
    // The last one's end means all have ended (one after the other).
    let last = read_all(readers.next_back().unwrap()).await;
    assert!(matches!(last.last(), Some(ClientEvent::Result { .. })));
    // 45 finished, each 10 kB past a 50 kB budget: none was expired under its reader.
    assert!(a.execution("q0").is_err(), "unlisted beyond the count");
    for (i, reader) in readers.enumerate() {
        let events = read_all(reader).await;
        assert!(
            matches!(
                events.as_slice(),
                [ClientEvent::Output { .. }, ClientEvent::Result { .. }]
            ),
            "q{i}: {events:?}"
        );
    }
    // Once read, the budget applies again: the session keeps at most 50 kB of logs (the
    // newest that were not dropped while older ones were held for their readers).
    let kept = a.executions();
    assert!(kept.len() <= 5, "{} logs kept", kept.len());
    let ids: Vec<&str> = kept.iter().map(|e| e.execution_id.as_str()).collect();
    assert!(
        ids.iter()
            .all(|id| id.starts_with('q') && id[1..].parse::<u32>().unwrap() >= 35),
        "{ids:?}"
    );
    service.shut_down().await;
    service.close().await.unwrap();
}
