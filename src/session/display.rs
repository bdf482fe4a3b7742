//! Rich outputs of an execution as the session reports them: a [`Display`] (from `display()`,
//! a matplotlib figure, a rich value in the REPL) and the MIME bundle a result may carry, and
//! the per-display size limit ([`SessionConfig::max_display_bytes`]) that the core applies to
//! both before they reach a client.
//!
//! [`SessionConfig::max_display_bytes`]: super::SessionConfig::max_display_bytes

use serde_json::Value;

pub use crate::protocol::MimeBundle;

/// Default of `SessionConfig::max_display_bytes`: a large plot is ~100 KB, a big HTML table
/// a few MB.
pub const DEFAULT_MAX_DISPLAY_BYTES: usize = 8 * 1024 * 1024;

/// A MIME bundle with its metadata: what a result carries when its value has
/// representations beyond its repr.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub data: MimeBundle,
    pub metadata: MimeBundle,
}

impl Bundle {
    /// Itself, or `None` when larger than `limit` (the result's repr stays).
    pub(crate) fn within(self, limit: usize) -> Option<Bundle> {
        (bundle_size(&self.data) + bundle_size(&self.metadata) <= limit).then_some(self)
    }
}

/// One rich output: what `display(obj)` showed.
#[derive(Debug, Clone, PartialEq)]
pub struct Display {
    /// MIME type → content: text, base64 text for binary types (`image/png`), JSON for
    /// `application/json`. Always has `text/plain`.
    pub data: MimeBundle,
    pub metadata: MimeBundle,
    /// Set by `display(..., display_id=...)`; a later display with the same id and `update`
    /// replaces this one where it is shown.
    pub display_id: Option<String>,
    pub update: bool,
}

impl Display {
    /// Bytes of the bundle's content (strings by length, other JSON by its text).
    pub fn size(&self) -> usize {
        bundle_size(&self.data) + bundle_size(&self.metadata)
    }

    /// Itself, or when larger than `limit` a text saying it was left out (as `text/plain`,
    /// so every front end shows it).
    pub(crate) fn within(self, limit: usize) -> Display {
        let size = self.size();
        if size <= limit {
            return self;
        }
        let mut data = MimeBundle::new();
        data.insert("text/plain".into(), Value::String(too_large(size, limit)));
        Display {
            data,
            metadata: MimeBundle::new(),
            ..self
        }
    }
}

/// The note that replaces a display over the limit.
pub(crate) fn too_large(size: usize, limit: usize) -> String {
    format!("[pyrepl3: a display of {size} bytes was left out: the limit is {limit} bytes (max_display_bytes)]")
}

/// Bytes of a bundle's content: what a client is sent, give or take the JSON syntax.
pub fn bundle_size(bundle: &MimeBundle) -> usize {
    bundle
        .iter()
        .map(|(mime, value)| {
            mime.len()
                + match value {
                    Value::String(text) => text.len(),
                    other => other.to_string().len(),
                }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn display(text: &str, png: &str) -> Display {
        let mut data = MimeBundle::new();
        data.insert("text/plain".into(), text.into());
        data.insert("image/png".into(), png.into());
        Display {
            data,
            metadata: MimeBundle::new(),
            display_id: Some("d".into()),
            update: false,
        }
    }

    #[test]
    fn a_display_over_the_limit_becomes_a_note_and_keeps_its_id() {
        let small = display("<Figure>", "iVBOR");
        assert_eq!(small.clone().within(1000), small);
        let big = display("<Figure>", &"A".repeat(5000)).within(1000);
        assert_eq!(big.data.len(), 1, "{big:?}");
        let note = big.data["text/plain"].as_str().unwrap_or_default();
        assert!(note.contains("the limit is 1000 bytes"), "{note}");
        assert_eq!(big.display_id.as_deref(), Some("d"));
    }
}
