//! Text in, integer batches out: everything karnna knows about its training data.
//!
//! This crate reads a UTF-8 text file the way the notebook's Python text mode does (CRLF and lone
//! CR become LF), builds the character [`Vocab`] (sorted, so ids are the same on every run, and
//! serializable so checkpoints can carry it), splits the text into training and validation parts,
//! and cuts each part into batches in the notebook's `get_batches` layout ([`Batches`]).
//!
//! It must not depend on Burn or on any tensor type: batches are plain `Vec<u32>`, so the logic
//! is tested without a backend and the `model` crate decides how ids become tensors.

mod batches;
mod text;
mod vocab;

pub use batches::{min_text_len, split_len, Batch, Batches, Split, ValSplit};
pub use text::{join_texts, load_text, normalize_newlines, text_files, with_separator, DataError};
pub use vocab::{UnknownChars, Vocab, VocabError};
