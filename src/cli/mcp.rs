//! `pyrepl3 mcp`: a Model Context Protocol server over stdio (the official Rust SDK, `rmcp`),
//! for a local AI agent. Its tools run Python in named sessions of this process (made on
//! first use, each an isolated worker whose variables persist), return outputs, the result
//! and display outputs (images as MCP image content), and move files in and out. Sessions
//! end with the process. stdout carries the protocol only: logs go to stderr.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{schemars, tool, tool_router, ErrorData as McpError, ServiceExt};
use tokio::sync::Mutex;

use super::McpArgs;
use crate::protocol::StreamName;
use crate::{Event, ExecuteOptions, Session, SessionConfig};

/// Sessions one server holds at most (each is a Python process).
const MAX_SESSIONS: usize = 16;
/// Characters of output text a tool answer keeps (an agent's context is precious); the rest
/// is said to be left out.
const MAX_TEXT: usize = 100_000;
/// The largest file `read_file` returns.
const MAX_READ_BYTES: usize = 8 << 20;
/// A run's time limit when the call gives none, and the most a call may ask for.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_TIMEOUT_SECS: f64 = 3600.0;
/// Images one answer carries at most, and their base64 bytes in all; the rest is said to be
/// left out.
const MAX_IMAGES: usize = 10;
const MAX_IMAGE_BYTES: usize = 16 << 20;
/// How long cancelled code may take to stop before its worker is restarted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct PythonTools {
    config: SessionConfig,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct RunPython {
    /// Python source. Variables, imports and functions persist in the session between
    /// calls. The value of a last-line expression is returned, as in a notebook; plots
    /// (matplotlib's plt.show()) and display() come back as images or text.
    code: String,
    /// The session to run in (made on first use). Default: "default".
    session: Option<String>,
    /// Seconds before the code is interrupted (KeyboardInterrupt). Default: 300.
    timeout_secs: Option<f64>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SessionName {
    /// The session's name.
    session: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct WriteFile {
    /// The session (made on first use). Default: "default".
    session: Option<String>,
    /// Path relative to the session's directory (its working directory), e.g. "data/in.csv".
    path: String,
    /// The file's content: text, or base64 when `base64` is true.
    content: String,
    /// Whether `content` is base64 (for binary files).
    #[serde(default)]
    base64: bool,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct ReadFile {
    /// The session. Default: "default".
    session: Option<String>,
    /// Path relative to the session's directory.
    path: String,
}

fn failed(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// A run's answer as it is gathered, within bounds: text up to [`MAX_TEXT`] characters (the
/// rest only counted, never held), images up to [`MAX_IMAGES`] and [`MAX_IMAGE_BYTES`].
#[derive(Default)]
struct Answer {
    text: String,
    chars: usize,
    dropped_bytes: usize,
    images: Vec<ContentBlock>,
    image_bytes: usize,
    dropped_images: usize,
}

impl Answer {
    fn push_text(&mut self, data: &str) {
        let room = MAX_TEXT.saturating_sub(self.chars);
        match data.char_indices().nth(room) {
            None => {
                self.chars += data.chars().count();
                self.text.push_str(data);
            }
            Some((cut, _)) => {
                self.chars = MAX_TEXT;
                self.text.push_str(&data[..cut]);
                self.dropped_bytes += data.len() - cut;
            }
        }
    }

    fn push_image(&mut self, base64: &str, mime: &str) {
        if self.images.len() >= MAX_IMAGES || self.image_bytes + base64.len() > MAX_IMAGE_BYTES {
            self.dropped_images += 1;
            return;
        }
        self.image_bytes += base64.len();
        self.images.push(ContentBlock::image(base64, mime));
    }

    /// The content blocks: the output, what was left out, then `tail` (the result or the
    /// traceback, never clipped), then the images.
    fn into_content(mut self, tail: &str) -> Vec<ContentBlock> {
        if self.dropped_bytes > 0 {
            self.text.push_str(&format!(
                "\n[... {} more bytes of output left out]\n",
                self.dropped_bytes
            ));
        }
        if self.dropped_images > 0 {
            self.text.push_str(&format!(
                "[{} more images left out: at most {MAX_IMAGES} per answer]\n",
                self.dropped_images
            ));
        }
        self.text.push_str(tail);
        if self.text.is_empty() {
            self.text.push_str("(no output)");
        }
        let mut content = vec![ContentBlock::text(self.text)];
        content.extend(self.images);
        content
    }
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((cut, _)) => format!(
            "{}\n[... {} more bytes left out]",
            &text[..cut],
            text.len() - cut
        ),
        None => text.to_string(),
    }
}

#[tool_router(server_handler)]
impl PythonTools {
    #[tool(
        description = "Run Python code in a persistent session (an isolated worker process; variables, imports and definitions persist between calls). Returns the printed output (stdout and stderr in order), the value of the last expression, any error with its traceback, and displayed images (matplotlib plots with plt.show(), display(obj)). input() gets end of file: pass data in the code instead."
    )]
    async fn run_python(
        &self,
        Parameters(request): Parameters<RunPython>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let timeout = match request.timeout_secs {
            None => Some(DEFAULT_TIMEOUT),
            Some(secs) => match crate::time::duration_from_secs(secs)
                .filter(|_| secs > 0.0 && secs <= MAX_TIMEOUT_SECS)
            {
                Some(timeout) => Some(timeout),
                None => {
                    return Ok(failed(format!(
                        "timeout_secs must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECS}"
                    )))
                }
            },
        };
        let session = match self.session(request.session.as_deref()).await {
            Ok(session) => session,
            Err(message) => return Ok(failed(message)),
        };
        let options = ExecuteOptions {
            timeout,
            ..ExecuteOptions::default()
        };
        let mut execution = session.execute(request.code, options);
        let execution_id = execution.id().to_string();
        let mut answer = Answer::default();
        let mut tail = String::new();
        let mut is_error = false;
        let mut cancel_sent = false;
        loop {
            let event = tokio::select! {
                event = execution.next_event() => event,
                // The client gave up on the call (notifications/cancelled): the code is
                // stopped, and its end read as usual.
                _ = context.ct.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    let (session, id) = (session.clone(), execution_id.clone());
                    tokio::spawn(async move { session.cancel(&id, CANCEL_GRACE).await });
                    continue;
                }
            };
            let Some(event) = event else { break };
            match event {
                Event::Output { stream, data } => {
                    if stream == StreamName::Stderr
                        && !answer.text.is_empty()
                        && !answer.text.ends_with('\n')
                    {
                        answer.push_text("\n");
                    }
                    answer.push_text(&data);
                }
                Event::Input { input_id, .. } => {
                    // No one to ask over this protocol: end of file, as without a terminal.
                    let _ = session.answer_input(&input_id, None).await;
                }
                Event::Display(display) => push_bundle(&display.data, &mut answer, true),
                Event::Result { repr, bundle, .. } => {
                    if let Some(bundle) = bundle {
                        push_bundle(&bundle.data, &mut answer, false);
                    }
                    if let Some(repr) = repr {
                        tail = format!("Out: {}\n", clip(&repr));
                    }
                }
                Event::Error { traceback, .. } => {
                    is_error = true;
                    tail = clip(&traceback);
                }
            }
        }
        let content = answer.into_content(&tail);
        Ok(if is_error {
            CallToolResult::error(content)
        } else {
            CallToolResult::success(content)
        })
    }

    #[tool(description = "List the open Python sessions by name.")]
    async fn list_sessions(&self) -> Result<CallToolResult, McpError> {
        let sessions = self.sessions.lock().await;
        let mut names: Vec<&String> = sessions.keys().collect();
        names.sort();
        let listed = serde_json::to_string(&names).unwrap_or_default();
        Ok(CallToolResult::success(vec![ContentBlock::text(listed)]))
    }

    #[tool(
        description = "Reset a session: a fresh Python process with empty variables (its files stay)."
    )]
    async fn reset_session(
        &self,
        Parameters(request): Parameters<SessionName>,
    ) -> Result<CallToolResult, McpError> {
        let session = self.sessions.lock().await.get(&request.session).cloned();
        let Some(session) = session else {
            return Ok(failed(format!("no session named {:?}", request.session)));
        };
        Ok(match session.restart().await {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text("reset")]),
            Err(e) => failed(format!("could not reset the session: {e}")),
        })
    }

    #[tool(description = "Close a session: its process ends and its files are removed.")]
    async fn close_session(
        &self,
        Parameters(request): Parameters<SessionName>,
    ) -> Result<CallToolResult, McpError> {
        let session = self.sessions.lock().await.remove(&request.session);
        let Some(session) = session else {
            return Ok(failed(format!("no session named {:?}", request.session)));
        };
        let _ = session.shutdown().await;
        Ok(CallToolResult::success(vec![ContentBlock::text("closed")]))
    }

    #[tool(
        description = "Write a file into a session's directory (the code's working directory), e.g. data for the code to read."
    )]
    async fn write_file(
        &self,
        Parameters(request): Parameters<WriteFile>,
    ) -> Result<CallToolResult, McpError> {
        let bytes = if request.base64 {
            match base64::engine::general_purpose::STANDARD.decode(request.content.trim()) {
                Ok(bytes) => bytes,
                Err(e) => return Ok(failed(format!("content is not base64: {e}"))),
            }
        } else {
            request.content.into_bytes()
        };
        let session = match self.session(request.session.as_deref()).await {
            Ok(session) => session,
            Err(message) => return Ok(failed(message)),
        };
        let size = bytes.len() as u64;
        Ok(
            match session
                .files()
                .write(&request.path, &bytes[..], Some(size))
                .await
            {
                Ok(written) => CallToolResult::success(vec![ContentBlock::text(format!(
                    "wrote {} bytes to {}",
                    written.size, written.path
                ))]),
                Err(e) => failed(e.to_string()),
            },
        )
    }

    #[tool(
        description = "Read a file from a session's directory: text as text, images as images, other binary files as base64."
    )]
    async fn read_file(
        &self,
        Parameters(request): Parameters<ReadFile>,
    ) -> Result<CallToolResult, McpError> {
        let session = match self.session(request.session.as_deref()).await {
            Ok(session) => session,
            Err(message) => return Ok(failed(message)),
        };
        // Its size first: nothing larger is read into memory.
        match session.files().open(&request.path).await {
            Ok(opened) if opened.size > MAX_READ_BYTES as u64 => {
                return Ok(failed(format!(
                    "{} is {} bytes; read_file returns at most {MAX_READ_BYTES}",
                    request.path, opened.size
                )))
            }
            Ok(_) => {}
            Err(e) => return Ok(failed(e.to_string())),
        }
        let bytes = match session.files().read(&request.path).await {
            Ok(bytes) if bytes.len() > MAX_READ_BYTES => {
                return Ok(failed(format!(
                    "{} grew past {MAX_READ_BYTES} bytes while being read",
                    request.path
                )))
            }
            Ok(bytes) => bytes,
            Err(e) => return Ok(failed(e.to_string())),
        };
        let image = [
            (".png", "image/png"),
            (".jpg", "image/jpeg"),
            (".jpeg", "image/jpeg"),
        ]
        .into_iter()
        .find(|(ext, _)| request.path.to_ascii_lowercase().ends_with(ext));
        let content = match (image, String::from_utf8(bytes)) {
            (None, Ok(text)) => ContentBlock::text(clip(&text)),
            (Some((_, mime)), Err(e)) => ContentBlock::image(
                base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                mime,
            ),
            (_, Ok(text)) => ContentBlock::text(clip(&text)),
            (None, Err(e)) => ContentBlock::text(format!(
                "base64: {}",
                base64::engine::general_purpose::STANDARD.encode(e.into_bytes())
            )),
        };
        Ok(CallToolResult::success(vec![content]))
    }
}

