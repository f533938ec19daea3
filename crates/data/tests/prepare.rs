//! The prepared text against the whole-text reading it replaces: the same ids for every text
//! and chunk size, the cache reused only while it is the text's, stops honoured.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use karnna_data::prepare::{Options, Progress};
use karnna_data::{join_texts, load_text, prepare, DataError, Prepared, Vocab, Want, Width};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("karnna-prepare-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn prep(files: &[PathBuf], want: Want, cache: &Path, chunk: usize) -> Result<Prepared, DataError> {
    prepare(
        files,
        want,
        Options {
            cache_dir: cache,
            chunk,
            stop: &|| false,
            progress: &mut |_: Progress| {},
        },
    )
}

/// The text as karnna read it before it was prepared: every file whole, joined.
fn whole(files: &[PathBuf]) -> String {
    let texts: Vec<String> = files.iter().map(|f| load_text(f).unwrap()).collect();
    join_texts(&texts)
}

/// Texts whose edges a small chunk size crosses: CRLF, a lone CR, a BOM, 2-, 3- and 4-byte
/// characters, a file without a final newline.
fn texts(dir: &Path) -> Vec<PathBuf> {
    vec![
        write(
            dir,
            "a.txt",
            "\u{feff}Счастливые семьи\r\nпохожи\r\rдруг 字😀\r\n".as_bytes(),
        ),
        write(dir, "b.txt", b"plain ascii\r\nno final newline"),
        write(dir, "c.txt", "\u{feff}\r\n«end»\r".as_bytes()),
    ]
}

#[test]
fn ids_equal_the_whole_texts_encoding_at_every_chunk_size() {
    let dir = scratch("equal");
    let files = texts(&dir);
    for set in [&files[..1], &files[..], &files[1..2]] {
        let text = whole(set);
        let vocab = Vocab::from_text(&text);
        let want = vocab.encode(&text).unwrap();
        for chunk in [1, 2, 3, 5, 7, 64, 1 << 20] {
            let cache = dir.join(format!("cache-{}-{chunk}", set.len()));
            let p = prep(set, Want::Text, &cache, chunk).unwrap();
            assert_eq!(p.vocab, vocab, "chunk {chunk}");
            assert_eq!(p.ids.to_vec(), want, "chunk {chunk}");
            assert_eq!(p.chars, text.chars().count() as u64);
            assert_eq!(p.width, Width::U8);
            assert!(!p.reused);
            // Each file's ids, separator included, as join_texts lays them out.
            let last = set.len() - 1;
            let per_file: Vec<u64> = (set.iter().enumerate())
                .map(|(i, f)| {
                    let t = load_text(f).unwrap();
                    let t = if set.len() > 1 {
                        karnna_data::with_separator(&t, i == last)
                    } else {
                        t
                    };
                    t.chars().count() as u64
                })
                .collect();
            assert_eq!(p.file_ids, per_file, "chunk {chunk}");
        }
    }
}

