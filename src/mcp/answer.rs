//! A tool answer as it is gathered from a run's events, within bounds: the text the agent
//! reads (output, then the result or traceback whole) and the images it sees.

use rmcp::model::ContentBlock;

use crate::MimeBundle;

/// Characters of output text a tool answer keeps (an agent's context is precious); the rest
/// is said to be left out.
pub const MAX_TEXT: usize = 100_000;
/// Images one answer carries at most, and their base64 bytes in all; the rest is said to be
/// left out.
pub const MAX_IMAGES: usize = 10;
pub const MAX_IMAGE_BYTES: usize = 16 << 20;
/// Notes (e.g. that `input()` was not available) one answer carries at most.
const MAX_NOTES: usize = 4;

/// Text up to [`MAX_TEXT`] characters (the rest only counted, never held), images up to
/// [`MAX_IMAGES`] and [`MAX_IMAGE_BYTES`], and a few notes said after the output.
#[derive(Default)]
pub struct Answer {
    text: String,
    chars: usize,
    dropped_bytes: usize,
    images: Vec<ContentBlock>,
    image_bytes: usize,
    dropped_images: usize,
    notes: Vec<String>,
}

impl Answer {
    /// Output text; stderr starts on a line of its own.
    pub fn push_output(&mut self, data: &str, stderr: bool) {
        if stderr && !self.text.is_empty() && !self.text.ends_with('\n') {
            self.push_text("\n");
        }
        self.push_text(data);
    }

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

    /// A note for the agent, once (said after the output, before the result).
    pub fn note(&mut self, note: &str) {
        if self.notes.len() < MAX_NOTES && !self.notes.iter().any(|n| n == note) {
            self.notes.push(note.to_string());
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

    /// A display (or a result's rich bundle): an image as image content; without one, its
    /// text (markdown or plain) when `as_text` is set.
    pub fn push_bundle(&mut self, data: &MimeBundle, as_text: bool) {
        let image = ["image/png", "image/jpeg"]
            .into_iter()
            .find_map(|mime| data.get(mime).and_then(|v| v.as_str()).map(|v| (mime, v)));
        match image {
            Some((mime, content)) => self.push_image(content, mime),
            None if as_text => {
                let shown = ["text/markdown", "text/plain"]
                    .into_iter()
                    .find_map(|mime| data.get(mime).and_then(|v| v.as_str()))
                    .unwrap_or("");
                self.push_text(shown);
                if !shown.ends_with('\n') {
                    self.push_text("\n");
                }
            }
            None => {}
        }
    }

    /// The content blocks: the output, what was left out, the notes, then `tail` (the
    /// result or the traceback, never clipped by the output's bound), then the images.
    pub fn into_content(mut self, tail: &str) -> Vec<ContentBlock> {
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
        for note in &self.notes {
            if !self.text.is_empty() && !self.text.ends_with('\n') {
                self.text.push('\n');
            }
            self.text.push_str(&format!("[{note}]\n"));
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

/// `text` cut to [`MAX_TEXT`] characters, saying how much was left out.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((cut, _)) => format!(
            "{}\n[... {} more bytes left out]",
            &text[..cut],
            text.len() - cut
        ),
        None => text.to_string(),
    }
}

/// The last non-empty line of `text`, at most `max` characters (a progress message).
pub fn last_line(text: &str, max: usize) -> Option<String> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.chars().take(max).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_beyond_the_bound_is_counted_not_held() {
        let mut answer = Answer::default();
        answer.push_output(&"a".repeat(MAX_TEXT + 10), false);
        answer.note("a note");
        let content = answer.into_content("Out: 1\n");
        let text = content[0].as_text().map(|t| t.text.clone()).unwrap();
        assert!(text.contains("[... 10 more bytes of output left out]"));
        assert!(text.ends_with("[a note]\nOut: 1\n"));
    }

    #[test]
    fn the_last_line_is_the_progress_message() {
        assert_eq!(last_line("one\ntwo\n\n", 80).as_deref(), Some("two"));
        assert_eq!(last_line("abcdef", 3).as_deref(), Some("abc"));
        assert_eq!(last_line("\n \n", 3), None);
    }
}
