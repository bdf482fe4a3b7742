//! The Model Context Protocol tools (the official Rust SDK, `rmcp`), written once for both
//! transports: `pyrepl3 mcp` (stdio, `cli::mcp`) and `/mcp` of `pyrepl3 serve` (streamable
//! HTTP, `server::mcp`). This module owns the tool handler ([`PythonTools`]): its sessions
//! are a tenant's sessions of a [`Service`] (its limits, quotas, sandbox and rate limits),
//! reached through names this MCP connection gives them, and its checkpoints are that
//! tenant's. `run.rs` runs code (progress notifications, `input()` by elicitation, cancel);
//! `files.rs` moves files; `answer.rs` makes a run's events into a bounded tool answer.

mod answer;
mod elicit;
mod files;
mod run;

pub(crate) use run::MAX_TIMEOUT_SECS;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, InitializeRequestParams, InitializeResult, ProtocolVersion,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData as McpError, ServerHandler};
use serde_json::json;

use crate::service::{Caller, Service, ServiceError, SessionHandle};
use crate::sync::lock_unpoisoned as lock;

/// Names one MCP connection gives sessions at most (each name is one of the tenant's
/// sessions; the tenant's own session limit applies as well).
pub const MAX_NAMED_SESSIONS: usize = 16;
/// The longest session name.
const MAX_NAME_CHARS: usize = 64;
/// The session a tool uses when the call names none.
const DEFAULT_SESSION: &str = "default";

/// Who the tools act as.
#[derive(Clone)]
pub enum CallerSource {
    /// Always this caller (stdio: the one local tenant).
    Fixed(Caller),
    /// The caller the HTTP layer authenticated for each request (`server::mcp` puts it in
    /// the request's extensions before any MCP traffic).
    PerRequest,
}

/// The names one connection gave to sessions it made (name → session id). When the
/// connection ends (its last handle dropped: an HTTP MCP session deleted or closed when idle,
/// the stdio process ending), those sessions are closed: an agent's sessions must not
/// outlive it and hold its tenant's session limit. Not at shutdown: the service then keeps
/// its sessions (across a restart, with a store). Sessions reached by id are not closed.
struct Names {
    map: Mutex<HashMap<String, String>>,
    service: Service,
    /// Who made them: the connection's caller, once it made one.
    owner: OnceLock<Caller>,
}

impl Drop for Names {
    fn drop(&mut self) {
        let (Some(owner), false) = (self.owner.get(), self.service.is_shutting_down()) else {
            return;
        };
        // Closing forgets the session in the store, a task of the runtime: none is left
        // when the process itself is ending, and then neither are its sessions.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        for id in lock(&self.map).values() {
            // Closed elsewhere meanwhile: nothing to do.
            let _ = self.service.delete_session(owner, id);
        }
    }
}

