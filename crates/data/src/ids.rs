//! A text's ids, in memory or memory-mapped from a prepared corpus, read as windows.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// How many bytes one id takes in a prepared corpus file (little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Width {
    /// One byte: a vocabulary of at most 256 symbols.
    U8,
    /// Two bytes: at most 65,536 symbols.
    U16,
    /// Four bytes: any vocabulary.
    U32,
}

impl Width {
    /// The narrowest width that holds every id of a vocabulary of `symbols`.
    pub fn for_vocab(symbols: usize) -> Self {
        match symbols {
            0..=256 => Width::U8,
            257..=65_536 => Width::U16,
            _ => Width::U32,
        }
    }

    /// Bytes an id takes.
    pub fn bytes(self) -> usize {
        match self {
            Width::U8 => 1,
            Width::U16 => 2,
            Width::U32 => 4,
        }
    }

    /// Appends `id` to `out` in this width (the id must fit: see [`Width::for_vocab`]).
    pub fn push(self, id: u32, out: &mut Vec<u8>) {
        match self {
            Width::U8 => out.push(id as u8),
            Width::U16 => out.extend_from_slice(&(id as u16).to_le_bytes()),
            Width::U32 => out.extend_from_slice(&id.to_le_bytes()),
        }
    }
}

/// Where the ids live.
enum Store {
    /// In memory (tests, short texts built in code).
    Memory(Box<[u32]>),
    /// A prepared corpus file, mapped read-only.
    Mapped { map: memmap2::Mmap, width: Width },
}

/// The largest page-cache folio a read of the map can fault in at once (a PMD: 2 MiB on x86-64
/// and arm64 with 4 KiB pages). Linux maps a file's whole large folio on a fault, not only the
/// page read, so each window read would leave up to this much resident.
const FOLIO: usize = 2 << 20;

impl Store {
    /// Copies ids `pos .. pos + out.len()` (positions in the store) into `out`. A mapped store
    /// then gives the folios it read back ([`FOLIO`]): a read leaves nothing resident, so a
    /// loop over windows spread through a text holds a few MiB of it, not the text.
    fn read(&self, pos: usize, out: &mut [u32]) {
        match self {
            Store::Memory(ids) => out.copy_from_slice(&ids[pos..pos + out.len()]),
            Store::Mapped { map, width } => {
                let w = width.bytes();
                let (start, end) = (pos * w, (pos + out.len()) * w);
                let bytes = &map[start..end];
                match width {
                    Width::U8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as u32),
                    Width::U16 => (out.iter_mut().zip(bytes.chunks_exact(2)))
                        .for_each(|(o, b)| *o = u16::from_le_bytes([b[0], b[1]]) as u32),
                    Width::U32 => (out.iter_mut().zip(bytes.chunks_exact(4)))
                        .for_each(|(o, b)| *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                }
                #[cfg(unix)]
                {
                    let lo = start / FOLIO * FOLIO;
                    let hi = end.div_ceil(FOLIO).saturating_mul(FOLIO).min(map.len());
                    // SAFETY: MADV_DONTNEED on a range of a read-only shared file mapping only
                    // unmaps its pages (`lo..hi` lies inside the map: `lo <= start`, `hi` is
                    // clamped to its length); the next read faults them in again from the
                    // file, which is never written while mapped. No reference into the map
                    // outlives this call (`bytes` is dead here), and other threads' reads see
                    // the same bytes whether their pages are mapped or faulted in again.
                    let _ = unsafe {
                        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
                    };
                }
            }
        }
    }
}

/// One piece of an [`Ids`]: `len` ids of `store` from `start`.
#[derive(Clone)]
struct Part {
    store: Arc<Store>,
    start: u64,
    len: u64,
}

/// A sequence of ids: one run of a store, or several runs read one after the other (a
/// multi-file text's training heads, say). Cloning and slicing copy no ids; [`Ids::read`]
/// copies a window out. Positions are `u64`, so a text may hold more than 2^32 characters.
#[derive(Clone, Default)]
pub struct Ids {
    parts: Vec<Part>,
    len: u64,
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ids({} ids in {} parts)", self.len, self.parts.len())
    }
}

impl From<Vec<u32>> for Ids {
    fn from(ids: Vec<u32>) -> Self {
        let len = ids.len() as u64;
        let store = Arc::new(Store::Memory(ids.into_boxed_slice()));
        Self::whole(store, len)
    }
}

impl From<&[u32]> for Ids {
    fn from(ids: &[u32]) -> Self {
        ids.to_vec().into()
    }
}

impl Ids {
    fn whole(store: Arc<Store>, len: u64) -> Self {
        let parts = if len == 0 {
            Vec::new()
        } else {
            vec![Part {
                store,
                start: 0,
                len,
            }]
        };
        Self { parts, len }
    }

