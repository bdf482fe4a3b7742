//! The rules for the crate's Rust source. Each takes a file's name and text and returns its
//! findings; each works on masked code, so comments and strings never match.

use super::{
    find_word, is_ident, line_of, mask, matching_close, matching_open, noted, split_top_level,
    Finding,
};

/// A lock guard bound by `let` (`let g = m.lock().await;`, `let g = m.lock().unwrap();`,
/// `let g = lock(&m);`, `.read()`/`.write()` of an RwLock) that is still alive at a later
/// `.await` of the same block: no `drop(g)` between them. A tokio guard held across an await
/// stalls every other task wanting the lock for as long as the awaited thing takes; a std
/// guard held across one blocks a runtime thread (or deadlocks) and makes the future !Send.
pub fn guards_across_await(file: &str, src: &str) -> Vec<Finding> {
    let code = mask::rust(src).code;
    let mut findings = Vec::new();
    for binding in lock_bindings(&code) {
        let Some(open) = enclosing_block(&code, binding.at) else {
            continue;
        };
        let Some(close) = matching_close(&code, open) else {
            continue;
        };
        let scope = &code[binding.statement_end..close];
        // An `.await` inside an `async` block that does not use the guard belongs to another
        // future (spawned, returned): the guard is not held across it.
        let elsewhere = other_futures(scope, &binding.name);
        let first_await = scope
            .match_indices(".await")
            .map(|(n, _)| n)
            .find(|n| !elsewhere.iter().any(|r| r.contains(n)))
            .map(|n| binding.statement_end + n);
        let first_drop = drops(scope, &binding.name).map(|n| binding.statement_end + n);
        if let Some(await_at) = first_await {
            if first_drop.is_none_or(|drop_at| await_at < drop_at) {
                findings.push(Finding {
                    file: file.to_string(),
                    line: line_of(&code, binding.at),
                    message: format!(
                        "{} lock guard `{}` is still alive at the `.await` on line {}: drop it (or end its block) before awaiting",
                        binding.kind,
                        binding.name,
                        line_of(&code, await_at)
                    ),
                });
            }
        }
    }
    findings
}

/// A `let` that binds a lock guard to a name.
pub struct LockBinding {
    pub name: String,
    /// "tokio" (the lock call is awaited) or "std".
    pub kind: &'static str,
    /// Offset of the `let`.
    pub at: usize,
    /// Offset just after the statement's `;`.
    pub statement_end: usize,
}

/// Every `let NAME = <lock call>;` in masked `code`.
pub fn lock_bindings(code: &str) -> Vec<LockBinding> {
    let mut found = Vec::new();
    for at in find_word(code, "let") {
        let Some(semi) = statement_end(code, at + 3) else {
            continue;
        };
        let statement = &code[at + 3..semi];
        // The pattern ends at the first lone `=` (a type may follow the name).
        let Some(eq) = lone_eq(statement) else {
            continue;
        };
        let pattern = statement[..eq].split(':').next().unwrap().trim();
        let name = pattern.strip_prefix("mut ").unwrap_or(pattern).trim();
        // `_` drops at once; a pattern that is not a plain name is left alone.
        if name == "_" || name.is_empty() || !name.bytes().all(is_ident) {
            continue;
        }
        if let Some(kind) = lock_call(&statement[eq + 1..]) {
            found.push(LockBinding {
                name: name.to_string(),
                kind,
                at,
                statement_end: semi + 1,
            });
        }
    }
    found
}

/// Whether `expr` ends in a lock call, possibly followed by `.await`, `?`, `.unwrap()`,
/// `.expect(..)` or `.unwrap_or_else(..)` (which keep the guard); anything else after it
/// (a field, another method) makes the guard a temporary that dies with the statement.
fn lock_call(expr: &str) -> Option<&'static str> {
    let mut e = expr.trim();
    let mut awaited = false;
    loop {
        if let Some(rest) = e.strip_suffix('?') {
            e = rest.trim_end();
        } else if let Some(rest) = e.strip_suffix(".await") {
            awaited = true;
            e = rest.trim_end();
        } else if e.ends_with(')') {
            let open = matching_open(e, e.len() - 1)?;
            let args = e[open + 1..e.len() - 1].trim();
            let before = e[..open].trim_end();
            let name_at = before
                .bytes()
                .rposition(|b| !is_ident(b))
                .map_or(0, |i| i + 1);
            let name = &before[name_at..];
            let receiver = before[..name_at].trim_end();
            let method = receiver.ends_with('.');
            let kind = if awaited { "tokio" } else { "std" };
            return match name {
                "unwrap" | "expect" | "unwrap_or_else" if method => {
                    e = receiver[..receiver.len() - 1].trim_end();
                    continue;
                }
                "lock" | "try_lock" | "blocking_lock" => Some(kind),
                "read" | "write" | "try_read" | "try_write" | "blocking_read"
                | "blocking_write"
                    if method && args.is_empty() =>
                {
                    Some(kind)
                }
                // Wrappers such as `lock_cache(&CACHE)` that hand out a guard.
                n if n.starts_with("lock_") => Some(kind),
                _ => None,
            };
        } else {
            return None;
        }
    }
}