/// The tool handler of one MCP connection (one stdio process, or one MCP session over
/// HTTP): the service, who calls, and the names this connection gave to sessions.
#[derive(Clone)]
pub struct PythonTools {
    service: Service,
    caller: CallerSource,
    /// Name → session id, at most [`MAX_NAMED_SESSIONS`]; the sessions made under them end
    /// with the connection.
    names: Arc<Names>,
    /// The tenant of the first call: an MCP session is one tenant's (another tenant's token
    /// on it is refused).
    tenant: Arc<OnceLock<String>>,
    tools: Arc<ToolRouter<PythonTools>>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SessionName {
    /// The session: a name given in this connection (by create_session or the first use of
    /// the name), or a session id of yours (e.g. one made with the REST API).
    session: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct CreateSession {
    /// The name to call the new session by in later calls. Default: "default".
    session: Option<String>,
    /// A checkpoint id (from create_checkpoint or list_checkpoints): the new session starts
    /// with that checkpoint's variables.
    from_checkpoint: Option<String>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct OptionalSession {
    /// The session (a name given in this connection, or a session id of yours). Default:
    /// "default".
    session: Option<String>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct ListCheckpoints {
    /// Only this session's checkpoints. Default: every checkpoint you have.
    session: Option<String>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct RestoreCheckpoint {
    /// The checkpoint's id ("ckpt-...").
    checkpoint_id: String,
    /// The session to restore into (made on first use). Default: "default".
    session: Option<String>,
    /// Empty the session's variables first (true), or merge the checkpoint's into them
    /// (false, the default).
    #[serde(default)]
    clear_existing: bool,
}

/// A tool's failure as the agent reads it (an answer with `isError`, not a protocol error).
fn failed(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

fn ok_text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

fn ok_json(value: &serde_json::Value) -> CallToolResult {
    ok_text(serde_json::to_string_pretty(value).unwrap_or_default())
}

#[tool_router(router = session_tools)]
impl PythonTools {
    #[tool(
        description = "Start a new Python session (an isolated worker process whose variables persist between calls) under a name, optionally from a checkpoint. run_python also starts a session on first use of a name: this tool is for starting from a checkpoint, or to know the session's id. Answers {\"session\": name, \"id\": id}."
    )]
    async fn create_session(
        &self,
        Parameters(request): Parameters<CreateSession>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = match self.caller(&context) {
            Ok(caller) => caller,
            Err(message) => return Ok(failed(message)),
        };
        let name = request.session.as_deref().unwrap_or(DEFAULT_SESSION);
        if let Err(message) = check_name(name) {
            return Ok(failed(message));
        }
        if self.existing(&caller, name).is_some() {
            return Ok(failed(format!(
                "a session named {name:?} is open already: close_session it first, or use another name"
            )));
        }
        let made = match self
            .start_session(&caller, name, request.from_checkpoint.as_deref())
            .await
        {
            Ok(made) => made,
            Err(message) => return Ok(failed(message)),
        };
        let mut answer = json!({"session": name, "id": made.0.id()});
        if let Some(report) = made.1 {
            answer["restored"] = serde_json::to_value(report).unwrap_or_default();
        }
        Ok(ok_json(&answer))
    }

    #[tool(
        description = "List your open Python sessions: [{\"session\": name in this connection or null, \"id\", \"state\", \"created_at\"}]. Sessions made elsewhere (the REST API, another connection) are listed by id; use the id as the session argument."
    )]
    async fn list_sessions(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = match self.caller(&context) {
            Ok(caller) => caller,
            Err(message) => return Ok(failed(message)),
        };
        let by_id: HashMap<String, String> = lock(&self.names.map)
            .iter()
            .map(|(name, id)| (id.clone(), name.clone()))
            .collect();
        let listed: Vec<serde_json::Value> = self
            .service
            .list_sessions(&caller)
            .into_iter()
            .map(|s| {
                json!({
                    "session": by_id.get(&s.id),
                    "id": s.id,
                    "state": s.state,
                    "created_at": s.created_at,
                })
            })
            .collect();
        Ok(ok_json(&serde_json::Value::Array(listed)))
    }

    #[tool(
        description = "Reset a session: a fresh Python process with empty variables (its files stay). Stops code running in it."
    )]
    async fn reset_session(
        &self,
        Parameters(request): Parameters<SessionName>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let handle = match self.lookup_to_work(&context, Some(&request.session)) {
            Ok((_, handle)) => handle,
            Err(message) => return Ok(failed(message)),
        };
        Ok(match handle.restart().await {
            Ok(_) => ok_text("reset"),
            Err(e) => failed(format!("could not reset the session: {e}")),
        })
    }

