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
        offset: u64,
    },
    /// A text holds characters that a given vocabulary (a resumed checkpoint's) lacks.
    #[error("{}: {unknown}, which the checkpoint's vocabulary lacks", text.display())]
    NotInVocab {
        /// The file, or "N files".
        text: PathBuf,
        /// The characters, in order of first appearance.
        unknown: crate::UnknownChars,
    },
    /// The prepared-text cache could not be read or written.
    #[error("{}: cannot write the prepared text: {source}", path.display())]
    Cache {
        /// The file or folder in the cache.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A stop was requested (a signal) while the text was being prepared.
    #[error("stopped while preparing the text")]
    Interrupted,
    /// The file holds no characters.
    #[error("{}: the file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A folder given as data holds no `.txt` file.
    #[error("{}: no .txt files in this folder", path.display())]
    NoTextFiles {
        /// The folder.
        path: PathBuf,
    },
    /// The text cannot fill even one batch of the configured size.
    #[error("{}: too short: {chars} characters, but batches of {n_seqs}x{n_steps}{split} need at least {need}", path.display())]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Characters in the file (after newline normalisation).
        chars: u64,
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

impl DataError {
    /// What went wrong reading `path`: [`DataError::Missing`] when it does not exist, else
    /// [`DataError::Io`] with the operating system's words. For `map_err`.
    pub fn reading(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
        move |source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::Missing {
                path: path.to_owned(),
            },
            _ => DataError::Io {
                path: path.to_owned(),
                source,
            },
        }
    }
}

/// Reads `path` as UTF-8 text with the newlines normalised (see [`normalize_newlines`]) and a
/// leading byte-order mark removed.
///
/// Errors: missing file, unreadable file, invalid UTF-8 (with the byte offset), empty text.
pub fn load_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(DataError::reading(path))?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: path.to_owned(),
        offset: e.utf8_error().valid_up_to() as u64,
    })?;
    let text = normalize_newlines(text.strip_prefix('\u{feff}').unwrap_or(&text));
    if text.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// The text files `paths` name, in order: a file as it is, a folder as the `.txt` files directly
/// inside it, sorted by name (subfolders are not searched).
///
/// Errors: a path that does not exist, an unreadable folder, a folder without `.txt` files.
pub fn text_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            if !path.exists() {
                return Err(DataError::Missing { path: path.clone() });
            }
            files.push(path.clone());
            continue;
        }
        let io = |source| DataError::Io {
            path: path.clone(),
            source,
        };
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()).map_err(io))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt"))
            .collect();
        if found.is_empty() {
            return Err(DataError::NoTextFiles { path: path.clone() });
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Several texts as one training text: each ends with a newline (one is added where it lacks
/// one) and an empty line separates one from the next, so a file's last line never runs into
/// the next file's first and no character outside the files is introduced. A single text is
/// returned as it is.
pub fn join_texts(texts: &[String]) -> String {
    if let [one] = texts {
        return one.clone();
    }
    let mut joined = String::with_capacity(texts.iter().map(|t| t.len() + 2).sum());
    for (i, text) in texts.iter().enumerate() {
        joined.push_str(&with_separator(text, i + 1 == texts.len()));
    }
    joined
}

/// `text` as it appears in [`join_texts`]'s output: with its final newline and, unless it is
/// the last text, the empty line after it.
pub fn with_separator(text: &str, last: bool) -> String {
    let mut out = text.to_owned();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if !last {
        out.push('\n');
    }
    out
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
    fn folders_give_their_txt_files_sorted() {
        let dir = std::env::temp_dir().join(format!("karnna-folder-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in ["b.txt", "a.txt", "c.md", "sub/d.txt"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let extra = temp_file("extra.txt", b"y");
        let files = text_files(&[dir.clone(), extra.clone()]).unwrap();
        assert_eq!(files, vec![dir.join("a.txt"), dir.join("b.txt"), extra]);
        let empty = dir.join("sub/empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = text_files(std::slice::from_ref(&empty)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no .txt files in this folder", empty.display())
        );
        let err = text_files(&[dir.join("nope")]).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }));
    }

    #[test]
    fn texts_join_with_an_empty_line() {
        let texts = ["one".to_string(), "two\n".to_string(), "three".to_string()];
        assert_eq!(join_texts(&texts), "one\n\ntwo\n\nthree\n");
        assert_eq!(join_texts(&texts[..1]), "one");
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
