//! The character vocabulary.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// The characters a model knows, in sorted (code point) order; a character's id is its index.
///
/// Sorting makes ids deterministic (the notebook's `set()` order changes from run to run). Any
/// Unicode text works: a Chinese novel with thousands of distinct characters is a normal input.
/// It serializes as one string holding every character once, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Vocab {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

/// A string held characters that the vocabulary lacks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("characters not in the vocabulary: {}", describe(.0))]
pub struct UnknownChars(pub Vec<char>);

/// A serialized vocabulary that is not sorted or not unique, or is empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid vocabulary: {0}")]
pub struct VocabError(String);

fn describe(chars: &[char]) -> String {
    chars
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Vocab {
    /// The vocabulary of every distinct character in `text`.
    pub fn from_text(text: &str) -> Self {
        Self::from_chars(text.chars())
    }

    /// The vocabulary of the distinct characters among `chars` (in any order, repeats allowed).
    pub fn from_chars(chars: impl IntoIterator<Item = char>) -> Self {
        let set: BTreeSet<char> = chars.into_iter().collect();
        Self::from_sorted(set.into_iter().collect())
    }

    fn from_sorted(chars: Vec<char>) -> Self {
        let ids = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        Self { chars, ids }
    }

    /// Number of distinct characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// True when the vocabulary has no characters (never for one built from a non-empty text).
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The id of `c`, if the vocabulary has it.
    pub fn id(&self, c: char) -> Option<u32> {
        self.ids.get(&c).copied()
    }

    /// The character with id `id`. Panics when `id >= len()`.
    pub fn char(&self, id: u32) -> char {
        self.chars[id as usize]
    }

    /// Every character, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Encodes `text`, or names every distinct character the vocabulary lacks (in order of
    /// first appearance).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, UnknownChars> {
        let mut ids = Vec::with_capacity(text.len());
        let mut unknown = Vec::new();
        for c in text.chars() {
            match self.id(c) {
                Some(id) => ids.push(id),
                None if !unknown.contains(&c) => unknown.push(c),
                None => {}
            }
        }
        if unknown.is_empty() {
            Ok(ids)
        } else {
            Err(UnknownChars(unknown))
        }
    }

    /// Decodes ids back into text. Panics on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&id| self.char(id)).collect()
    }
}

impl From<Vocab> for String {
    fn from(vocab: Vocab) -> String {
        vocab.chars.into_iter().collect()
    }
}

impl TryFrom<String> for Vocab {
    type Error = VocabError;

    fn try_from(s: String) -> Result<Self, VocabError> {
        let chars: Vec<char> = s.chars().collect();
        if chars.is_empty() {
            return Err(VocabError("it is empty".into()));
        }
        if let Some(w) = chars.windows(2).find(|w| w[0] >= w[1]) {
            return Err(VocabError(format!(
                "characters out of order or repeated at {:?}, {:?}",
                w[0], w[1]
            )));
        }
        Ok(Self::from_sorted(chars))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_round_trips() {
        let v = Vocab::from_text("hello world");
        assert_eq!(v.chars(), &[' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
        let ids = v.encode("hello").unwrap();
        assert_eq!(ids, vec![3, 2, 4, 4, 5]);
        assert_eq!(v.decode(&ids), "hello");
    }

    #[test]
    fn unknown_characters_are_named_once() {
        let v = Vocab::from_text("abc");
        let err = v.encode("axbyx").unwrap_err();
        assert_eq!(err.0, vec!['x', 'y']);
        assert_eq!(
            err.to_string(),
            "characters not in the vocabulary: 'x', 'y'"
        );
    }

    #[test]
    fn thousands_of_chinese_characters() {
        // Every CJK unified ideograph from U+4E00 on, 5,000 of them, shuffled by a stride.
        let text: String = (0..5000u32)
            .map(|i| char::from_u32(0x4E00 + (i * 7919) % 5000).unwrap())
            .collect();
        let v = Vocab::from_text(&text);
        assert_eq!(v.len(), 5000);
        assert_eq!(v.char(0), '\u{4E00}');
        assert_eq!(v.decode(&v.encode(&text).unwrap()), text);
    }

    #[test]
    fn serializes_as_a_string_and_validates() {
        let v = Vocab::from_text("ba\n字");
        let s: String = v.clone().into();
        assert_eq!(s, "\nab字");
        assert_eq!(Vocab::try_from(s).unwrap(), v);
        assert!(Vocab::try_from("ba".to_string()).is_err());
        assert!(Vocab::try_from("aa".to_string()).is_err());
        assert!(Vocab::try_from(String::new()).is_err());
    }
}
