//! The tools that run code: `run_python` (a run followed to its end: its output, result,
//! displays and images gathered into one bounded answer; progress notifications as output
//! arrives; `input()` asked of the user by elicitation; stopped when the client cancels the
//! call) and `cancel` (stops what runs in a session, e.g. from another call).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ProgressNotificationParam, ProgressToken};
use rmcp::service::{ElicitationMode, Peer, RequestContext, RoleServer};
use rmcp::{schemars, tool, tool_router, ErrorData as McpError};
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::answer::{clip, last_line, Answer};
use super::elicit::{ask, Asked, NO_ELICITATION};
use super::{failed, ok_json, PythonTools};
use crate::protocol::StreamName;
use crate::service::{ClientEvent, ExecuteRequest, SessionHandle};

/// A run's time limit when the call gives none, and the most a call may ask for (the
/// tenant's own execution time limit, if lower, wins).
const DEFAULT_TIMEOUT_SECS: f64 = 300.0;
pub(crate) const MAX_TIMEOUT_SECS: f64 = 3600.0;
/// How long cancelled code may take to stop before its worker is restarted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// Progress notifications of one run are at least this far apart: output that arrives
/// sooner is counted, and the next notification (sent on a later output) carries it.
const MIN_PROGRESS_GAP: Duration = Duration::from_millis(250);
/// Characters of a progress message (the latest line of output).
const MAX_PROGRESS_MESSAGE: usize = 200;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct RunPython {
    /// Python source. Variables, imports and functions persist in the session between
    /// calls. The value of a last-line expression is returned, as in a notebook; plots
    /// (matplotlib's plt.show()) and display() come back as images or text.
    code: String,
    /// The session to run in (a name, made on first use, or a session id of yours).
    /// Default: "default".
    session: Option<String>,
    /// Seconds before the code is interrupted (KeyboardInterrupt). Default: 300, at most
    /// 3600.
    timeout_secs: Option<f64>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct CancelRun {
    /// The session whose running (and queued) code to stop. Default: "default".
    session: Option<String>,
}

/// Said when the session's worker is dead: what the agent can do about it.
const DEAD_SESSION: &str = "this session's worker is dead: call reset_session (same session name) for a fresh worker; its variables are lost";

#[tool_router(router = run_tools, vis = "pub(super)")]
impl PythonTools {
    #[tool(
        description = "Run Python code in a persistent session (an isolated worker process; variables, imports and definitions persist between calls). Returns the printed output (stdout and stderr in order), the value of the last expression (\"Out: ...\"), any error with its traceback, and displayed images (matplotlib plots with plt.show(), display(obj)). Sends progress notifications with the latest output line while it runs, when the call has a progressToken. input() asks the user (MCP elicitation) when the client supports it, else gets end of file."
    )]
    async fn run_python(
        &self,
        Parameters(request): Parameters<RunPython>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let timeout = request.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(timeout > 0.0 && timeout <= MAX_TIMEOUT_SECS) {
            return Ok(failed(format!(
                "timeout_secs must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECS}"
            )));
        }
        let (_, handle) = match self.session(&context, request.session.as_deref()).await {
            Ok(found) => found,
            Err(message) => return Ok(failed(message)),
        };
        let execution = match handle.execute(ExecuteRequest {
            code: request.code,
            timeout: Some(timeout),
            ..ExecuteRequest::default()
        }) {
            Ok(execution) => execution,
            Err(e) => return Ok(failed(e.to_string())),
        };
        // Form elicitation (a line typed in): a client with only URL elicitation cannot
        // answer input().
        let can_elicit = context
            .peer
            .supported_elicitation_modes()
            .contains(&ElicitationMode::Form);
        let mut progress = Progress {
            token: context.meta.get_progress_token(),
            peer: context.peer.clone(),
            outputs: 0,
            last_sent: None,
        };
        let mut reader = execution.follow(0);
        let mut answer = Answer::default();
        let mut tail = String::new();
        let mut is_error = false;
        let mut cancel_sent = false;
        // The question being asked for the input() the code waits in, if any: events are
        // read on meanwhile, so that an end (a timeout, a cancel) answers the call at once.
        let mut asking: Option<Question> = None;
        loop {
            let step = tokio::select! {
                batch = reader.next_batch() => Step::Events(batch),
                asked = async {
                    match asking.as_mut() {
                        Some(question) => (&mut question.answer).await,
                        None => std::future::pending().await,
                    }
                }, if asking.is_some() => Step::Answered(asked),
                // The client gave up on the call (notifications/cancelled): the code is
                // stopped, and its end read as usual.
                _ = context.ct.cancelled(), if !cancel_sent => Step::ClientCancelled,
            };
            let batch = match step {
                Step::Events(batch) => batch,
                Step::Answered(asked) => {
                    if let Some(question) = asking.take() {
                        if let Some(note) = &asked.note {
                            answer.note(note);
                        }
                        // An answer for an input that meanwhile ended (cancelled) is
                        // refused: nothing to do.
                        let _ = handle.input(&question.input_id, asked.line).await;
                    }
                    continue;
                }
                Step::ClientCancelled => {
                    cancel_sent = true;
                    let (handle, id) = (handle.clone(), execution.id().to_string());
                    tokio::spawn(async move { handle.cancel(&id, Some(CANCEL_GRACE)).await });
                    continue;
                }
            };
            let Some(batch) = batch else { break };
            let mut latest_output = None;
            for event in batch.iter().filter_map(|logged| logged.event()) {
                match event {
                    ClientEvent::Output { stream, data, .. } => {
                        answer.push_output(&data, stream == StreamName::Stderr);
                        progress.outputs += 1;
                        latest_output = Some(data);
                    }
                    ClientEvent::Input {
                        id,
                        prompt,
                        password,
                        ..
                    } => {
                        // Said first: what the user is asked about is the output so far.
                        if let Some(data) = latest_output.take() {
                            progress.send(&data).await;
                        }
                        // An earlier question still open was answered otherwise (end of
                        // input at shutdown): withdrawn first.
                        if let Some(earlier) = asking.take() {
                            earlier.withdraw().await;
                        }
                        if can_elicit && !cancel_sent {
                            asking = Some(Question::ask(&context.peer, id, prompt, password));
                        } else {
                            if !can_elicit {
                                answer.note(NO_ELICITATION);
                            }
                            // An answer for an input that meanwhile ended (cancelled) is
                            // refused: nothing to do.
                            let _ = handle.input(&id, None).await;
                        }
                    }
                    ClientEvent::Display { data, .. } => answer.push_bundle(&data, true),
                    ClientEvent::Result { repr, data, .. } => {
                        if let Some(data) = data {
                            answer.push_bundle(&data, false);
                        }
                        if let Some(repr) = repr {
                            tail = format!("Out: {}\n", clip(&repr));
                        }
                    }
                    ClientEvent::Error {
                        exception_type,
                        traceback,
                        ..
                    } => {
                        is_error = true;
                        tail = clip(&traceback);
                        if exception_type == "SessionDead" {
                            // The service's words name its own HTTP call; an agent has a tool.
                            answer.note(DEAD_SESSION);
                        }
                    }
                }
            }
            if let Some(data) = latest_output {
                progress.send(&data).await;
            }
        }
        // The execution ended with a question open (a timeout, a cancel): withdrawn, so the
        // user is not left with a prompt nobody waits for.
        if let Some(question) = asking.take() {
            question.withdraw().await;
        }
        let content = answer.into_content(&tail);
        Ok(if is_error {
            CallToolResult::error(content)
        } else {
            CallToolResult::success(content)
        })
    }

    #[tool(
        description = "Stop the code running in a session (KeyboardInterrupt; the worker is restarted if it does not stop within 2 s), and any queued behind it. The run_python call that started it then answers with the KeyboardInterrupt."
    )]
    async fn cancel(
        &self,
        Parameters(request): Parameters<CancelRun>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let handle: SessionHandle = match self.lookup(&context, request.session.as_deref()) {
            Ok((_, handle)) => handle,
            Err(message) => return Ok(failed(message)),
        };
        let running: Vec<String> = handle
            .executions()
            .into_iter()
            .filter(|e| !e.done)
            .map(|e| e.execution_id)
            .collect();
        if running.is_empty() {
            return Ok(failed("nothing is running in that session"));
        }
        let mut outcomes = Vec::new();
        for id in running {
            match handle.cancel(&id, Some(CANCEL_GRACE)).await {
                Ok(outcome) => {
                    outcomes.push(serde_json::json!({"execution_id": id, "outcome": outcome}))
                }
                Err(e) => return Ok(failed(e.to_string())),
            }
        }
        Ok(ok_json(&serde_json::Value::Array(outcomes)))
    }
}

