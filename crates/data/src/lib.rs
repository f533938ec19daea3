//! Text in, integer batches out: everything karnna knows about its training data.
//!
//! This crate reads a UTF-8 text the way the notebook's Python text mode does (CRLF and lone CR
//! become LF), builds the character [`Vocab`] (sorted, so ids are the same on every run, and
//! serializable so checkpoints can carry it), prepares the text once into a compact file of ids
//! that every run memory-maps ([`prepare()`], [`Ids`]: a text of any size, streamed, never held
//! whole in memory), splits it into training and validation parts, and cuts each part into
//! batches in the notebook's `get_batches` layout ([`Batches`]), read as windows of the map.
//!
//! It must not depend on Burn or on any tensor type: batches are plain `Vec<u32>`, so the logic
//! is tested without a backend and the `model` crate decides how ids become tensors.

mod batches;
mod ids;
pub mod prepare;
mod stream;
mod text;
mod vocab;

pub use batches::{min_text_len, split_len, spread, Batch, Batches, Split, ValSplit};
pub use ids::{Ids, Width};
pub use prepare::{prepare, Prepared, Want};
pub use text::{join_texts, load_text, normalize_newlines, text_files, with_separator, DataError};
pub use vocab::{UnknownChars, Vocab, VocabError};