    #[tool(
        description = "Close a session: its process ends and its files are removed (its checkpoints stay)."
    )]
    async fn close_session(
        &self,
        Parameters(request): Parameters<SessionName>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let (caller, handle) = match self.lookup(&context, Some(&request.session)) {
            Ok(found) => found,
            Err(message) => return Ok(failed(message)),
        };
        lock(&self.names.map).retain(|_, id| id != handle.id());
        Ok(match self.service.delete_session(&caller, handle.id()) {
            Ok(()) => ok_text("closed"),
            Err(e) => failed(e.to_string()),
        })
    }

    #[tool(
        description = "Save a checkpoint of a session's variables (what can be pickled; modules are re-imported on restore) in the server's store. Answers the checkpoint's id, what was saved and what was skipped. Restore it later with restore_checkpoint, or start a session from it with create_session."
    )]
    async fn create_checkpoint(
        &self,
        Parameters(request): Parameters<OptionalSession>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let (caller, handle) = match self.lookup_to_work(&context, request.session.as_deref()) {
            Ok(found) => found,
            Err(message) => return Ok(failed(message)),
        };
        Ok(
            match self.service.create_checkpoint(&caller, handle.id()).await {
                Ok(record) => ok_json(&json!({
                    "checkpoint_id": record.id,
                    "size": record.size,
                    "saved": record.saved,
                    "skipped": record.skipped,
                })),
                Err(e) => failed(e.to_string()),
            },
        )
    }

    #[tool(
        description = "List your checkpoints (of one session, or all): [{\"checkpoint_id\", \"session_id\", \"created_at\", \"size\", \"saved\"}], oldest first."
    )]
    async fn list_checkpoints(
        &self,
        Parameters(request): Parameters<ListCheckpoints>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let listed = match &request.session {
            Some(name) => match self.lookup(&context, Some(name)) {
                Ok((caller, handle)) => self.service.list_checkpoints(&caller, handle.id()).await,
                Err(message) => return Ok(failed(message)),
            },
            None => match self.caller(&context) {
                Ok(caller) => self.service.list_tenant_checkpoints(&caller).await,
                Err(message) => return Ok(failed(message)),
            },
        };
        Ok(match listed {
            Ok(records) => ok_json(&serde_json::Value::Array(
                records
                    .into_iter()
                    .map(|r| {
                        json!({
                            "checkpoint_id": r.id,
                            "session_id": r.session_id,
                            "created_at": r.created_at,
                            "size": r.size,
                            "saved": r.saved,
                        })
                    })
                    .collect(),
            )),
            Err(e) => failed(e.to_string()),
        })
    }

    #[tool(
        description = "Restore a checkpoint's variables into a session (made on first use): merged into its variables, or replacing them with clear_existing. Answers what was restored and what could not be."
    )]
    async fn restore_checkpoint(
        &self,
        Parameters(request): Parameters<RestoreCheckpoint>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let (caller, handle) = match self.session(&context, request.session.as_deref()).await {
            Ok(found) => found,
            Err(message) => return Ok(failed(message)),
        };
        Ok(
            match self
                .service
                .restore_checkpoint(
                    &caller,
                    handle.id(),
                    &request.checkpoint_id,
                    request.clear_existing,
                )
                .await
            {
                Ok(report) => ok_json(&serde_json::to_value(report).unwrap_or_default()),
                Err(e) => failed(e.to_string()),
            },
        )
    }
}

#[tool_handler(
    router = self.tools,
    name = "pyrepl3",
    instructions = "Runs Python for you in persistent sessions (isolated worker processes). Use run_python to run code (a session named \"default\" is made on first use; name others with the session argument); read_file/write_file move files in and out of a session's directory; create_checkpoint/restore_checkpoint save and bring back a session's variables; cancel stops a run; reset_session gives a session a fresh, empty worker (after its worker died, or to start clean). Answers keep at most 100000 characters of output, then the result or traceback (itself cut at 100000 characters)."
)]
impl ServerHandler for PythonTools {
    /// Up to 2025-11-25: the later revision has no sessions, so a connection could keep no
    /// names (nor the sessions made under them) from one request to the next.
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        // The MCP session is the tenant's that opens it (a later call with another tenant's
        // token is refused by `caller`).
        let _ = self.caller(&context);
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }
}

impl PythonTools {
    /// The tools of one MCP connection, acting on `service` as `caller` says.
    pub fn new(service: Service, caller: CallerSource) -> PythonTools {
        PythonTools {
            service: service.clone(),
            caller,
            names: Arc::new(Names {
                map: Mutex::default(),
                service,
                owner: OnceLock::new(),
            }),
            tenant: Arc::default(),
            tools: Arc::new(Self::session_tools() + Self::run_tools() + Self::file_tools()),
        }
    }

