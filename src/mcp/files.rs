//! The tools that move files in and out of a session's directory (its working directory),
//! through the service's files operations: its path rules (nothing outside the session's
//! directory) and its size limits.

use base64::Engine as _;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{schemars, tool, tool_router, ErrorData as McpError};
use tokio::io::AsyncReadExt;

use super::answer::clip;
use super::{failed, ok_text, PythonTools};

/// The largest file `read_file` returns.
pub const MAX_READ_BYTES: usize = 8 << 20;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct WriteFile {
    /// The session (a name, made on first use, or a session id of yours). Default:
    /// "default".
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

#[tool_router(router = file_tools, vis = "pub(super)")]
impl PythonTools {
    #[tool(
        description = "Write a file into a session's directory (the code's working directory), e.g. data for the code to read."
    )]
    async fn write_file(
        &self,
        Parameters(request): Parameters<WriteFile>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let bytes = if request.base64 {
            match base64::engine::general_purpose::STANDARD.decode(request.content.trim()) {
                Ok(bytes) => bytes,
                Err(e) => return Ok(failed(format!("content is not base64: {e}"))),
            }
        } else {
            request.content.into_bytes()
        };
        let (_, handle) = match self.session(&context, request.session.as_deref()).await {
            Ok(found) => found,
            Err(message) => return Ok(failed(message)),
        };
        let size = bytes.len() as u64;
        Ok(
            match handle.put_file(&request.path, Some(size), &bytes[..]).await {
                Ok(written) => ok_text(format!("wrote {} bytes to {}", written.size, written.path)),
                Err(e) => failed(e.to_string()),
            },
        )
    }

    #[tool(
        description = "Read a file from a session's directory: text as text, .png/.jpg images as images, other binary files as base64. At most 8 MiB."
    )]
    async fn read_file(
        &self,
        Parameters(request): Parameters<ReadFile>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let (_, handle) = match self.lookup(&context, request.session.as_deref()) {
            Ok(found) => found,
            Err(message) => return Ok(failed(message)),
        };
        let opened = match handle.open_file(&request.path).await {
            Ok(opened) => opened,
            Err(e) => return Ok(failed(e.to_string())),
        };
        // Its size first: nothing larger is read into memory.
        if opened.size > MAX_READ_BYTES as u64 {
            return Ok(failed(format!(
                "{} is {} bytes; read_file returns at most {MAX_READ_BYTES}",
                request.path, opened.size
            )));
        }
        let mut bytes = Vec::new();
        // One byte more than the bound: a file that grew meanwhile is told, not cut.
        let read = opened
            .file
            .take(MAX_READ_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await;
        match read {
            Err(e) => return Ok(failed(format!("reading {}: {e}", request.path))),
            Ok(n) if n > MAX_READ_BYTES => {
                return Ok(failed(format!(
                    "{} grew past {MAX_READ_BYTES} bytes while being read",
                    request.path
                )))
            }
            Ok(_) => {}
        }
        let image = [
            (".png", "image/png"),
            (".jpg", "image/jpeg"),
            (".jpeg", "image/jpeg"),
        ]
        .into_iter()
        .find(|(ext, _)| request.path.to_ascii_lowercase().ends_with(ext));
        let content = match (image, String::from_utf8(bytes)) {
            (_, Ok(text)) => ContentBlock::text(clip(&text)),
            (Some((_, mime)), Err(e)) => ContentBlock::image(
                base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                mime,
            ),
            (None, Err(e)) => ContentBlock::text(format!(
                "base64: {}",
                base64::engine::general_purpose::STANDARD.encode(e.into_bytes())
            )),
        };
        Ok(CallToolResult::success(vec![content]))
    }
}
