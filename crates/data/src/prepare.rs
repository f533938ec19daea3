//! A text prepared once: streamed from its files, encoded to ids of 1, 2 or 4 bytes
//! ([`Width`]), kept in a cache folder and memory-mapped by every later run, so that no program
//! ever holds the text, its `String` or a `Vec` of all its ids.
//!
//! # The cache
//! One folder per list of source files (keyed by their canonical paths), holding:
//! - `sources.json`: each file's size, modification time and xxh3 content hash, its character
//!   count (separator included), and the text's distinct characters in order of first
//!   appearance with their counts;
//! - `<vocab key>.ids` and `.json`: the text encoded with one vocabulary (keyed by its hash),
//!   characters outside it left out and counted, and the ids per file;
//! - `lock`: held while the folder is checked or written, so two processes never prepare the
//!   same text at once (the second waits, then finds it ready).
//!
//! An entry is used only when every file's size and modification time match and its content
//! hashes the same again (a changed text of the same size and time is caught by the hash);
//! otherwise the folder is emptied and the text prepared anew. Files are written under a
//! temporary name and renamed into place, so a prepared file is never seen half-written and
//! never changes while mapped.
//!
//! # Passes
//! Where the vocabulary comes from the text ([`Want::Text`], [`Want::Extend`]), one pass counts
//! the characters (and hashes the files), a second encodes. Where it is given ([`Want::Fixed`],
//! [`Want::Known`]), one pass does all three. A text already prepared is only hashed again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::stream::{read_texts, Counter, Encoder, Sink};
use crate::{DataError, Ids, UnknownChars, Vocab, Width};

/// Bytes read at a time unless a caller says otherwise.
pub const DEFAULT_CHUNK: usize = 1 << 20;

/// The cache's format: an entry of another version is prepared anew.
const VERSION: u32 = 1;

/// Encoded ids gathered in memory before they are written out.
const WRITE_BUFFER: usize = 4 << 20;

/// The vocabulary a text is encoded with.
#[derive(Clone, Debug)]
pub enum Want {
    /// The text's own characters (a new run).
    Text,
    /// A checkpoint's, which the text must not go beyond (a resumed run).
    Fixed(Vocab),
    /// A checkpoint's, with the text's other characters added (fine-tuning).
    Extend(Vocab),
    /// A checkpoint's; characters it lacks are left out and counted (scoring a text).
    Known(Vocab),
}

/// What a preparation is doing, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Another process is preparing the same text; this one waits for it.
    Waiting,
    /// Hashing the files to check that a prepared copy is still theirs.
    Checking,
    /// Counting the characters (the first of two passes).
    Counting,
    /// Encoding the text to ids.
    Encoding,
}

impl Stage {
    /// A word for the display.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Waiting => "waiting for another process preparing it",
            Stage::Checking => "checking",
            Stage::Counting => "counting",
            Stage::Encoding => "encoding",
        }
    }
}

/// Where a preparation stands.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The pass under way.
    pub stage: Stage,
    /// Bytes of the files read in this pass.
    pub done: u64,
    /// Bytes of the files in all.
    pub total: u64,
    /// Seconds since this pass began.
    pub secs: f64,
}

/// How to prepare.
pub struct Options<'a> {
    /// The cache folder (created when missing).
    pub cache_dir: &'a Path,
    /// Bytes read at a time ([`DEFAULT_CHUNK`]; tests use a few, to cross every edge).
    pub chunk: usize,
    /// Asked after every chunk: `true` stops the preparation with [`DataError::Interrupted`].
    pub stop: &'a dyn Fn() -> bool,
    /// Told where the preparation stands, at most about ten times a second.
    pub progress: &'a mut dyn FnMut(Progress),
}