/// Offset of the `;` ending the statement that starts at `from` (bracket depth 0).
fn statement_end(code: &str, from: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, b) in code.bytes().enumerate().skip(from) {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            b';' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// Offset of the first `=` that is an assignment (not `==`, `=>`, `<=`, `>=`, `!=`, `..=`).
fn lone_eq(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b'='
            && !matches!(b.get(i + 1), Some(b'=' | b'>'))
            && !(i > 0 && matches!(b[i - 1], b'=' | b'<' | b'>' | b'!' | b'.'))
    })
}

/// Offset of the `{` of the innermost block around `at`.
fn enclosing_block(code: &str, at: usize) -> Option<usize> {
    let bytes = code.as_bytes();
    let mut depth = 0usize;
    for i in (0..at).rev() {
        match bytes[i] {
            b'}' => depth += 1,
            b'{' if depth == 0 => return Some(i),
            b'{' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Byte ranges of the `async { .. }` / `async move { .. }` blocks in `scope` that do not
/// mention `name`.
fn other_futures(scope: &str, name: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    for at in find_word(scope, "async") {
        let mut rest = scope[at + "async".len()..].trim_start();
        if let Some(r) = rest.strip_prefix("move") {
            rest = r.trim_start();
        }
        if !rest.starts_with('{') {
            continue;
        }
        let open = scope.len() - rest.len();
        if let Some(close) = matching_close(scope, open) {
            if find_word(&scope[open..close], name).is_empty() {
                ranges.push(at..close);
            }
        }
    }
    ranges
}

/// Offset of the first `drop(name)` in `scope`.
fn drops(scope: &str, name: &str) -> Option<usize> {
    find_word(scope, "drop").into_iter().find(|&at| {
        let rest = scope[at + 4..].trim_start();
        rest.strip_prefix('(')
            .and_then(|r| r.trim_start().strip_prefix(name))
            .is_some_and(|r| r.trim_start().starts_with(')'))
    })
}

/// Calls that lose data when their future is dropped before it completes.
pub const CANCEL_UNSAFE: [&str; 12] = [
    "read_exact",
    "write_all",
    "read_line",
    "read_until",
    "read_to_end",
    "read_to_string",
    "read_buf",
    "write_buf",
    "write_all_buf",
    "copy",
    "copy_buf",
    "copy_bidirectional",
];

/// One arm of a `select!`: `pattern = future [, if condition] => handler`.
pub struct SelectArm {
    /// Offset of the future expression in the file, and its text.
    pub future_at: usize,
    pub future: String,
}

/// The arms of every `select!` in masked `code`; `Err(offset)` for a body that does not
/// parse (reported, so that the rule cannot silently pass over it).
pub fn select_arms(code: &str) -> Vec<Result<SelectArm, usize>> {
    let mut arms = Vec::new();
    for at in find_word(code, "select") {
        let after = &code[at + "select".len()..];
        let Some(rest) = after.strip_prefix('!') else {
            continue;
        };
        let open = at + "select!".len() + (rest.len() - rest.trim_start().len());
        if !matches!(code.as_bytes().get(open), Some(b'{' | b'(' | b'[')) {
            continue;
        }
        let Some(close) = matching_close(code, open) else {
            arms.push(Err(at));
            continue;
        };
        let body_at = open + 1;
        let body = &code[body_at..close];
        let mut i = skip_ws(body, 0);
        if body[i..].starts_with("biased") {
            let after = skip_ws(body, i + "biased".len());
            if body[after..].starts_with(';') {
                i = after + 1;
            }
        }
        loop {
            i = skip_ws(body, i);
            if i >= body.len() {
                break;
            }
            let Some(arrow) = find_top_level(body, i, "=>") else {
                arms.push(Err(body_at + i));
                break;
            };
            let head = &body[i..arrow];
            if head.trim() != "else" {
                match lone_eq(head) {
                    Some(eq) => {
                        let future = split_top_level(&head[eq + 1..], b',')[0];
                        arms.push(Ok(SelectArm {
                            future_at: body_at + i + eq + 1,
                            future: future.to_string(),
                        }));
                    }
                    None => arms.push(Err(body_at + i)),
                }
            }
            // The handler: a block (and an optional comma) or an expression up to a comma.
            let h = skip_ws(body, arrow + 2);
            i = if body[h..].starts_with('{') {
                match matching_close(body, h) {
                    Some(end) => {
                        let next = skip_ws(body, end + 1);
                        if body[next..].starts_with(',') {
                            next + 1
                        } else {
                            next
                        }
                    }
                    None => {
                        arms.push(Err(body_at + h));
                        break;
                    }
                }
            } else {
                match find_top_level(body, h, ",") {
                    Some(comma) => comma + 1,
                    None => body.len(),
                }
            };
        }
    }
    arms
}

/// `select!` arms whose future calls a cancel-unsafe function: when another arm wins, the
/// future is dropped mid-way and what it had read (or written) is lost.
pub fn cancel_unsafe_select_arms(file: &str, src: &str) -> Vec<Finding> {
    let code = mask::rust(src).code;
    let mut findings = Vec::new();
    for arm in select_arms(&code) {
        let arm = match arm {
            Ok(arm) => arm,
            Err(at) => {
                findings.push(Finding {
                    file: file.to_string(),
                    line: line_of(&code, at),
                    message:
                        "a select! body this lint cannot parse: check it by hand, or simplify it"
                            .into(),
                });
                continue;
            }
        };
        for name in CANCEL_UNSAFE {
            for at in find_word(&arm.future, name) {
                let called = arm.future[at + name.len()..].trim_start().starts_with('(');
                let before = arm.future[..at].trim_end();
                // `copy` and friends are free functions (tokio::io::copy); a method of that
                // name is something else.
                let some_other_copy = name.starts_with("copy") && before.ends_with('.');
                if called && !some_other_copy {
                    findings.push(Finding {
                        file: file.to_string(),
                        line: line_of(&code, arm.future_at + at),
                        message: format!(
                            "`{name}(..)` directly in a select! arm is not cancel-safe: when another arm wins, the data it had already read or written is lost; keep the future across rounds (pinned outside the loop) or use a cancel-safe call"
                        ),
                    });
                }
            }
        }
    }
    findings
}

/// Timer calls of the project's audit rule.
pub const TIMERS: [&str; 6] = [
    "sleep",
    "sleep_until",
    "timeout",
    "timeout_at",
    "interval",
    "interval_at",
];

/// Every timer call (outside `#[cfg(test)]` items) carries a comment with `not polling:` on
/// its line or one of the 3 lines above: the project wakes on events, and each timer says
/// why it is not a poll.
pub fn timers_without_note(file: &str, src: &str) -> Vec<Finding> {
    let masked = mask::rust(src);
    let code = &masked.code;
    let skipped = cfg_test_items(code);
    let mut findings = Vec::new();
    for name in TIMERS {
        for at in find_word(code, name) {
            let called = code[at + name.len()..].trim_start().starts_with('(');
            let defined = code[..at].trim_end().ends_with("fn");
            if !called || defined || skipped.iter().any(|r| r.contains(&at)) {
                continue;
            }
            let line = line_of(code, at);
            if !noted(&masked.comments, line, "not polling:") {
                findings.push(Finding {
                    file: file.to_string(),
                    line,
                    message: format!(
                        "`{name}(..)` without a `// not polling: <why>` comment on its line or the 3 lines above"
                    ),
                });
            }
        }
    }
    findings.sort_by_key(|f| f.line);
    findings
}

/// Byte ranges of the items under `#[cfg(test)]` (a test module, a test-only function).
pub fn cfg_test_items(code: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    for (at, _) in code.match_indices("#[cfg(test)]") {
        let from = at + "#[cfg(test)]".len();
        let end = code[from..]
            .find(['{', ';'])
            .map(|n| from + n)
            .and_then(|i| {
                if code.as_bytes()[i] == b'{' {
                    matching_close(code, i)
                } else {
                    Some(i)
                }
            })
            .unwrap_or(code.len());
        ranges.push(at..end + 1);
    }
    ranges
}

/// Offset of the first non-whitespace byte of `text` at or after `from`.
fn skip_ws(text: &str, from: usize) -> usize {
    let from = from.min(text.len());
    text.len() - text[from..].trim_start().len()
}

/// Offset of the first `pattern` at bracket depth 0 from `from`.
fn find_top_level(text: &str, from: usize, pattern: &str) -> Option<usize> {
    let mut depth = 0i32;
    let bytes = text.as_bytes();
    for i in from..bytes.len() {
        match bytes[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ if depth == 0 && bytes[i..].starts_with(pattern.as_bytes()) => return Some(i),
            _ => {}
        }
    }
    None
}
