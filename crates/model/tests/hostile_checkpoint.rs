//! Checkpoints written to hurt, with valid checksums: each bad field is a one-line error that
//! names the file and the field, never a panic, and nothing is allocated from a field before
//! it is checked. A counting allocator measures the peak of live heap bytes while a file is
//! read and its model built, and bounds it by a small multiple of the file's size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use burn::backend::Flex;
use karnna_data::Vocab;
use karnna_model::checkpoint::{fnv1a, FNV1A_START};
use karnna_model::{CharRnn, CharRnnConfig, Checkpoint, CheckpointMeta};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes straight to the system allocator with the caller's arguments, so it
// keeps `GlobalAlloc`'s contract; the counters are atomics on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this binary one at a time, so that each measures only its own allocations.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Heap that reading a checkpoint may take beyond this many times its file's size (Burn's
/// tensors and their copies, the walk's small buffers).
const SLACK: usize = 4 << 20;
const PER_FILE_BYTE: usize = 16;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("karnna-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small real checkpoint: two LSTM layers of 8 units over a 12-character vocabulary.
fn small_checkpoint() -> Vec<u8> {
    let vocab = Vocab::from_text("hello world, 12\n");
    let config = CharRnnConfig::new(vocab.len())
        .with_lstm_size(8)
        .with_num_layers(2);
    let model = config.init::<Flex>(&Default::default());
    let meta = CheckpointMeta {
        model: config,
        vocab,
        iteration: 3,
        val_loss: Some(2.0),
        train_loss: None,
        run: serde_json::json!({"name": "t"}),
    };
    let path = dir().join("small.ckpt");
    Checkpoint::save(&path, &meta, &model, &[]).unwrap();
    std::fs::read(path).unwrap()
}

/// The file's body (magic and sections) and its checksum recomputed.
fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let sum = fnv1a(FNV1A_START, &body);
    body.extend_from_slice(&sum.to_le_bytes());
    body
}

/// The sections of a checkpoint file, in order.
fn sections(file: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut rest = &file[8..file.len() - 8];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = u16::from_le_bytes(rest[..2].try_into().unwrap()) as usize;
        let name = String::from_utf8(rest[2..2 + n].to_vec()).unwrap();
        rest = &rest[2 + n..];
        let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        out.push((name, rest[8..8 + len].to_vec()));
        rest = &rest[8 + len..];
    }
    out
}