/// A prepared text.
pub struct Prepared {
    /// The source files, in order.
    pub files: Vec<PathBuf>,
    /// The vocabulary of the ids.
    pub vocab: Vocab,
    /// The ids, mapped from the cache.
    pub ids: Ids,
    /// Ids from each file, its separator included (they add up to `ids.len()`).
    pub file_ids: Vec<u64>,
    /// Characters in the text (the files joined, newlines normalized), known ones or not.
    pub chars: u64,
    /// [`Want::Extend`]: the text's characters the given vocabulary lacked, in code-point order.
    pub new_chars: Vec<char>,
    /// [`Want::Known`]: characters left out because the vocabulary lacks them.
    pub unknown: u64,
    /// [`Want::Known`]: the distinct characters left out, in order of first appearance.
    pub unknown_chars: Vec<char>,
    /// The prepared file.
    pub path: PathBuf,
    /// Bytes an id takes in it.
    pub width: Width,
    /// Bytes of the source files.
    pub source_bytes: u64,
    /// Whether the text was found prepared already (and only checked).
    pub reused: bool,
    /// Seconds the preparation (or the check) took.
    pub secs: f64,
}

impl Prepared {
    /// Bytes of the prepared file.
    pub fn bytes(&self) -> u64 {
        self.ids.len() * self.width.bytes() as u64
    }
}

/// A source file as the cache remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Source {
    path: PathBuf,
    bytes: u64,
    modified_ns: u64,
}

impl Source {
    fn of(path: &Path) -> Result<Self, DataError> {
        let meta = std::fs::metadata(path).map_err(DataError::reading(path))?;
        let modified_ns = (meta.modified().ok())
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Self {
            // The same file named another way (relative, through a link) is the same source.
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
            bytes: meta.len(),
            modified_ns,
        })
    }
}

/// `sources.json`: the files and what counting them found.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sources {
    version: u32,
    files: Vec<Source>,
    /// Each file's xxh3-64.
    hashes: Vec<u64>,
    /// Each file's characters, separator included.
    file_chars: Vec<u64>,
    /// The distinct characters in order of first appearance, as one string.
    seen: String,
    /// How often each of `seen` occurs.
    counts: Vec<u64>,
}

impl Sources {
    /// One hash of every file's content, which an encoding names to say whose it is.
    fn digest(&self) -> u64 {
        let mut h = Xxh3::new();
        for (f, hash) in self.files.iter().zip(&self.hashes) {
            h.update(&f.bytes.to_le_bytes());
            h.update(&hash.to_le_bytes());
        }
        h.digest()
    }

    fn counter(&self) -> Counter {
        Counter::from_parts(self.seen.chars().collect(), &self.counts)
    }
}

/// `<vocab key>.json`: one encoding of the text.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Encoding {
    version: u32,
    /// [`Sources::digest`] of the text encoded.
    sources: u64,
    vocab: Vocab,
    width: Width,
    /// Ids per file, separator included.
    file_ids: Vec<u64>,
    /// Characters left out.
    dropped: u64,
}