#[test]
fn given_vocabularies_fix_extend_or_filter_the_ids() {
    let dir = scratch("given");
    let files = texts(&dir);
    let text = whole(&files);
    let cache = dir.join("cache");
    // Fine-tuning: an old vocabulary extended with the text's other characters.
    let old = Vocab::from_text("abc\nxyz");
    let p = prep(&files, Want::Extend(old.clone()), &cache, 3).unwrap();
    let union: String = text.chars().chain(old.chars().iter().copied()).collect();
    assert_eq!(p.vocab, Vocab::from_text(&union));
    assert_eq!(p.ids.to_vec(), p.vocab.encode(&text).unwrap());
    let new: Vec<char> = (Vocab::from_text(&text).chars().iter())
        .filter(|c| old.id(**c).is_none())
        .copied()
        .collect();
    assert_eq!(p.new_chars, new);
    // Resuming: the run's own vocabulary, in one pass.
    let own = Vocab::from_text(&format!("{text}#"));
    let p = prep(&files, Want::Fixed(own.clone()), &dir.join("cache2"), 2).unwrap();
    assert_eq!(p.ids.to_vec(), own.encode(&text).unwrap());
    // A vocabulary the text goes beyond is refused, naming what it lacks in order.
    let small = Vocab::from_text("plain ascii\n");
    let err = prep(&files[1..2], Want::Fixed(small.clone()), &cache, 4)
        .err()
        .unwrap();
    let expected = format!(
        "{}: characters not in the vocabulary: 'o', 'f', 'e', 'w', which the checkpoint's vocabulary lacks",
        files[1].display()
    );
    assert_eq!(err.to_string(), expected);
    // Scoring: characters the vocabulary lacks are left out and counted.
    let p = prep(&files[1..2], Want::Known(small.clone()), &cache, 4).unwrap();
    let kept: String = whole(&files[1..2])
        .chars()
        .filter(|&c| small.id(c).is_some())
        .collect();
    assert_eq!(p.ids.to_vec(), small.encode(&kept).unwrap());
    assert_eq!(p.unknown_chars, vec!['o', 'f', 'e', 'w']);
    assert_eq!(p.unknown, 5); // "no final newline": o, f, e, w, e
}

#[test]
fn wide_vocabularies_take_two_bytes_an_id() {
    let dir = scratch("wide");
    let text: String = (0..300u32)
        .map(|i| char::from_u32(0x4E00 + i * 7).unwrap())
        .collect();
    let file = write(&dir, "zh.txt", text.as_bytes());
    let p = prep(
        std::slice::from_ref(&file),
        Want::Text,
        &dir.join("cache"),
        5,
    )
    .unwrap();
    assert_eq!(p.width, Width::U16);
    assert_eq!(p.bytes(), 600);
    assert_eq!(
        p.ids.to_vec(),
        Vocab::from_text(&text).encode(&text).unwrap()
    );
}

#[test]
fn the_cache_is_reused_only_while_it_is_the_texts() {
    let dir = scratch("reuse");
    let file = write(&dir, "t.txt", b"hello world\r\nagain\n");
    let files = [file.clone()];
    let cache = dir.join("cache");
    let first = prep(&files, Want::Text, &cache, 4).unwrap();
    assert!(!first.reused);
    let again = prep(&files, Want::Text, &cache, 4).unwrap();
    assert!(again.reused);
    assert_eq!(again.path, first.path);
    assert_eq!(again.ids.to_vec(), first.ids.to_vec());
    // Resuming with the run's own vocabulary finds the same encoding.
    let resumed = prep(&files, Want::Fixed(first.vocab.clone()), &cache, 4).unwrap();
    assert!(resumed.reused);
    // So does the same file named another way.
    let other = dir.join(".").join("t.txt");
    let named = prep(&[other], Want::Text, &cache, 4).unwrap();
    assert!(named.reused);
    // The same size and modification time, another text: the hash tells, and it is made anew.
    let time = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, b"jello world\r\nagain\n").unwrap();
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(time).unwrap();
    drop(f);
    let changed = prep(&files, Want::Text, &cache, 4).unwrap();
    assert!(!changed.reused);
    let text = whole(&files);
    assert_eq!(
        changed.ids.to_vec(),
        Vocab::from_text(&text).encode(&text).unwrap()
    );
    // The first mapping still reads the ids it was made from (the file was replaced, not
    // rewritten).
    assert_eq!(first.ids.to_vec(), again.ids.to_vec());
}

#[test]
fn a_cut_or_grown_ids_file_is_prepared_again() {
    let dir = scratch("cut");
    let files = [write(
        &dir,
        "t.txt",
        "hello world, hello again\n".repeat(50).as_bytes(),
    )];
    let cache = dir.join("cache");
    let first = prep(&files, Want::Text, &cache, 64).unwrap();
    let (want, path) = (first.ids.to_vec(), first.path.clone());
    drop(first); // its mapping must not see the file cut under it
    let len = std::fs::metadata(&path).unwrap().len();
    for damaged_len in [len / 2, 0, len + 3] {
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(damaged_len)
            .unwrap();
        let again = prep(&files, Want::Text, &cache, 64).unwrap();
        assert!(
            !again.reused,
            "a {damaged_len}-byte file of {len} is not reused"
        );
        assert_eq!(again.ids.to_vec(), want);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }
}

