//! Source scanners behind `tests/lints.rs`: they read the crate's source as text (no parser
//! crate) with comments and string literals masked out, so each rule matches code only.
//!
//! - `mask`: the masking, for Rust and Python, keeping every byte offset and line.
//! - `rust`: lock guards held across `.await`, cancel-unsafe futures in `select!` arms, timer
//!   calls without their `not polling:` note.
//! - `python`: timer calls in the worker without their note.

pub mod mask;
pub mod python;
pub mod rust;

use std::fmt;
use std::path::{Path, PathBuf};

/// One rule broken at one place; shown as `file:line: message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// The files under `dir` (relative to the crate root) whose name ends with `.{ext}`,
/// recursively, sorted; paths are relative to the crate root.
pub fn source_files(dir: &str, ext: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut pending = vec![root.join(dir)];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                found.push((relative, text));
            }
        }
    }
    found.sort();
    found
}

/// 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

pub fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Offsets of `word` in `code` where it stands as a whole identifier (no identifier byte on
/// either side).
pub fn find_word(code: &str, word: &str) -> Vec<usize> {
    let bytes = code.as_bytes();
    code.match_indices(word)
        .map(|(at, _)| at)
        .filter(|&at| {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(at + word.len()).copied();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
        .collect()
}

/// The offset of the bracket closing the one at `open` (`(`, `[` or `{`), in masked code.
pub fn matching_close(code: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in code.bytes().enumerate().skip(open) {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The offset of the bracket opening the one that closes at `close`, in masked code.
pub fn matching_open(code: &str, close: usize) -> Option<usize> {
    let bytes = code.as_bytes();
    let mut depth = 0usize;
    for i in (0..=close).rev() {
        match bytes[i] {
            b')' | b']' | b'}' => depth += 1,
            b'(' | b'[' | b'{' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The top-level (bracket depth 0) pieces of `code` separated by `sep`.
pub fn split_top_level(code: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, b) in code.bytes().enumerate() {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ if b == sep && depth == 0 => {
                parts.push(&code[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&code[start..]);
    parts
}

/// Whether any of lines `line - 3 ..= line` (1-based) of the comment text holds the note.
pub fn noted(comments: &str, line: usize, note: &str) -> bool {
    comments
        .lines()
        .enumerate()
        .skip(line.saturating_sub(4))
        .take(line.min(4))
        .any(|(_, text)| text.contains(note))
}