/// Prepares the text of `files` (joined as [`crate::join_texts`] does) with the vocabulary
/// `want` says, or finds it prepared, and maps it.
///
/// Errors: a missing, unreadable, empty or non-UTF-8 file (named, with the byte offset);
/// [`Want::Fixed`] with characters the vocabulary lacks ([`DataError::NotInVocab`]); a cache
/// folder that cannot be written ([`DataError::Cache`]); a stop request
/// ([`DataError::Interrupted`]).
pub fn prepare(files: &[PathBuf], want: Want, opts: Options) -> Result<Prepared, DataError> {
    assert!(!files.is_empty(), "prepare needs at least one file");
    let started = Instant::now();
    let sources = files
        .iter()
        .map(|f| Source::of(f))
        .collect::<Result<Vec<_>, _>>()?;
    let total = sources.iter().map(|s| s.bytes).sum();
    let dir = opts.cache_dir.join(entry_key(files));
    std::fs::create_dir_all(&dir).map_err(cache_error(&dir))?;
    let mut meter = Meter {
        opts,
        total,
        stage: Stage::Checking,
        done: 0,
        began: Instant::now(),
        shown: None,
    };
    let _lock = lock(&dir, &mut meter)?;
    let mut entry = Entry {
        dir,
        files,
        meter,
        reused: true,
    };
    let (sources, encoded) = match entry.known_sources(&sources)? {
        Some(known) => (known, None),
        None => entry.count(sources, &want)?,
    };
    let vocab = entry.vocab_for(&sources, &want)?;
    let encoding = match encoded.filter(|e| e.vocab == vocab) {
        Some(e) => e,
        None => match entry.read_encoding(&sources, &vocab) {
            Some(e) => e,
            None => entry.encode(&sources, &vocab, false)?.0,
        },
    };
    // A cut or damaged `.ids` file (a disk that filled, a copy cut short, a hand edit) is
    // prepared again from the text, as a missing one is.
    let (encoding, (ids, path)) = match entry.map_ids(&vocab, &encoding) {
        Ok(mapped) => (encoding, mapped),
        Err(_) => {
            let encoding = entry.encode(&sources, &vocab, false)?.0;
            let mapped = entry.map_ids(&vocab, &encoding)?;
            (encoding, mapped)
        }
    };
    let counter = sources.counter();
    let lacking = not_in(counter.order.iter(), &vocab);
    let new_chars = match &want {
        Want::Extend(old) => not_in(vocab.chars().iter(), old),
        _ => Vec::new(),
    };
    Ok(Prepared {
        files: files.to_vec(),
        ids,
        file_ids: encoding.file_ids,
        chars: sources.file_chars.iter().sum(),
        new_chars,
        unknown: lacking.iter().map(|&c| counter.count(c)).sum(),
        unknown_chars: lacking,
        path,
        width: encoding.width,
        source_bytes: total,
        reused: entry.reused,
        secs: started.elapsed().as_secs_f64(),
        vocab,
    })
}

/// The characters of `chars` that `vocab` lacks, in their order.
fn not_in<'c>(chars: impl Iterator<Item = &'c char>, vocab: &Vocab) -> Vec<char> {
    chars.filter(|c| vocab.id(**c).is_none()).copied().collect()
}

/// One cache folder, locked, while a preparation works in it.
struct Entry<'a, 'b> {
    dir: PathBuf,
    files: &'a [PathBuf],
    meter: Meter<'b>,
    /// Nothing was counted or encoded.
    reused: bool,
}

impl Entry<'_, '_> {
    /// The folder's `sources.json` when it is still the files' (same sizes and times, and the
    /// same content hash, checked now); otherwise the folder is emptied and `None`.
    fn known_sources(&mut self, now: &[Source]) -> Result<Option<Sources>, DataError> {
        let record: Option<Sources> = read_json(&self.dir.join("sources.json"));
        let record = record.filter(|r| r.version == VERSION && r.files == now);
        if let Some(r) = record {
            let chunk = self.chunk();
            self.meter.begin(Stage::Checking);
            let mut sink = Hasher::new(self.files.len(), &mut self.meter);
            hash_files(self.files, chunk, &mut sink)?;
            if sink.digests() == r.hashes {
                return Ok(Some(r));
            }
        }
        self.clear()?;
        Ok(None)
    }

    fn chunk(&self) -> usize {
        self.meter.opts.chunk.max(1)
    }