#[test]
fn a_stop_request_ends_preparation_and_leaves_nothing_half_written() {
    let dir = scratch("stop");
    let line = "some text to read, a few bytes at a time\n";
    let file = write(&dir, "t.txt", line.repeat(50).as_bytes());
    let cache = dir.join("cache");
    let chunks = AtomicUsize::new(0);
    let stop = || chunks.fetch_add(1, Ordering::Relaxed) >= 5;
    let err = prepare(
        std::slice::from_ref(&file),
        Want::Text,
        Options {
            cache_dir: &cache,
            chunk: 16,
            stop: &stop,
            progress: &mut |_: Progress| {},
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, DataError::Interrupted), "{err}");
    let left: Vec<PathBuf> = walk(&cache)
        .into_iter()
        .filter(|p| !p.ends_with("lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The next preparation is complete.
    let p = prep(std::slice::from_ref(&file), Want::Text, &cache, 16).unwrap();
    assert_eq!(p.chars, 50 * line.len() as u64);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn two_preparations_of_one_text_at_once_prepare_it_once() {
    let dir = scratch("race");
    let line = "two threads, one text, one preparation\r\n";
    let file = write(&dir, "t.txt", line.repeat(2000).as_bytes());
    let cache = dir.join("cache");
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| prep(std::slice::from_ref(&file), Want::Text, &cache, 7).unwrap());
        let two = s.spawn(|| prep(std::slice::from_ref(&file), Want::Text, &cache, 7).unwrap());
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_eq!(a.ids.to_vec(), b.ids.to_vec());
    assert_eq!(a.path, b.path);
    // One prepared it; the other waited for the lock, or came after, and found it ready.
    assert!(
        a.reused != b.reused,
        "reused: {} and {}",
        a.reused,
        b.reused
    );
}

/// A text of more than 2^32 ids, without the disk or memory for one: a sparse file of 5 GB
/// whose few written bytes sit past 2^32, mapped and cut into batches with `u64` positions.
#[test]
fn positions_past_two_to_the_32_are_read() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = scratch("huge");
    let path = dir.join("huge.ids");
    let len: u64 = 5_000_000_000;
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    let marks = [(1u64 << 32) + 7, len - 15];
    for (i, &at) in marks.iter().enumerate() {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[i as u8 + 1]).unwrap();
    }
    drop(f);
    let ids = karnna_data::Ids::map(&path, Width::U8).unwrap();
    assert_eq!(ids.len(), len);
    let mut window = [9u32; 3];
    ids.read(marks[0] - 1, &mut window);
    assert_eq!(window, [0, 1, 0]);
    // One row of 10-id windows: batch k reads ids 10k .. 10k + 11.
    let batches = karnna_data::Batches::new(ids.clone(), 1, 10).unwrap();
    assert_eq!(batches.len() as u64, (len - 1) / 10);
    let k = (marks[0] / 10) as usize;
    let b = batches.get(k);
    assert_eq!(b.inputs[(marks[0] % 10) as usize], 1);
    let last = batches.get(batches.len() - 1);
    // The last window reads ids len - 20 .. len - 9: its targets begin at len - 19.
    assert_eq!(last.targets[4], 2);
    // The notebook's split over it: validation starts past 2^32 in the row.
    let split = karnna_data::Split::new(ids, 1, 10, 0.1, karnna_data::ValSplit::Rows).unwrap();
    assert_eq!(split.train_chars + split.val_chars, (len - 1) / 10 * 10);
    assert!(split.train_chars > 1 << 32);
}
