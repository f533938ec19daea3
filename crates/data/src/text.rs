//! Reading a training text from disk.

use std::path::{Path, PathBuf};

/// Everything that can be wrong with a training text. Each message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file does not exist.
    #[error("{}: no such file", path.display())]
    Missing {
        /// The path that was asked for.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The bytes are not UTF-8.
    #[error("{}: not valid UTF-8 at byte {offset}", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The file holds no characters.
    #[error("{}: the file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The text cannot fill even one batch of the configured size.
    #[error("{}: too short: {chars} characters, but batches of {n_seqs}x{n_steps}{split} need at least {need}", path.display())]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Characters in the file (after newline normalisation).
        chars: usize,
        /// Rows per batch (`batch_size`).
        n_seqs: usize,
        /// Steps per batch (`num_steps`).
        n_steps: usize,
        /// A note on the validation split, or empty.
        split: String,
        /// The smallest number of characters that works.
        need: usize,
    },
}

/// Reads `path` as UTF-8 text with the newlines normalised (see [`normalize_newlines`]) and a
/// leading byte-order mark removed.
///
/// Errors: missing file, unreadable file, invalid UTF-8 (with the byte offset), empty text.
pub fn load_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_owned(),
        },
        _ => DataError::Io {
            path: path.to_owned(),
            source,
        },
    })?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: path.to_owned(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    let text = normalize_newlines(text.strip_prefix('\u{feff}').unwrap_or(&text));
    if text.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// Turns CRLF and lone CR into LF, as Python's text mode (universal newlines) does when the
/// notebook opens `anna.txt`.
pub fn normalize_newlines(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("karnna-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn newlines_become_lf() {
        assert_eq!(normalize_newlines("a\r\nb\rc\n"), "a\nb\nc\n");
        assert_eq!(normalize_newlines("\r\n\r\n"), "\n\n");
        assert_eq!(normalize_newlines("plain"), "plain");
    }

    #[test]
    fn missing_file_is_named() {
        let err = load_text(Path::new("/nonexistent/karnna.txt")).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }));
        assert_eq!(err.to_string(), "/nonexistent/karnna.txt: no such file");
    }

    #[test]
    fn invalid_utf8_reports_offset() {
        let path = temp_file("bad.txt", b"hello \xff world");
        let err = load_text(&path).unwrap_err();
        assert!(matches!(err, DataError::NotUtf8 { offset: 6, .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("bad.txt: not valid UTF-8 at byte 6"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_an_error() {
        let path = temp_file("empty.txt", b"\xef\xbb\xbf");
        assert!(matches!(
            load_text(&path).unwrap_err(),
            DataError::Empty { .. }
        ));
    }

    #[test]
    fn crlf_file_loads_as_lf() {
        let path = temp_file("crlf.txt", "Счастливые семьи\r\n".as_bytes());
        assert_eq!(load_text(&path).unwrap(), "Счастливые семьи\n");
    }
}