    /// Removes every prepared file of the folder (not its lock).
    fn clear(&mut self) -> Result<(), DataError> {
        let entries = std::fs::read_dir(&self.dir).map_err(cache_error(&self.dir))?;
        for e in entries.flatten() {
            if e.file_name() != "lock" {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// The first pass over a text not yet prepared: counts (and hashes) it, and where the
    /// vocabulary is given, encodes it too. Writes `sources.json`.
    fn count(
        &mut self,
        files: Vec<Source>,
        want: &Want,
    ) -> Result<(Sources, Option<Encoding>), DataError> {
        self.reused = false;
        let mut sources = Sources {
            version: VERSION,
            files,
            hashes: Vec::new(),
            file_chars: Vec::new(),
            seen: String::new(),
            counts: Vec::new(),
        };
        let (counter, encoding) = match want {
            Want::Fixed(v) | Want::Known(v) => {
                let (encoding, counted) = self.encode(&sources, v, true)?;
                let (counter, hashes, file_chars) = counted.expect("counted when asked");
                (sources.hashes, sources.file_chars) = (hashes, file_chars);
                (counter, Some(encoding))
            }
            Want::Text | Want::Extend(_) => {
                let chunk = self.chunk();
                self.meter.begin(Stage::Counting);
                let mut sink = Pass {
                    hash: Some(Hasher::new(self.files.len(), &mut self.meter)),
                    counter: Some(Counter::default()),
                    writer: None,
                };
                sources.file_chars = read_texts(self.files, chunk, &mut sink)?;
                sources.hashes = sink.hash.expect("hashing").digests();
                (sink.counter.expect("counting"), None)
            }
        };
        sources.seen = counter.order.iter().collect();
        sources.counts = counter.order.iter().map(|&c| counter.count(c)).collect();
        let sources_digest = sources.digest();
        write_json(&self.dir.join("sources.json"), &sources)?;
        // An encoding made in the same pass names the sources only now that they are known.
        let encoding = match encoding {
            Some(mut e) => {
                e.sources = sources_digest;
                write_json(&self.json_path(&e.vocab), &e)?;
                Some(e)
            }
            None => None,
        };
        Ok((sources, encoding))
    }

    /// The vocabulary `want` asks for, given what the text holds.
    fn vocab_for(&self, sources: &Sources, want: &Want) -> Result<Vocab, DataError> {
        Ok(match want {
            Want::Text => Vocab::from_chars(sources.seen.chars()),
            Want::Known(v) => v.clone(),
            Want::Extend(old) => {
                Vocab::from_chars(sources.seen.chars().chain(old.chars().iter().copied()))
            }
            Want::Fixed(v) => {
                let lacking: Vec<char> = sources
                    .seen
                    .chars()
                    .filter(|&c| v.id(c).is_none())
                    .collect();
                if !lacking.is_empty() {
                    return Err(DataError::NotInVocab {
                        text: named(self.files),
                        unknown: UnknownChars(lacking),
                    });
                }
                v.clone()
            }
        })
    }

    fn json_path(&self, vocab: &Vocab) -> PathBuf {
        self.dir.join(format!("{}.json", vocab_key(vocab)))
    }

    /// The ids of `encoding` (with `vocab`) mapped from the folder, and their file; an error
    /// when the file is missing or holds another number of ids than its record says.
    fn map_ids(&self, vocab: &Vocab, encoding: &Encoding) -> Result<(Ids, PathBuf), DataError> {
        let path = self.dir.join(format!("{}.ids", vocab_key(vocab)));
        let ids = Ids::map(&path, encoding.width).map_err(cache_error(&path))?;
        if ids.len() != encoding.file_ids.iter().sum::<u64>() {
            return Err(DataError::Cache {
                path,
                source: std::io::Error::other("not the length its record says"),
            });
        }
        Ok((ids, path))
    }

    /// The folder's encoding with `vocab`, when it is there and of these sources.
    fn read_encoding(&self, sources: &Sources, vocab: &Vocab) -> Option<Encoding> {
        let e: Encoding = read_json(&self.json_path(vocab))?;
        (e.version == VERSION && e.sources == sources.digest() && &e.vocab == vocab).then_some(e)
    }

    /// Encodes the text with `vocab` into `<vocab key>.ids` and writes its record (unless
    /// `count`, when the caller writes it once the sources are known); with `count`, also
    /// counts and hashes, for a text not yet counted.
    #[allow(clippy::type_complexity)]
    fn encode(
        &mut self,
        sources: &Sources,
        vocab: &Vocab,
        count: bool,
    ) -> Result<(Encoding, Option<(Counter, Vec<u64>, Vec<u64>)>), DataError> {
        self.reused = false;
        let chunk = self.chunk();
        self.meter.begin(Stage::Encoding);
        let path = self.dir.join(format!("{}.ids", vocab_key(vocab)));
        let tmp = self.dir.join(format!("{}.ids.tmp", vocab_key(vocab)));
        let file = File::create(&tmp).map_err(cache_error(&tmp))?;
        let json = self.json_path(vocab);
        // One of the pass's parts reports progress: the hasher when there is one.
        let meter = &mut self.meter;
        let (hash, writer_meter) = if count {
            (Some(Hasher::new(self.files.len(), meter)), None)
        } else {
            (None, Some(meter))
        };
        let mut sink = Pass {
            hash,
            counter: count.then(Counter::default),
            writer: Some(Writer {
                encoder: Encoder::new(vocab),
                file,
                path: tmp.clone(),
                file_ids: Vec::new(),
                meter: writer_meter,
            }),
        };
        let result = read_texts(self.files, chunk, &mut sink).and_then(|chars| {
            sink.writer
                .as_mut()
                .expect("writing")
                .flush()
                .map(|()| chars)
        });
        let Pass {
            hash,
            counter,
            writer,
        } = sink;
        let writer = writer.expect("writing");
        let file_chars = match result {
            Ok(chars) => chars,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &path).map_err(cache_error(&path))?;
        let encoding = Encoding {
            version: VERSION,
            sources: sources.digest(),
            vocab: vocab.clone(),
            width: Width::for_vocab(vocab.len()),
            file_ids: writer.file_ids,
            dropped: writer.encoder.dropped,
        };
        if !count {
            write_json(&json, &encoding)?;
        }
        let counted = count.then(|| {
            let hashes = hash.expect("hashing").digests();
            (counter.expect("counting"), hashes, file_chars)
        });
        Ok((encoding, counted))
    }
}

/// Where a pass's text goes: any of a hash of the raw bytes, a count of the characters and an
/// encoder writing ids to a file.
struct Pass<'m, 'o> {
    hash: Option<Hasher<'m, 'o>>,
    counter: Option<Counter>,
    writer: Option<Writer<'m, 'o>>,
}

impl Sink for Pass<'_, '_> {
    fn raw(&mut self, file: usize, bytes: &[u8]) {
        if let Some(h) = &mut self.hash {
            h.raw(file, bytes);
        }
        if let Some(w) = &mut self.writer {
            w.start(file);
        }
    }

    fn text(&mut self, s: &str) {
        if let Some(c) = &mut self.counter {
            c.feed(s);
        }
        if let Some(w) = &mut self.writer {
            w.encoder.feed(s);
        }
    }

    fn chunk_done(&mut self, bytes: u64) -> Result<(), DataError> {
        if let Some(w) = &mut self.writer {
            w.chunk_done(bytes)?;
        }
        if let Some(h) = &mut self.hash {
            h.chunk_done(bytes)?;
        }
        Ok(())
    }
}

/// Encoded ids on their way to the prepared file.
struct Writer<'m, 'o> {
    encoder: Encoder,
    file: File,
    path: PathBuf,
    /// Ids per file so far (the last entry grows).
    file_ids: Vec<u64>,
    /// The meter, when no hasher in the same pass reports the progress.
    meter: Option<&'m mut Meter<'o>>,
}

impl Writer<'_, '_> {
    /// Notes the file that the coming ids belong to (the ids so far are the previous file's,
    /// its separator included).
    fn start(&mut self, file: usize) {
        if self.file_ids.len() <= file {
            self.credit();
            self.file_ids.resize(file + 1, 0);
        }
    }

    /// Counts the ids encoded so far as the current file's.
    fn credit(&mut self) {
        if let Some(last) = self.file_ids.last_mut() {
            *last += std::mem::take(&mut self.encoder.ids);
        }
    }

    fn chunk_done(&mut self, bytes: u64) -> Result<(), DataError> {
        if self.encoder.out.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        if let Some(m) = &mut self.meter {
            m.advance(bytes)?;
        }
        Ok(())
    }

    /// Writes the ids encoded so far and credits them to the current file.
    fn flush(&mut self) -> Result<(), DataError> {
        self.file
            .write_all(&self.encoder.out)
            .map_err(cache_error(&self.path))?;
        self.encoder.out.clear();
        self.credit();
        Ok(())
    }
}

/// Each file's xxh3 over its raw bytes, and the meter.
struct Hasher<'m, 'o> {
    states: Vec<Xxh3>,
    meter: &'m mut Meter<'o>,
}

impl<'m, 'o> Hasher<'m, 'o> {
    fn new(files: usize, meter: &'m mut Meter<'o>) -> Self {
        Self {
            states: (0..files).map(|_| Xxh3::new()).collect(),
            meter,
        }
    }

    fn raw(&mut self, file: usize, bytes: &[u8]) {
        self.states[file].update(bytes);
    }

    fn chunk_done(&mut self, bytes: u64) -> Result<(), DataError> {
        self.meter.advance(bytes)
    }

    fn digests(&self) -> Vec<u64> {
        self.states.iter().map(|s| s.digest()).collect()
    }
}

/// Hashes `files` raw, chunk by chunk, without decoding them.
fn hash_files(files: &[PathBuf], chunk: usize, sink: &mut Hasher) -> Result<(), DataError> {
    let mut buf = vec![0u8; chunk.max(1 << 16)];
    for (i, path) in files.iter().enumerate() {
        let io = DataError::reading(path);
        let mut file = File::open(path).map_err(&io)?;
        loop {
            let n = match std::io::Read::read(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            sink.raw(i, &buf[..n]);
            sink.chunk_done(n as u64)?;
        }
    }
    Ok(())
}

/// Progress and stop requests for one preparation.
struct Meter<'o> {
    opts: Options<'o>,
    total: u64,
    stage: Stage,
    done: u64,
    began: Instant,
    /// When progress was last reported.
    shown: Option<Instant>,
}

impl Meter<'_> {
    fn begin(&mut self, stage: Stage) {
        (self.stage, self.done, self.began, self.shown) = (stage, 0, Instant::now(), None);
        self.show();
    }

    fn advance(&mut self, bytes: u64) -> Result<(), DataError> {
        self.done += bytes;
        if (self.opts.stop)() {
            return Err(DataError::Interrupted);
        }
        if self.shown.is_none_or(|t| t.elapsed().as_millis() >= 100) {
            self.show();
        }
        Ok(())
    }

    fn show(&mut self) {
        self.shown = Some(Instant::now());
        (self.opts.progress)(Progress {
            stage: self.stage,
            done: self.done,
            total: self.total,
            secs: self.began.elapsed().as_secs_f64(),
        });
    }
}

/// Holds the cache folder's lock, waiting (and saying so) while another process holds it; a
/// stop request ends the wait.
fn lock(dir: &Path, meter: &mut Meter) -> Result<File, DataError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(cache_error(&path))?;
    let mut waiting = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !waiting {
                    meter.begin(Stage::Waiting);
                    waiting = true;
                }
                meter.advance(0)?;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(cache_error(&path)(e)),
        }
    }
}

/// The cache folder of a list of files: a hash of their canonical paths, in order.
fn entry_key(files: &[PathBuf]) -> String {
    let mut h = Xxh3::new();
    h.update(&VERSION.to_le_bytes());
    for f in files {
        let path = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        h.update(path.as_os_str().as_encoded_bytes());
        h.update(&[0]);
    }
    format!("{:032x}", h.digest128())
}

/// The file name of an encoding: a hash of its vocabulary.
fn vocab_key(vocab: &Vocab) -> String {
    let chars: String = vocab.chars().iter().collect();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(chars.as_bytes()))
}

/// The text's name in messages: its file, or how many files.
pub fn named(files: &[PathBuf]) -> PathBuf {
    match files {
        [one] => one.clone(),
        many => PathBuf::from(format!("{} files", many.len())),
    }
}

fn cache_error(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Cache {
        path: path.to_owned(),
        source,
    }
}

/// A JSON record, or `None` when it is missing or unreadable (it is then made anew).
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes a JSON record under a temporary name, then renames it into place.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DataError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string(value).expect("records serialize");
    std::fs::write(&tmp, text).map_err(cache_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(cache_error(path))
}
