//! Reading texts as a stream of chunks, with exactly what [`crate::load_text`] and
//! [`crate::join_texts`] would give for the whole text: UTF-8 checked (the error names the
//! byte), a leading byte-order mark dropped, CRLF and lone CR read as LF, and between files the
//! separator of `join_texts`. Whatever the chunk size, the characters are the same: a
//! multi-byte character, a CRLF or the BOM split across a chunk edge is put back together.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{DataError, Vocab};

/// Where a stream's text goes.
pub(crate) trait Sink {
    /// `bytes`, raw, the next bytes of file `file` (before decoding).
    fn raw(&mut self, file: usize, bytes: &[u8]);
    /// The next piece of normalized text.
    fn text(&mut self, s: &str);
    /// A chunk of `bytes` bytes was read and its text handed over; an error stops the read
    /// (a stop request, a failed write).
    fn chunk_done(&mut self, bytes: u64) -> Result<(), DataError>;
}

/// Reads `files` in chunks of `chunk` bytes as one text (the files joined as
/// [`crate::join_texts`] does) into `sink`. Returns each file's character count, its separator
/// included.
pub(crate) fn read_texts(
    files: &[PathBuf],
    chunk: usize,
    sink: &mut dyn Sink,
) -> Result<Vec<u64>, DataError> {
    let mut counts = Vec::with_capacity(files.len());
    let several = files.len() > 1;
    for (i, path) in files.iter().enumerate() {
        let mut out = FileText {
            sink: &mut *sink,
            file: i,
            chars: 0,
            last: None,
        };
        read_file(path, chunk, &mut out)?;
        if out.chars == 0 {
            return Err(DataError::Empty {
                path: path.to_owned(),
            });
        }
        // `join_texts`'s separator: a final newline, then an empty line unless last.
        if several {
            if out.last != Some('\n') {
                out.emit("\n");
            }
            if i + 1 < files.len() {
                out.emit("\n");
            }
        }
        counts.push(out.chars);
    }
    Ok(counts)
}

/// One file's way into a [`Sink`], counting its characters and remembering its last.
struct FileText<'a> {
    sink: &'a mut dyn Sink,
    file: usize,
    chars: u64,
    last: Option<char>,
}

impl FileText<'_> {
    fn emit(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.chars += if s.is_ascii() {
            s.len() as u64
        } else {
            s.chars().count() as u64
        };
        self.last = s.chars().next_back();
        self.sink.text(s);
    }
}

/// One file's text, chunk by chunk, normalized ([`Normalize`]) into `out`.
fn read_file(path: &Path, chunk: usize, out: &mut FileText) -> Result<(), DataError> {
    let io = DataError::reading(path);
    let not_utf8 = |offset: u64| DataError::NotUtf8 {
        path: path.to_owned(),
        offset,
    };
    let mut file = std::fs::File::open(path).map_err(&io)?;
    let chunk = chunk.max(1);
    // The bytes of an unfinished character (at most 3) wait at the front for the next chunk.
    let mut buf = vec![0u8; chunk + 4];
    let (mut kept, mut offset) = (0usize, 0u64); // `offset`: the file offset of buf[0]
    let mut normalize = Normalize::default();
    loop {
        let n = match file.read(&mut buf[kept..kept + chunk]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            if kept > 0 {
                return Err(not_utf8(offset)); // the file ends inside a character
            }
            return Ok(());
        }
        out.sink.raw(out.file, &buf[kept..kept + n]);
        let data = &buf[..kept + n];
        let valid = match std::str::from_utf8(data) {
            Ok(s) => s,
            Err(e) if e.error_len().is_none() => {
                std::str::from_utf8(&data[..e.valid_up_to()]).expect("checked up to here")
            }
            Err(e) => return Err(not_utf8(offset + e.valid_up_to() as u64)),
        };
        let used = valid.len();
        normalize.feed(valid, &mut |s| out.emit(s));
        buf.copy_within(used..kept + n, 0);
        (kept, offset) = (kept + n - used, offset + used as u64);
        out.sink.chunk_done(n as u64)?;
    }
}

/// [`crate::normalize_newlines`] and the BOM's removal, on a text that arrives in pieces.
/// A piece with CRs is rewritten into a buffer of its own, so that it still goes out whole.
#[derive(Default)]
struct Normalize {
    /// Some text has been seen (the BOM is dropped only at the very start).
    started: bool,
    /// The last piece ended with CR: a LF starting the next piece belongs to it.
    after_cr: bool,
    /// The rewritten piece.
    buf: String,
}