/// What woke the run's loop.
enum Step {
    Events(Option<Vec<crate::service::LoggedEvent>>),
    Answered(Asked),
    ClientCancelled,
}

/// A question asked of the user for one `input()`: its answer to come, and how to
/// withdraw it.
struct Question {
    input_id: String,
    answer: Pin<Box<dyn Future<Output = Asked> + Send>>,
    withdraw: CancellationToken,
}

impl Question {
    fn ask(peer: &Peer<RoleServer>, input_id: String, prompt: String, password: bool) -> Question {
        let withdraw = CancellationToken::new();
        Question {
            input_id,
            answer: Box::pin(ask(peer.clone(), prompt, password, withdraw.clone())),
            withdraw,
        }
    }

    /// Withdraws the question from the client (`notifications/cancelled`), unless it was
    /// answered meanwhile.
    async fn withdraw(self) {
        self.withdraw.cancel();
        self.answer.await;
    }
}

/// The progress notifications of one run: sent on output, at most one per
/// [`MIN_PROGRESS_GAP`] (compared with the last one's instant, never waited for).
struct Progress {
    /// The call's progressToken; without one, nothing is sent.
    token: Option<ProgressToken>,
    peer: Peer<RoleServer>,
    /// Output events so far: the progress count.
    outputs: u64,
    last_sent: Option<Instant>,
}

impl Progress {
    /// A notification carrying the latest line of `latest` (the newest output), unless one
    /// went out less than [`MIN_PROGRESS_GAP`] ago.
    async fn send(&mut self, latest: &str) {
        let Some(token) = &self.token else { return };
        let now = Instant::now();
        if self
            .last_sent
            .is_some_and(|sent| now.duration_since(sent) < MIN_PROGRESS_GAP)
        {
            return;
        }
        self.last_sent = Some(now);
        let mut param = ProgressNotificationParam::new(token.clone(), self.outputs as f64);
        if let Some(line) = last_line(latest, MAX_PROGRESS_MESSAGE) {
            param = param.with_message(line);
        }
        // A client gone meanwhile: the run's answer says what happened.
        let _ = self.peer.notify_progress(param).await;
    }
}