    /// Who calls: the fixed caller, or the one the HTTP layer authenticated; always the
    /// tenant of this connection's first call.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Caller, String> {
        let caller = match &self.caller {
            CallerSource::Fixed(caller) => caller.clone(),
            CallerSource::PerRequest => per_request_caller(context)?,
        };
        let tenant = self.tenant.get_or_init(|| caller.tenant_name().to_string());
        if tenant != caller.tenant_name() {
            return Err("this MCP session was opened with another tenant's token".to_string());
        }
        Ok(caller)
    }

    /// The session `name` (default: "default") if it is open: a name of this connection
    /// or a session id of the caller's.
    fn existing(&self, caller: &Caller, name: &str) -> Option<SessionHandle> {
        let named = lock(&self.names.map).get(name).cloned();
        if let Some(id) = named {
            match self.service.session(caller, &id) {
                Ok(handle) => return Some(handle),
                // Closed elsewhere, or culled when idle: the name is free again.
                Err(_) => {
                    lock(&self.names.map).remove(name);
                }
            }
        }
        self.service.session(caller, name).ok()
    }

    /// The caller and its open session `name` (not made on use).
    fn lookup(
        &self,
        context: &RequestContext<RoleServer>,
        name: Option<&str>,
    ) -> Result<(Caller, SessionHandle), String> {
        let caller = self.caller(context)?;
        let name = name.unwrap_or(DEFAULT_SESSION);
        match self.existing(&caller, name) {
            Some(handle) => Ok((caller, handle)),
            None => Err(format!(
                "no open session named {name:?} (list_sessions lists them)"
            )),
        }
    }

    /// [`Self::lookup`] for a tool that starts work on the session: refused once shutdown
    /// has begun (an open MCP session is still served then: `cancel`, listing and reading go
    /// on).
    fn lookup_to_work(
        &self,
        context: &RequestContext<RoleServer>,
        name: Option<&str>,
    ) -> Result<(Caller, SessionHandle), String> {
        self.refuse_while_shutting_down()?;
        self.lookup(context, name)
    }

    fn refuse_while_shutting_down(&self) -> Result<(), String> {
        if self.service.is_shutting_down() {
            return Err(ServiceError::ShuttingDown.to_string());
        }
        Ok(())
    }

    /// The caller and its session `name` (default: "default"), made on first use; refused
    /// once shutdown has begun (every caller starts work on it).
    async fn session(
        &self,
        context: &RequestContext<RoleServer>,
        name: Option<&str>,
    ) -> Result<(Caller, SessionHandle), String> {
        self.refuse_while_shutting_down()?;
        let caller = self.caller(context)?;
        let name = name.unwrap_or(DEFAULT_SESSION);
        check_name(name)?;
        if let Some(handle) = self.existing(&caller, name) {
            return Ok((caller, handle));
        }
        let (handle, _) = self.start_session(&caller, name, None).await?;
        Ok((caller, handle))
    }

    /// A new session of the caller's called `name` here (from checkpoint `from`). The
    /// names are not locked while it starts: of two first uses of one name at once, the
    /// later session is closed and the earlier one used.
    async fn start_session(
        &self,
        caller: &Caller,
        name: &str,
        from: Option<&str>,
    ) -> Result<(SessionHandle, Option<crate::RestoreReport>), String> {
        let full = || {
            format!(
                "this connection has {MAX_NAMED_SESSIONS} named sessions already: close one (close_session) first"
            )
        };
        if lock(&self.names.map).len() >= MAX_NAMED_SESSIONS {
            return Err(full());
        }
        let started = match from {
            None => self
                .service
                .create_session(caller)
                .await
                .map(|summary| (summary, None)),
            Some(checkpoint) => self
                .service
                .create_session_from_checkpoint(caller, checkpoint, Default::default())
                .await
                .map(|(summary, report)| (summary, Some(report))),
        };
        let (summary, report) = started.map_err(|e| start_error(&e))?;
        let kept = {
            let mut names = lock(&self.names.map);
            match names.get(name) {
                Some(existing) => Err(Some(existing.clone())),
                None if names.len() >= MAX_NAMED_SESSIONS => Err(None),
                None => {
                    names.insert(name.to_string(), summary.id.clone());
                    let _ = self.names.owner.set(caller.clone());
                    Ok(())
                }
            }
        };
        if let Err(existing) = kept {
            let _ = self.service.delete_session(caller, &summary.id);
            let id = existing.ok_or_else(full)?;
            let handle = self
                .service
                .session(caller, &id)
                .map_err(|e| e.to_string())?;
            return Ok((handle, None));
        }
        let handle = self
            .service
            .session(caller, &summary.id)
            .map_err(|e| e.to_string())?;
        Ok((handle, report))
    }
}

/// A session name: 1 to 64 characters.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "a session name has 1 to {MAX_NAME_CHARS} characters"
        ));
    }
    Ok(())
}

fn start_error(e: &ServiceError) -> String {
    match e {
        ServiceError::SessionLimit { .. } => {
            format!("{e}: close a session (close_session) first")
        }
        _ => format!("could not start a Python session: {e}"),
    }
}

/// The caller `server::mcp` authenticated for this HTTP request.
#[cfg(feature = "server")]
fn per_request_caller(context: &RequestContext<RoleServer>) -> Result<Caller, String> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| "this request was not authenticated".to_string())
}

#[cfg(not(feature = "server"))]
fn per_request_caller(_: &RequestContext<RoleServer>) -> Result<Caller, String> {
    Err("this request was not authenticated".to_string())
}