impl PythonTools {
    /// The session named `name` (default: "default"), made on first use. (The table is not locked while a
    /// session starts: two first uses of one name at once start two, and the later is shut
    /// down.)
    async fn session(&self, name: Option<&str>) -> Result<Session, String> {
        let name = name.unwrap_or("default");
        if name.is_empty() || name.len() > 64 {
            return Err("a session name has 1 to 64 characters".to_string());
        }
        let full =
            || format!("{MAX_SESSIONS} sessions are open already: close one (close_session) first");
        {
            let sessions = self.sessions.lock().await;
            if let Some(session) = sessions.get(name) {
                return Ok(session.clone());
            }
            if sessions.len() >= MAX_SESSIONS {
                return Err(full());
            }
        }
        let started = Session::start(self.config.clone())
            .await
            .map_err(|e| format!("could not start a Python session: {e}"))?;
        let (session, extra) = {
            let mut sessions = self.sessions.lock().await;
            match sessions.get(name) {
                Some(existing) => (Ok(existing.clone()), Some(started)),
                None if sessions.len() >= MAX_SESSIONS => (Err(full()), Some(started)),
                None => {
                    sessions.insert(name.to_string(), started.clone());
                    (Ok(started), None)
                }
            }
        };
        if let Some(extra) = extra {
            let _ = extra.shutdown().await;
        }
        session
    }
}

