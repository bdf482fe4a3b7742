//! The audit rule for the worker's Python: every timed wait says why it is not a poll.

use super::{find_word, line_of, mask, matching_close, noted, split_top_level, Finding};

/// Every timed wait in `src` (`time.sleep(..)`, `threading.Timer(..)`, `signal.alarm(..)` /
/// `setitimer(..)`, `.wait(t)`, `.poll(t)`, `.select(t)`, `select.select(r, w, x, t)`,
/// `.settimeout(t)`, any call with a `timeout=` other than `None`) carries a comment with
/// `not polling:` on its line or one of the 3 lines above. Untimed waits (`.wait()`,
/// `.acquire()`, `select.select(r, w, x)`) need no note.
pub fn timers_without_note(file: &str, src: &str) -> Vec<Finding> {
    let masked = mask::python(src);
    let code = &masked.code;
    let mut findings = Vec::new();
    let mut flag = |at: usize, what: &str| {
        let line = line_of(code, at);
        if !noted(&masked.comments, line, "not polling:") {
            findings.push(Finding {
                file: file.to_string(),
                line,
                message: format!(
                    "{what} without a `# not polling: <why>` comment on its line or the 3 lines above"
                ),
            });
        }
    };
    for (at, name, args) in calls(code) {
        let method = code[..at].ends_with('.');
        let receiver_is = |module: &str| method && code[..at - 1].ends_with(module);
        let timed_arg = |n: usize| args.get(n).is_some_and(|a| !a.is_empty() && a != "None");
        let timed = match name {
            "sleep" | "Timer" | "alarm" | "setitimer" => true,
            "select" if receiver_is("select") => timed_arg(3),
            "wait" | "poll" | "select" | "settimeout" if method => timed_arg(0),
            _ => false,
        };
        let timeout_kwarg = args.iter().any(|a| {
            a.strip_prefix("timeout")
                .and_then(|r| r.trim_start().strip_prefix('='))
                .is_some_and(|v| v.trim() != "None")
        });
        if timed || timeout_kwarg {
            flag(at, &format!("`{name}(..)`"));
        }
    }
    findings.sort_by_key(|f| f.line);
    findings
}

/// Every call in masked `code` that is not a definition: its offset, the called name, and its
/// top-level arguments (trimmed).
fn calls(code: &str) -> Vec<(usize, &str, Vec<String>)> {
    let mut found = Vec::new();
    for (open, _) in code.match_indices('(') {
        let before = &code[..open];
        let name_at = before
            .bytes()
            .rposition(|b| !super::is_ident(b))
            .map_or(0, |i| i + 1);
        let name = &before[name_at..];
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            continue;
        }
        let defined = find_word(&before[..name_at], "def")
            .last()
            .is_some_and(|&d| before[d + 3..name_at].trim().is_empty());
        if defined {
            continue;
        }
        let Some(close) = matching_close(code, open) else {
            continue;
        };
        let inner = code[open + 1..close].trim();
        let args = if inner.is_empty() {
            Vec::new()
        } else {
            split_top_level(inner, b',')
                .into_iter()
                .map(|a| a.trim().to_string())
                .collect()
        };
        found.push((name_at, name, args));
    }
    found
}
