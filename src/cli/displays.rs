//! Rich outputs in a terminal (`exec` and `repl` in text mode): a display's text is printed,
//! and its images (and PDFs) are saved as files in the display directory (`--display-dir`,
//! by default a new directory in the system's temporary directory, made at the first image
//! and kept after exit so the files can be opened), each saved path printed after the text.

use std::path::PathBuf;

use base64::Engine as _;

use crate::session::MimeBundle;

/// The MIME types saved as files, and the extension each gets.
const SAVED_TYPES: [(&str, &str); 5] = [
    ("image/png", "png"),
    ("image/jpeg", "jpg"),
    ("image/gif", "gif"),
    ("image/svg+xml", "svg"),
    ("application/pdf", "pdf"),
];

/// Where a session's images go, and how many were saved so far.
pub struct DisplayFiles {
    /// Given with `--display-dir`, or made at the first image.
    dir: Option<PathBuf>,
    saved: u32,
}

impl DisplayFiles {
    pub fn new(dir: Option<PathBuf>) -> Self {
        DisplayFiles { dir, saved: 0 }
    }

    /// The lines a terminal shows for a bundle: its `text/plain` (unless empty, or `skip_text`:
    /// a result whose repr is printed anyway), then `[display: TYPE saved to PATH]` for its
    /// picture: the first of the saved types it has (a PIL image comes as PNG and JPEG: one
    /// file). A file that cannot be written is said so instead.
    pub fn render(&mut self, data: &MimeBundle, skip_text: bool) -> String {
        let mut shown = String::new();
        if !skip_text {
            if let Some(text) = data
                .get("text/plain")
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
            {
                shown.push_str(text);
                if !text.ends_with('\n') {
                    shown.push('\n');
                }
            }
        }
        for (mime, extension) in SAVED_TYPES {
            let Some(content) = data.get(mime).and_then(|c| c.as_str()) else {
                continue;
            };
            match self.save(mime, extension, content) {
                Ok(path) => {
                    shown.push_str(&format!("[display: {mime} saved to {}]\n", path.display()))
                }
                Err(e) => shown.push_str(&format!("[display: {mime} not saved: {e}]\n")),
            }
            break;
        }
        shown
    }

    fn save(&mut self, mime: &str, extension: &str, content: &str) -> Result<PathBuf, String> {
        // SVG is text; the other types are base64, as the protocol carries them.
        let bytes = if mime == "image/svg+xml" {
            content.as_bytes().to_vec()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .map_err(|e| format!("not base64: {e}"))?
        };
        let dir = self.dir()?;
        // The next free number: a directory used before keeps its files.
        loop {
            self.saved += 1;
            let path = dir.join(format!("display-{}.{extension}", self.saved));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match file {
                Ok(mut file) => {
                    use std::io::Write;
                    file.write_all(&bytes)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    return Ok(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    }

    fn dir(&mut self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.dir {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            return Ok(dir.clone());
        }
        let made = tempfile::Builder::new()
            .prefix("pyrepl3-display-")
            .tempdir()
            .map_err(|e| format!("making a directory for images: {e}"))?
            .keep();
        self.dir = Some(made.clone());
        Ok(made)
    }

    /// The directory images went to, if any was saved.
    #[cfg(test)]
    fn saved_in(&self) -> Option<&std::path::Path> {
        self.dir.as_deref().filter(|_| self.saved > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_printed_and_images_are_saved_decoded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut files = DisplayFiles::new(Some(tmp.path().join("out")));
        let mut data = MimeBundle::new();
        data.insert(
            "text/plain".into(),
            "<Figure size 640x480 with 1 Axes>".into(),
        );
        data.insert("image/png".into(), "iVBORw0KGgo=".into());
        data.insert("text/html".into(), "<b>x</b>".into());
        let shown = files.render(&data, false);
        let png = tmp.path().join("out/display-1.png");
        assert_eq!(
            shown,
            format!(
                "<Figure size 640x480 with 1 Axes>\n[display: image/png saved to {}]\n",
                png.display()
            )
        );
        assert_eq!(std::fs::read(&png).unwrap(), b"\x89PNG\r\n\x1a\n");
        assert_eq!(files.saved_in(), Some(tmp.path().join("out").as_path()));
        // A directory used before: the files there are kept, the next number is taken.
        let mut again = DisplayFiles::new(Some(tmp.path().join("out")));
        let shown = again.render(&data, true);
        assert!(shown.contains("display-2.png"), "{shown}");
        assert_eq!(std::fs::read(&png).unwrap(), b"\x89PNG\r\n\x1a\n");
        // Bad base64 is said, not a panic; the text is left to the caller.
        data.insert("image/png".into(), "%%%".into());
        let shown = files.render(&data, true);
        assert!(
            shown.starts_with("[display: image/png not saved: not base64"),
            "{shown}"
        );
    }
}
