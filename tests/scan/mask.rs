//! Masking: a source file becomes two texts of the same length and lines, `code` (comments
//! and the contents of string and character literals blanked) and `comments` (only the
//! comments), so a rule can look for code in code and for notes in comments.

use super::is_ident;

pub struct Masked {
    pub code: String,
    pub comments: String,
}

struct Builder<'a> {
    src: &'a [u8],
    code: Vec<u8>,
    comments: Vec<u8>,
}

impl<'a> Builder<'a> {
    fn new(src: &'a str) -> Builder<'a> {
        let src = src.as_bytes();
        Builder {
            src,
            code: src.to_vec(),
            comments: src
                .iter()
                .map(|b| if *b == b'\n' { b'\n' } else { b' ' })
                .collect(),
        }
    }

    /// Blanks `range` in the code (newlines stay).
    fn blank(&mut self, from: usize, to: usize) {
        for b in &mut self.code[from..to.min(self.src.len())] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }

    /// Moves `range` from the code to the comments.
    fn comment(&mut self, from: usize, to: usize) {
        let to = to.min(self.src.len());
        self.comments[from..to].copy_from_slice(&self.src[from..to]);
        self.blank(from, to);
    }

    fn finish(self) -> Masked {
        // Whole literals and comments were blanked or copied, so both stay valid UTF-8.
        Masked {
            code: String::from_utf8(self.code).unwrap(),
            comments: String::from_utf8(self.comments).unwrap(),
        }
    }
}

/// End (exclusive) of a quoted literal whose contents start at `from`, closed by `quote`;
/// a backslash escapes the next byte unless `raw`.
fn quoted_end(src: &[u8], from: usize, quote: &[u8], raw: bool) -> usize {
    let mut i = from;
    while i < src.len() {
        if !raw && src[i] == b'\\' {
            i += 2;
        } else if src[i..].starts_with(quote) {
            return i + quote.len();
        } else {
            i += 1;
        }
    }
    src.len()
}

pub fn rust(src: &str) -> Masked {
    let mut m = Builder::new(src);
    let s = m.src;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'/' if s.get(i + 1) == Some(&b'/') => {
                let end = s[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(s.len(), |n| i + n);
                m.comment(i, end);
                i = end;
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                // Block comments nest in Rust.
                let (mut depth, mut j) = (0, i);
                while j < s.len() {
                    if s[j..].starts_with(b"/*") {
                        depth += 1;
                        j += 2;
                    } else if s[j..].starts_with(b"*/") {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                m.comment(i, j);
                i = j;
            }
            b'"' => {
                let end = quoted_end(s, i + 1, b"\"", false);
                m.blank(i + 1, end - 1);
                i = end;
            }
            b'\'' => {
                // A character literal ('x', '\n', '\u{..}'), else a lifetime or label.
                let end = if s.get(i + 1) == Some(&b'\\') {
                    Some(quoted_end(s, i + 1, b"'", false))
                } else {
                    // One character (1 to 4 bytes of UTF-8), then the closing quote.
                    let width = match s.get(i + 1) {
                        Some(b) if *b < 0x80 => 1,
                        Some(b) if *b >= 0xf0 => 4,
                        Some(b) if *b >= 0xe0 => 3,
                        _ => 2,
                    };
                    (s.get(i + 1 + width) == Some(&b'\'')).then_some(i + 2 + width)
                };
                match end {
                    Some(end) => {
                        m.blank(i + 1, end - 1);
                        i = end;
                    }
                    None => i += 1,
                }
            }
            b if is_ident(b) => {
                let start = i;
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
                let word = &s[start..i];
                // Raw strings r"..", r#".."#, br"..", cr"..".
                if matches!(word, b"r" | b"br" | b"cr") && matches!(s.get(i), Some(b'"' | b'#')) {
                    let hashes = s[i..].iter().take_while(|b| **b == b'#').count();
                    if s.get(i + hashes) == Some(&b'"') {
                        let mut close = vec![b'"'];
                        close.extend(std::iter::repeat_n(b'#', hashes));
                        let end = quoted_end(s, i + hashes + 1, &close, true);
                        m.blank(i + hashes + 1, end - close.len());
                        i = end;
                    }
                }
                // b"..", c"..", b'.' are handled as plain literals on the next round.
            }
            _ => i += 1,
        }
    }
    m.finish()
}

pub fn python(src: &str) -> Masked {
    let mut m = Builder::new(src);
    let s = m.src;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'#' => {
                let end = s[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(s.len(), |n| i + n);
                m.comment(i, end);
                i = end;
            }
            q @ (b'"' | b'\'') => {
                // Prefixes (r, b, f, u and their mixes) are identifiers just before: code.
                let triple = [q, q, q];
                let (quote, open): (&[u8], usize) = if s[i..].starts_with(&triple) {
                    (&triple, 3)
                } else {
                    (std::slice::from_ref(&s[i]), 1)
                };
                let end = quoted_end(s, i + open, quote, false);
                m.blank(i + open, end.saturating_sub(quote.len()).max(i + open));
                i = end;
            }
            b if is_ident(b) => {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    m.finish()
}