impl Normalize {
    fn feed(&mut self, mut s: &str, emit: &mut dyn FnMut(&str)) {
        if s.is_empty() {
            return;
        }
        if !self.started {
            self.started = true;
            s = s.strip_prefix('\u{feff}').unwrap_or(s);
        }
        if std::mem::take(&mut self.after_cr) {
            s = s.strip_prefix('\n').unwrap_or(s);
        }
        if !s.contains('\r') {
            emit(s);
            return;
        }
        self.buf.clear();
        while let Some(cr) = s.find('\r') {
            self.buf.push_str(&s[..cr]);
            self.buf.push('\n');
            s = &s[cr + 1..];
            if s.is_empty() {
                self.after_cr = true;
            }
            s = s.strip_prefix('\n').unwrap_or(s);
        }
        self.buf.push_str(s);
        emit(&self.buf);
    }
}

/// The distinct characters of a text in order of first appearance, with how often each occurs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counter {
    /// Occurrences by code point, grown as higher code points appear.
    counts: Vec<u64>,
    /// Every distinct character, in order of first appearance.
    pub(crate) order: Vec<char>,
}

impl Counter {
    pub(crate) fn feed(&mut self, s: &str) {
        if s.is_ascii() {
            self.feed_ascii(s.as_bytes());
            return;
        }
        for c in s.chars() {
            let i = c as usize;
            if i >= self.counts.len() {
                self.counts.resize((i + 1).max(128), 0);
            }
            if self.counts[i] == 0 {
                self.order.push(c);
            }
            self.counts[i] += 1;
        }
    }

    /// ASCII bytes: a plain histogram (four interleaved, so that runs of one byte do not wait
    /// on one counter); the bytes new to the text, rare, are then put in order of first
    /// appearance.
    fn feed_ascii(&mut self, bytes: &[u8]) {
        if self.counts.len() < 128 {
            self.counts.resize(128, 0);
        }
        let mut h = [[0u64; 128]; 4];
        for quad in bytes.chunks(4) {
            for (k, &b) in quad.iter().enumerate() {
                h[k][b as usize] += 1;
            }
        }
        let mut new: Vec<u8> = Vec::new();
        for b in 0..128 {
            let n: u64 = h.iter().map(|h| h[b]).sum();
            if n > 0 && self.counts[b] == 0 {
                new.push(b as u8);
            }
            self.counts[b] += n;
        }
        if !new.is_empty() {
            let first = |b: &u8| bytes.iter().position(|x| x == b);
            new.sort_by_key(first);
            self.order.extend(new.into_iter().map(char::from));
        }
    }

    /// How often `c` occurs.
    pub(crate) fn count(&self, c: char) -> u64 {
        self.counts.get(c as usize).copied().unwrap_or(0)
    }

    /// Rebuilds a counter from its characters and their counts, in order of first appearance.
    pub(crate) fn from_parts(order: Vec<char>, counts: &[u64]) -> Self {
        let mut c = Counter {
            counts: Vec::new(),
            order: Vec::new(),
        };
        let top = order.iter().map(|&ch| ch as usize + 1).max().unwrap_or(0);
        c.counts.resize(top.max(128), 0);
        for (&ch, &n) in order.iter().zip(counts) {
            c.counts[ch as usize] = n;
        }
        c.order = order;
        c
    }
}

/// Turns characters into ids of a vocabulary, `width` bytes each, into a byte buffer; a
/// character the vocabulary lacks is left out and counted.
pub(crate) struct Encoder {
    /// The id of each code point below `table.len()`, or [`Encoder::NONE`].
    table: Vec<u32>,
    width: crate::Width,
    /// Ids not yet written out.
    pub(crate) out: Vec<u8>,
    /// Ids encoded so far.
    pub(crate) ids: u64,
    /// Characters left out so far.
    pub(crate) dropped: u64,
}

impl Encoder {
    const NONE: u32 = u32::MAX;

    pub(crate) fn new(vocab: &Vocab) -> Self {
        let top = vocab.chars().last().map_or(0, |&c| c as usize + 1);
        let mut table = vec![Self::NONE; top.max(128)];
        for (id, &c) in vocab.chars().iter().enumerate() {
            table[c as usize] = id as u32;
        }
        Self {
            table,
            width: crate::Width::for_vocab(vocab.len()),
            out: Vec::new(),
            ids: 0,
            dropped: 0,
        }
    }