    /// Maps the prepared corpus file `path`, whose ids are `width` bytes each.
    ///
    /// The file must not change while it is mapped: prepared corpora are written to a temporary
    /// name and renamed into place, never rewritten (see [`crate::prepare()`]). Errors: the file
    /// cannot be opened or mapped, or its length is not a whole number of ids.
    pub fn map(path: &Path, width: Width) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let bytes = file.metadata()?.len();
        if bytes % width.bytes() as u64 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{bytes} bytes is not a whole number of {width:?} ids"),
            ));
        }
        if bytes == 0 {
            return Ok(Self::default());
        }
        // SAFETY: the mapping is read-only and the file is never written after it was renamed
        // into place (the prepared corpus's contract); a file changed by someone else under the
        // map is the one hazard any mapped file has, and gives wrong ids, which every id read
        // checks against the vocabulary before use as an index.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let len = bytes / width.bytes() as u64;
        Ok(Self::whole(Arc::new(Store::Mapped { map, width }), len))
    }

    /// The number of ids.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ids `start .. end` (`start <= end <= len()`) as a sequence of their own.
    pub fn slice(&self, start: u64, end: u64) -> Ids {
        assert!(
            start <= end && end <= self.len,
            "{start}..{end} of {}",
            self.len
        );
        let mut parts = Vec::new();
        let mut at = 0;
        for p in &self.parts {
            let (lo, hi) = (start.max(at), end.min(at + p.len));
            if lo < hi {
                parts.push(Part {
                    store: p.store.clone(),
                    start: p.start + (lo - at),
                    len: hi - lo,
                });
            }
            at += p.len;
        }
        Ids {
            parts,
            len: end - start,
        }
    }

    /// The sequences one after the other.
    pub fn concat(seqs: &[Ids]) -> Ids {
        let parts: Vec<Part> = seqs.iter().flat_map(|s| s.parts.iter().cloned()).collect();
        let len = seqs.iter().map(|s| s.len).sum();
        Ids { parts, len }
    }

    /// Copies ids `pos .. pos + out.len()` into `out`. Panics past the end.
    pub fn read(&self, pos: u64, out: &mut [u32]) {
        let end = pos + out.len() as u64;
        assert!(end <= self.len, "ids {pos}..{end} of {}", self.len);
        let (mut at, mut filled) = (0u64, 0usize);
        for p in &self.parts {
            if filled == out.len() {
                break;
            }
            let from = pos + filled as u64;
            if from < at + p.len {
                let n = ((at + p.len - from) as usize).min(out.len() - filled);
                let start = (p.start + from - at) as usize;
                p.store.read(start, &mut out[filled..filled + n]);
                filled += n;
            }
            at += p.len;
        }
    }

    /// Every id, copied into memory (for tests and short texts).
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = vec![0; self.len as usize];
        self.read(0, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_concatenations_read_across_parts() {
        let a: Ids = (0..10).collect::<Vec<u32>>().into();
        let b: Ids = (100..105).collect::<Vec<u32>>().into();
        let joined = Ids::concat(&[a.slice(2, 6), b.clone(), a.slice(8, 10)]);
        assert_eq!(joined.len(), 11);
        assert_eq!(
            joined.to_vec(),
            vec![2, 3, 4, 5, 100, 101, 102, 103, 104, 8, 9]
        );
        let mut window = [0; 4];
        joined.read(3, &mut window);
        assert_eq!(window, [5, 100, 101, 102]);
        assert_eq!(
            joined.slice(3, 10).to_vec(),
            vec![5, 100, 101, 102, 103, 104, 8]
        );
        assert!(joined.slice(4, 4).is_empty());
    }

    #[test]
    fn mapped_files_read_in_every_width() {
        let dir = std::env::temp_dir().join(format!("karnna-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (width, ids) in [
            (Width::U8, vec![0u32, 7, 255]),
            (Width::U16, vec![0, 300, 65_535]),
            (Width::U32, vec![0, 70_000, 1_114_111]),
        ] {
            let mut bytes = Vec::new();
            ids.iter().for_each(|&i| width.push(i, &mut bytes));
            let path = dir.join(format!("{width:?}.ids"));
            std::fs::write(&path, &bytes).unwrap();
            let mapped = Ids::map(&path, width).unwrap();
            assert_eq!(mapped.to_vec(), ids);
            assert_eq!(mapped.slice(1, 3).to_vec(), ids[1..]);
        }
        std::fs::write(dir.join("odd.ids"), [1u8, 2, 3]).unwrap();
        assert!(Ids::map(&dir.join("odd.ids"), Width::U16).is_err());
        std::fs::write(dir.join("empty.ids"), []).unwrap();
        assert!(Ids::map(&dir.join("empty.ids"), Width::U8)
            .unwrap()
            .is_empty());
    }

    /// The resident file-backed memory of this process (`RssFile`), in bytes.
    #[cfg(target_os = "linux")]
    fn rss_file() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn windows_read_through_the_map_leave_the_text_unresident() {
        let dir = std::env::temp_dir().join(format!("karnna-ids-rss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.ids");
        let len = 64usize << 20;
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        drop(bytes);
        let ids = Ids::map(&path, Width::U8).unwrap();
        let before = rss_file();
        let mut window = [0u32; 101];
        for k in 0..2000u64 {
            let at = k * (len as u64 - 101) / 2000;
            ids.read(at, &mut window);
            assert_eq!(window[100], ((at + 100) % 251) as u32);
        }
        let grown = rss_file().saturating_sub(before);
        // Without giving the folios back, each of the 2000 windows would leave its folio
        // resident: the whole 64 MiB.
        assert!(
            grown < 8 << 20,
            "{} MiB of the text stayed resident",
            grown >> 20
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
