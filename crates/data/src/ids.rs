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

impl Store {
    /// Copies ids `pos .. pos + out.len()` (positions in the store) into `out`.
    fn read(&self, pos: usize, out: &mut [u32]) {
        match self {
            Store::Memory(ids) => out.copy_from_slice(&ids[pos..pos + out.len()]),
            Store::Mapped { map, width } => {
                let w = width.bytes();
                let bytes = &map[pos * w..(pos + out.len()) * w];
                match width {
                    Width::U8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as u32),
                    Width::U16 => (out.iter_mut().zip(bytes.chunks_exact(2)))
                        .for_each(|(o, b)| *o = u16::from_le_bytes([b[0], b[1]]) as u32),
                    Width::U32 => (out.iter_mut().zip(bytes.chunks_exact(4)))
                        .for_each(|(o, b)| *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
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
    /// name and renamed into place, never rewritten (see [`crate::prepare`]). Errors: the file
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

    /// Lets the operating system drop the mapped pages read so far from this process's resident
    /// memory (they stay in the page cache, and are read again from it when needed). A long
    /// sequential read (an epoch, a whole evaluation) calls this now and then, so that its
    /// resident memory does not grow with the text. A no-op for ids in memory.
    pub fn release(&self) {
        #[cfg(unix)]
        for p in &self.parts {
            if let Store::Mapped { map, .. } = &*p.store {
                // SAFETY: MADV_DONTNEED on a read-only shared file mapping only unmaps its
                // pages: the next read faults them in again from the file, which is never
                // written while mapped, so every reference into the map (none outlives a
                // `Store::read` call, and those run on this data only) sees the same bytes.
                let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
            }
        }
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
            mapped.release();
            assert_eq!(mapped.slice(1, 3).to_vec(), ids[1..]);
        }
        std::fs::write(dir.join("odd.ids"), [1u8, 2, 3]).unwrap();
        assert!(Ids::map(&dir.join("odd.ids"), Width::U16).is_err());
        std::fs::write(dir.join("empty.ids"), []).unwrap();
        assert!(Ids::map(&dir.join("empty.ids"), Width::U8)
            .unwrap()
            .is_empty());
    }
}