    pub(crate) fn feed(&mut self, s: &str) {
        let before = self.out.len();
        let bytes = s.as_bytes();
        if s.is_ascii() && self.width == crate::Width::U8 {
            // One lookup a byte; ids below 256 have nothing above bit 8, `NONE` has, so one OR
            // over the chunk says whether a byte was unknown (then the general path redoes it).
            let table = &self.table[..128];
            let mut above = 0u32;
            (self.out).extend(bytes.iter().map(|&b| {
                let id = table[b as usize];
                above |= id >> 8;
                id as u8
            }));
            if above == 0 {
                self.ids += bytes.len() as u64;
                return;
            }
            self.out.truncate(before);
        }
        for c in s.chars() {
            match self.table.get(c as usize) {
                Some(&id) if id != Self::NONE => self.width.push(id, &mut self.out),
                _ => self.dropped += 1,
            }
        }
        self.ids += ((self.out.len() - before) / self.width.bytes()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Sink for String {
        fn raw(&mut self, _: usize, _: &[u8]) {}
        fn text(&mut self, s: &str) {
            self.push_str(s);
        }
        fn chunk_done(&mut self, _: u64) -> Result<(), DataError> {
            Ok(())
        }
    }

    /// Each file's text, streamed in chunks of `chunk` bytes and joined.
    fn streamed(files: &[PathBuf], chunk: usize) -> Result<(String, Vec<u64>), DataError> {
        let mut out = String::new();
        let counts = read_texts(files, chunk, &mut out)?;
        Ok((out, counts))
    }

    fn whole(files: &[PathBuf]) -> String {
        let texts: Vec<String> = files.iter().map(|f| crate::load_text(f).unwrap()).collect();
        crate::join_texts(&texts)
    }

    fn files(name: &str, contents: &[&[u8]]) -> Vec<PathBuf> {
        let dir = std::env::temp_dir().join(format!("karnna-stream-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        (contents.iter().enumerate())
            .map(|(i, bytes)| {
                let path = dir.join(format!("{i}.txt"));
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn every_chunk_size_reads_the_whole_texts_characters() {
        // A BOM, CRLFs, a lone CR at the end, multi-byte characters of 2, 3 and 4 bytes.
        let one: &[u8] = "\u{feff}Счастливые\r\nсемьи\r\r\n字 😀 end\r".as_bytes();
        let two: &[u8] = b"\r\nno final newline";
        let three: &[u8] = "\u{feff}x\n".as_bytes(); // a BOM at a later file's start
        for set in [vec![one], vec![one, two, three], vec![two, one]] {
            let paths = files(&format!("set{}", set.len()), &set);
            let want = whole(&paths);
            for chunk in 1..=9 {
                let (got, counts) = streamed(&paths, chunk).unwrap();
                assert_eq!(got, want, "chunk {chunk}");
                assert_eq!(counts.iter().sum::<u64>(), want.chars().count() as u64);
            }
        }
    }

    #[test]
    fn invalid_utf8_is_named_with_its_offset_at_any_chunk_size() {
        // An invalid byte, and a file that ends inside a character.
        for (bytes, offset) in [(&b"hello \xff world"[..], 6), (&b"ab\xc3"[..], 2)] {
            let paths = files("bad", &[bytes]);
            for chunk in 1..=8 {
                let err = streamed(&paths, chunk).unwrap_err();
                assert!(
                    matches!(err, DataError::NotUtf8 { offset: o, .. } if o == offset),
                    "chunk {chunk}: {err}"
                );
            }
        }
        let paths = files("bom", &["\u{feff}".as_bytes()]);
        assert!(matches!(
            streamed(&paths, 2).unwrap_err(),
            DataError::Empty { .. }
        ));
    }

    #[test]
    fn counts_and_ids_match_the_vocabulary() {
        let text = "ba\nab字😀a";
        let mut counter = Counter::default();
        text.split_inclusive('\n').for_each(|s| counter.feed(s));
        assert_eq!(counter.order, vec!['b', 'a', '\n', '字', '😀']);
        assert_eq!(
            (counter.count('a'), counter.count('字'), counter.count('z')),
            (3, 1, 0)
        );
        let vocab = Vocab::from_chars(counter.order.iter().copied());
        let mut enc = Encoder::new(&vocab);
        enc.feed(text);
        assert_eq!(enc.ids, 8);
        let ids: Vec<u32> = enc.out.iter().map(|&b| b as u32).collect();
        assert_eq!(ids, vocab.encode(text).unwrap());
        // A character the vocabulary lacks is dropped and counted.
        let mut enc = Encoder::new(&Vocab::from_text("ab"));
        enc.feed("a字b");
        assert_eq!(
            (enc.ids, enc.dropped, enc.out.as_slice()),
            (2, 1, &[0u8, 1][..])
        );
    }
}
