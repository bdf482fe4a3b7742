//! `pyrepl3 mcp`: the Model Context Protocol tools (`crate::mcp`) over stdio, for a local
//! AI agent. The tools act on a service of this process with one tenant (the local user):
//! its sessions (each an isolated worker whose variables persist) and its checkpoints (in a
//! store in memory) end with the process. stdout carries the protocol only: logs go to
//! stderr.

use std::time::Duration;

use rmcp::ServiceExt;

use super::McpArgs;
use crate::mcp::{CallerSource, PythonTools, MAX_NAMED_SESSIONS};
use crate::service::{Service, ServiceConfig, TenantConfig};
use crate::{PoolConfig, SessionConfig};

/// Sessions idle this long are still kept: the agent decides when a session ends (a year,
/// not "never", because the service counts idle deadlines as instants).
const IDLE_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

fn service_config(args: &McpArgs) -> ServiceConfig {
    let mut session = SessionConfig {
        python: args.python.clone(),
        ..SessionConfig::default()
    };
    args.sandbox.apply(&mut session);
    let token = uuid::Uuid::new_v4().to_string();
    ServiceConfig {
        tenants: vec![TenantConfig {
            name: "local".into(),
            token,
            max_sessions: MAX_NAMED_SESSIONS,
            // One agent's calls: no rate to limit.
            rate_per_second: 1e6,
            burst: 1_000_000,
            idle_timeout_secs: IDLE_TIMEOUT_SECS,
            ..TenantConfig::default()
        }],
        pool: PoolConfig {
            // Sessions start on first use, as the agent asks for them.
            min_idle: 0,
            max_sessions: MAX_NAMED_SESSIONS,
            recycle_after_executions: None,
            session,
            ..PoolConfig::default()
        },
        max_code_bytes: 16 << 20,
        reconnect_grace: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(2),
        bounds: Default::default(),
        store: Some(":memory:".into()),
    }
}

pub async fn run(args: McpArgs) -> i32 {
    let config = service_config(&args);
    let token = config.tenants[0].token.clone();
    let service = match Service::start(config).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!("pyrepl3 mcp: {e}");
            return 2;
        }
    };
    let caller = match service.authenticate(Some(&token)) {
        Ok(caller) => caller,
        Err(e) => {
            eprintln!("pyrepl3 mcp: {e}");
            return 2;
        }
    };
    let tools = PythonTools::new(service.clone(), CallerSource::Fixed(caller));
    let status = match tools.serve(rmcp::transport::stdio()).await {
        Ok(served) => match served.waiting().await {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("pyrepl3 mcp: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("pyrepl3 mcp: {e}");
            2
        }
    };
    // The client went away: every session's worker ends with this process.
    service.shut_down().await;
    if let Err(e) = service.close().await {
        eprintln!("pyrepl3 mcp: {e}");
    }
    status
}
