//! `input()` asked of the MCP client's user by elicitation, withdrawable: a question whose
//! execution ends first (a timeout, a cancel, shutdown's end of input) is withdrawn with
//! `notifications/cancelled`, so neither the tool call nor the user's prompt waits on it.
//! (`Peer::elicit` cannot be withdrawn: it waits for the answer whatever happens; hence the
//! request is sent here as a cancellable one.)

use rmcp::model::{
    ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema,
    ServerRequest,
};
use rmcp::schemars;
use rmcp::service::{Peer, PeerRequestOptions, RoleServer};
use tokio_util::sync::CancellationToken;

/// The line the user types when the code calls `input()` (asked by elicitation).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct InputLine {
    /// The line input() returns to the code.
    line: String,
}
rmcp::elicit_safe!(InputLine);

/// Said in the answer when the code called `input()` and the user could not be asked.
pub const NO_ELICITATION: &str = "input() is not available: this MCP client does not support elicitation (asking its user), so input() got end of file (EOFError). Put the data in the code, or write it to a file with write_file and read that";

/// What asking gave: the line (`None`: end of file) and a note for the answer, if any.
pub struct Asked {
    pub line: Option<String>,
    pub note: Option<String>,
}

impl Asked {
    fn eof(note: Option<String>) -> Asked {
        Asked { line: None, note }
    }
}

/// The user's line for `input(prompt)`; end of file when they decline or cancel, when asking
/// fails (said in the note), or when `withdraw` is cancelled first (the question is then
/// withdrawn from the client).
pub async fn ask(
    peer: Peer<RoleServer>,
    prompt: String,
    password: bool,
    withdraw: CancellationToken,
) -> Asked {
    let mut message = if prompt.trim().is_empty() {
        "The Python code asks for a line of input (input()).".to_string()
    } else {
        format!("The Python code asks: {prompt}")
    };
    if password {
        message.push_str(" (a password: getpass)");
    }
    let schema = match ElicitationSchema::from_type::<InputLine>() {
        Ok(schema) => schema,
        Err(e) => return Asked::eof(Some(could_not_ask(&e))),
    };
    let request = ServerRequest::ElicitRequest(ElicitRequest::new(
        ElicitRequestParams::FormElicitationParams {
            meta: None,
            message,
            requested_schema: schema,
        },
    ));
    let mut handle = match peer
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
    {
        Ok(handle) => handle,
        Err(e) => return Asked::eof(Some(could_not_ask(&e))),
    };
    let answered = tokio::select! {
        answered = &mut handle.rx => Some(answered),
        () = withdraw.cancelled() => None,
    };
    let Some(answered) = answered else {
        // The client may already be gone: nothing more to do then.
        let _ = handle
            .cancel(Some("the code stopped waiting for this input".to_string()))
            .await;
        return Asked::eof(None);
    };
    match answered {
        Ok(Ok(ClientResult::ElicitResult(result))) => match result.action {
            ElicitationAction::Accept => {
                match result.content.map(serde_json::from_value::<InputLine>) {
                    Some(Ok(input)) => Asked {
                        line: Some(input.line),
                        note: None,
                    },
                    Some(Err(e)) => Asked::eof(Some(could_not_ask(&e))),
                    None => Asked::eof(None),
                }
            }
            // Declined, cancelled (or an action of a later protocol): end of file.
            _ => Asked::eof(None),
        },
        Ok(Ok(_)) => Asked::eof(Some(could_not_ask(&"an unexpected answer"))),
        Ok(Err(e)) => Asked::eof(Some(could_not_ask(&e))),
        Err(_) => Asked::eof(Some(could_not_ask(&"the client went away"))),
    }
}

fn could_not_ask(why: &dyn std::fmt::Display) -> String {
    format!("input() could not be asked of the user ({why}): it got end of file (EOFError)")
}