/// Images as image content; without one, the text (markdown or plain) when `text` is set.
fn push_bundle(data: &crate::MimeBundle, answer: &mut Answer, text: bool) {
    let image = ["image/png", "image/jpeg"]
        .into_iter()
        .find_map(|mime| data.get(mime).and_then(|v| v.as_str()).map(|v| (mime, v)));
    match image {
        Some((mime, content)) => answer.push_image(content, mime),
        None if text => {
            let shown = ["text/markdown", "text/plain"]
                .into_iter()
                .find_map(|mime| data.get(mime).and_then(|v| v.as_str()))
                .unwrap_or("");
            answer.push_text(shown);
            if !shown.ends_with('\n') {
                answer.push_text("\n");
            }
        }
        None => {}
    }
}

pub async fn run(args: McpArgs) -> i32 {
    let mut config = SessionConfig {
        python: args.python.clone(),
        ..SessionConfig::default()
    };
    args.sandbox.apply(&mut config);
    let tools = PythonTools {
        config,
        sessions: Arc::default(),
    };
    let served = match tools.clone().serve(rmcp::transport::stdio()).await {
        Ok(served) => served,
        Err(e) => {
            eprintln!("pyrepl3 mcp: {e}");
            return 2;
        }
    };
    let status = match served.waiting().await {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("pyrepl3 mcp: {e}");
            1
        }
    };
    // The client went away: every session's worker ends with this process.
    let sessions: Vec<Session> = tools
        .sessions
        .lock()
        .await
        .drain()
        .map(|(_, s)| s)
        .collect();
    for session in sessions {
        let _ = session.shutdown().await;
    }
    status
}