/// A checkpoint file of these sections, with a valid checksum.
fn assemble(sections: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = b"KARNNA01".to_vec();
    for (name, bytes) in sections {
        body.extend_from_slice(&(name.len() as u16).to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        body.extend_from_slice(bytes);
    }
    sealed(body)
}

/// `file` with its meta's JSON changed by `edit`.
fn with_meta(file: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut secs = sections(file);
    let meta = &mut secs.iter_mut().find(|(n, _)| n == "meta").unwrap().1;
    let mut json: serde_json::Value = serde_json::from_slice(meta).unwrap();
    edit(&mut json);
    *meta = serde_json::to_vec(&json).unwrap();
    assemble(&secs)
}

/// `file` with its model record's bytes changed by `edit`.
fn with_record(file: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut secs = sections(file);
    edit(&mut secs.iter_mut().find(|(n, _)| n == "model").unwrap().1);
    assemble(&secs)
}

/// What reading `file` (written to `path`) and building its model gives, and the peak of heap
/// bytes it took above what was live before.
fn load(path: &Path, file: &[u8]) -> (Result<CharRnn<Flex>, String>, usize) {
    std::fs::write(path, file).unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = Checkpoint::read(path)
        .and_then(|c| c.model::<Flex>(&Default::default()).map(|m| (c, m)))
        .map_err(|e| e.to_string())
        .map(|(c, m)| {
            assert_agrees(&c.meta, &m);
            m
        });
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    (result, peak)
}

/// The model has the shape its meta says.
fn assert_agrees(meta: &CheckpointMeta, m: &CharRnn<Flex>) {
    let c = &meta.model;
    assert_eq!(m.layers.len(), c.shape.num_layers);
    assert_eq!(m.lstm_size(), c.shape.lstm_size);
    assert_eq!(m.cell(), c.shape.cell);
    assert_eq!(m.output.weight.dims(), [c.shape.lstm_size, c.vocab_size]);
    assert_eq!(meta.vocab.len(), c.vocab_size);
}

/// Replaces the first occurrence of `from` in `bytes` with `to` (of the same length).
fn replace_first(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the pattern is in the record");
    bytes[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn each_bad_field_is_a_one_line_error_naming_the_file_and_the_field() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let good = small_checkpoint();
    let path = dir().join("crafted.ckpt");
    let (ok, peak) = load(&path, &good);
    ok.unwrap();
    assert!(peak < SLACK + PER_FILE_BYTE * good.len(), "{peak}");

    // One meta field set to a bad value: (what, field, value); the error names `model.field`.
    let fields: [(&str, &str, serde_json::Value); 11] = [
        ("zero layers", "num_layers", 0.into()),
        ("nine layers", "num_layers", 9.into()),
        ("zero units", "lstm_size", 0.into()),
        ("more units", "lstm_size", 16.into()),
        ("2^31 units", "lstm_size", (1u64 << 31).into()),
        ("2^62 units", "lstm_size", (1u64 << 62).into()),
        ("10^9 characters", "vocab_size", 1_000_000_000.into()),
        ("an unknown cell", "cell", "xyz".into()),
        ("another cell's name", "cell", "gru".into()),
        ("keep_prob 0", "keep_prob", 0.into()),
        ("keep_prob above 1", "keep_prob", 1.5.into()),
    ];
    let mut cases: Vec<(&str, Vec<u8>, String)> = fields
        .into_iter()
        .map(|(what, key, v)| {
            let file = with_meta(&good, |j| j["model"][key] = v);
            (what, file, format!("model.{key}"))
        })
        .collect();
    cases.extend([
        (
            "a vocabulary one longer than the output layer",
            with_meta(&good, |j| {
                j["vocab"] = "\n ,12dehlorwz".into();
                j["model"]["vocab_size"] = 13.into();
            }),
            "model.vocab_size".into(),
        ),
        (
            "an unsorted vocabulary",
            with_meta(&good, |j| j["vocab"] = "ba".into()),
            "vocab".into(),
        ),
        (
            "a tensor whose shape disagrees with its bytes",
            // The first layer's w_ih is [12, 32]: fixarray(2), 12, 32 in MessagePack.
            with_record(&good, |r| {
                replace_first(r, &[0x92, 12, 32], &[0x92, 13, 32])
            }),
            "shape".into(),
        ),
    ]);
    for (what, file, field) in cases {
        let (result, peak) = load(&path, &file);
        let e = result.err().unwrap_or_else(|| panic!("{what}: loaded"));
        assert!(e.contains(&path.display().to_string()), "{what}: {e}");
        assert!(e.contains(&field), "{what}: {e}");
        assert_eq!(e.lines().count(), 1, "{what}: {e}");
        assert!(
            peak < SLACK + PER_FILE_BYTE * file.len(),
            "{what}: {peak} bytes"
        );
    }
}

#[test]
fn a_parameter_id_that_does_not_parse_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let good = small_checkpoint();
    let path = dir().join("ids.ckpt");
    // Each id is a 13-symbol base32 string after the key `id` (fixstr 2, fixstr 13).
    for (what, symbol) in [("not base32", b'_'), ("base32, too long to fit", b'0')] {
        let file = with_record(&good, |r| {
            let at = r.windows(4).position(|w| w == b"\xa2id\xad").unwrap();
            // Lengthen the id to 15 symbols, over the next key's first bytes.
            r[at + 3] = 0xaf;
            r[at + 4] = symbol;
            r[at + 17..at + 19].copy_from_slice(b"00");
        });
        let (result, _) = load(&path, &file);
        let e = result.err().unwrap_or_else(|| panic!("{what}: loaded"));
        assert!(
            e.contains("ids.ckpt") && e.lines().count() == 1,
            "{what}: {e}"
        );
    }
}

#[test]
fn random_changes_with_the_checksum_recomputed_never_panic_or_overallocate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let good = small_checkpoint();
    let secs = sections(&good);
    let path = dir().join("mutated.ckpt");
    let mut rng = StdRng::seed_from_u64(28);
    let (mut loaded, mut refused) = (0, 0);
    for case in 0..400 {
        let mut s = secs.clone();
        // Changes go to the meta or the model record (the other bytes are section framing,
        // which the reader checks on its own), a few bytes at a time, often to values that
        // mean something in JSON or MessagePack.
        let target = &mut s[rng.random_range(0..2)].1;
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(0..target.len());
            target[at] = match rng.random_range(0..4) {
                0 => rng.random(),
                1 => *b"0123456789-.e\"[]{}".get(rng.random_range(0..18)).unwrap(),
                2 => rng.random_range(0xc0..=0xdf), // MessagePack markers
                _ => target[at] ^ (1 << rng.random_range(0..8)),
            };
        }
        let file = assemble(&s);
        let (result, peak) = load(&path, &file);
        match result {
            Ok(_) => loaded += 1,
            Err(e) => {
                assert_eq!(e.lines().count(), 1, "case {case}: {e}");
                refused += 1;
            }
        }
        assert!(
            peak < SLACK + PER_FILE_BYTE * file.len(),
            "case {case}: {peak} bytes for a file of {}",
            file.len()
        );
    }
    // Both outcomes occur: the changes reach the checks, and harmless ones still load.
    assert!(
        loaded > 0 && refused > 0,
        "{loaded} loaded, {refused} refused"
    );
}
