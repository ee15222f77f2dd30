//! A hash table on disk: 128-bit keys (hashes) to 64-bit values, in an unnamed temp file, so that
//! what a run must remember per distinct contact costs no memory however many contacts there
//! are (the ID map's index, the distinct contacts of the pass before sending and of a survey).
//!
//! Open addressing with linear probing over 24-byte slots (`key hi, key lo, value`, little
//! endian; key 0 is an empty slot), read and written with positional reads and writes: nothing is
//! mapped into memory and nothing is cached here, the OS's page cache does that outside the
//! process (a table of a million entries is 48 MiB of file, none of it in the process's RSS).
//! The table holds at most half as many entries as slots; past that it is rebuilt twice as big,
//! its entries read front to back and placed one by one. A table made from many entries at once
//! (the ID map's, from its file) is written from entries sorted by key, front to back: in a table
//! whose home slot is the top bits of the key, entries sorted by key are entries in probe order.
//! A probe that runs past the last slot goes on into [`OVERFLOW`] spare slots (no wrap-around,
//! so a build in key order never has to come back to the front).
//!
//! Nothing here is durable: the file goes away with the process, however it ends. A table that
//! must outlive a run is rebuilt from a log it indexes (the ID map).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per slot: key hi, key lo, value.
const SLOT: usize = 24;
/// Slots past the table proper, for probes that run off its end.
const OVERFLOW: u64 = 256;
/// Slots read at once by a probe (one read for almost every lookup at half load).
const PROBE: usize = 16;
/// The smallest table, in slots (24 KiB of file).
const MIN_BITS: u32 = 10;
/// How many times a build that overflows its spare slots doubles the table before it gives up:
/// hashes never crowd like that, keys that were not hashed could.
const GROWTH_ON_OVERFLOW: u32 = 3;

/// A map from 128-bit keys to 64-bit values in a temp file. Its file is created at the first
/// insert (a map never written costs no file).
pub struct DiskMap {
    dir: PathBuf,
    /// `None` until the first insert.
    file: Option<File>,
    /// The table proper has `1 << bits` slots, then [`OVERFLOW`] more.
    bits: u32,
    len: u64,
}

/// A key as stored: never 0, the empty slot (one bit of a 128-bit hash is given up for it).
fn stored(key: u128) -> u128 {
    key | 1
}

fn slots(bits: u32) -> u64 {
    (1u64 << bits) + OVERFLOW
}

fn home(key: u128, bits: u32) -> u64 {
    ((key >> 64) as u64) >> (64 - bits)
}

fn decode(bytes: &[u8]) -> (u128, u64) {
    let n = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    ((u128::from(n(0)) << 64) | u128::from(n(1)), n(2))
}

fn encode(key: u128, value: u64) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..8].copy_from_slice(&((key >> 64) as u64).to_le_bytes());
    slot[8..16].copy_from_slice(&(key as u64).to_le_bytes());
    slot[16..].copy_from_slice(&value.to_le_bytes());
    slot
}

/// Where a probe for a key ended.
enum Probe {
    /// The key is in this slot, with this value.
    Found(u64, u64),
    /// The key is not in the table; this empty slot is where it goes.
    Empty(u64),
    /// The key is not in the table, and its probe ran past the last slot.
    Full,
}

impl DiskMap {
    /// An empty map whose file will be in `dir`.
    pub fn new(dir: &Path) -> DiskMap {
        DiskMap {
            dir: dir.to_owned(),
            file: None,
            bits: MIN_BITS,
            len: 0,
        }
    }

    /// A map of `entries` sorted by key (later values of a key win), about `count` of them (an
    /// upper bound: it sizes the table).
    pub fn from_sorted(
        dir: &Path,
        count: u64,
        entries: impl Iterator<Item = io::Result<(u128, u64)>>,
    ) -> io::Result<DiskMap> {
        let mut bits = MIN_BITS;
        while (1u64 << bits) < count.saturating_mul(2) {
            bits += 1;
        }
        let mut map = DiskMap::new(dir);
        map.bits = bits;
        let most = bits + GROWTH_ON_OVERFLOW;
        // At half load an overflow past OVERFLOW spare slots is all but impossible; a build
        // that meets one gives the entries back, and they go into a table twice the size.
        let mut pending: Vec<(u128, u64)> = Vec::new();
        let mut entries = entries.map(|e| e.map(|(k, v)| (stored(k), v)));
        loop {
            let (file, len, left) =
                build(dir, map.bits, pending.drain(..).map(Ok).chain(&mut entries))?;
            match left {
                None => {
                    map.file = Some(file);
                    map.len = len;
                    return Ok(map);
                }
                Some(rest) => {
                    pending = rest;
                    map.bits += 1;
                    if map.bits > most {
                        return Err(io::Error::other(
                            "more keys with the same home slot than a table can hold",
                        ));
                    }
                    // The entries already written are read back from the file they went to.
                    let mut all = read_all(&file)?;
                    all.append(&mut pending);
                    all.sort_by_key(|e| e.0);
                    pending = all;
                }
            }
        }
    }

    /// How many keys the map holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the map holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: u128) -> io::Result<Option<u64>> {
        Ok(match self.probe(stored(key))? {
            Probe::Found(_, value) => Some(value),
            Probe::Empty(_) | Probe::Full => None,
        })
    }

    /// Sets the value of `key`; its value before, if it had one.
    pub fn insert(&mut self, key: u128, value: u64) -> io::Result<Option<u64>> {
        let key = stored(key);
        if self.file.is_none() {
            let file = tempfile::tempfile_in(&self.dir)?;
            file.set_len(slots(self.bits) * SLOT as u64)?;
            self.file = Some(file);
        }
        loop {
            let at = match self.probe(key)? {
                Probe::Found(at, old) => {
                    self.write(at, key, value)?;
                    return Ok(Some(old));
                }
                Probe::Empty(at) if (self.len + 1) * 2 <= 1u64 << self.bits => at,
                Probe::Empty(_) | Probe::Full => {
                    self.grow()?;
                    continue;
                }
            };
            self.write(at, key, value)?;
            self.len += 1;
            return Ok(None);
        }
    }

    fn write(&self, at: u64, key: u128, value: u64) -> io::Result<()> {
        let file = self.file.as_ref().expect("a file before a write");
        file.write_all_at(&encode(key, value), at * SLOT as u64)
    }

    fn probe(&self, key: u128) -> io::Result<Probe> {
        let Some(file) = &self.file else {
            return Ok(Probe::Full);
        };
        let end = slots(self.bits);
        let mut at = home(key, self.bits);
        let mut chunk = [0u8; SLOT * PROBE];
        while at < end {
            let n = PROBE.min((end - at) as usize);
            file.read_exact_at(&mut chunk[..n * SLOT], at * SLOT as u64)?;
            for (i, slot) in chunk[..n * SLOT].chunks_exact(SLOT).enumerate() {
                match decode(slot) {
                    (0, _) => return Ok(Probe::Empty(at + i as u64)),
                    (k, value) if k == key => return Ok(Probe::Found(at + i as u64, value)),
                    _ => {}
                }
            }
            at += n as u64;
        }
        Ok(Probe::Full)
    }

    /// Rebuilds the table twice as big (or bigger, in the rare case of an overflow), reading
    /// the old one front to back and placing each entry in the new one: a few kilobytes of
    /// memory whatever the size (a sort would hold a buffer of its records).
    fn grow(&mut self) -> io::Result<()> {
        let Some(old) = self.file.take() else {
            return Ok(());
        };
        let most = self.bits + 1 + GROWTH_ON_OVERFLOW;
        let mut bits = self.bits + 1;
        loop {
            let file = tempfile::tempfile_in(&self.dir)?;
            file.set_len(slots(bits) * SLOT as u64)?;
            let mut bigger = DiskMap {
                dir: self.dir.clone(),
                file: Some(file),
                bits,
                len: 0,
            };
            let mut fits = true;
            for_each_entry(&old, |key, value| {
                match bigger.probe(key)? {
                    Probe::Empty(at) if fits => {
                        bigger.write(at, key, value)?;
                        bigger.len += 1;
                    }
                    _ => fits = false,
                }
                Ok(())
            })?;
            if fits {
                *self = bigger;
                return Ok(());
            }
            bits += 1;
            if bits > most {
                self.file = Some(old);
                return Err(io::Error::other(
                    "more keys with the same home slot than a table can hold",
                ));
            }
        }
    }
}

/// Calls `f` with every entry of a table file, in slot order.
fn for_each_entry(file: &File, mut f: impl FnMut(u128, u64) -> io::Result<()>) -> io::Result<()> {
    let size = file.metadata()?.len();
    let mut chunk = vec![0u8; SLOT * 2730];
    let mut at = 0u64;
    while at < size {
        let n = (chunk.len() as u64).min(size - at) as usize;
        file.read_exact_at(&mut chunk[..n], at)?;
        for slot in chunk[..n].chunks_exact(SLOT) {
            match decode(slot) {
                (0, _) => {}
                (key, value) => f(key, value)?,
            }
        }
        at += n as u64;
    }
    Ok(())
}

fn read_all(file: &File) -> io::Result<Vec<(u128, u64)>> {
    let mut all = Vec::new();
    for_each_entry(file, |k, v| {
        all.push((k, v));
        Ok(())
    })?;
    Ok(all)
}

/// A table written: its file, how many keys it holds, and the entries that did not fit.
type Built = (File, u64, Option<Vec<(u128, u64)>>);

/// Writes `entries` (stored keys, ascending) into a new table of `1 << bits` slots, each at its
/// home slot or the first free one after it: the file, the number of distinct keys, and the
/// entries left over if the probes ran past the spare slots.
fn build(
    dir: &Path,
    bits: u32,
    entries: impl Iterator<Item = io::Result<(u128, u64)>>,
) -> io::Result<Built> {
    let file = tempfile::tempfile_in(dir)?;
    file.set_len(slots(bits) * SLOT as u64)?;
    let mut b = Builder {
        file,
        bits,
        run: Vec::with_capacity(RUN_BYTES),
        run_start: 0,
        next: 0,
        len: 0,
    };
    let mut last: Option<(u128, u64)> = None;
    let mut entries = entries.peekable();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        match last {
            // A later value of the same key wins.
            Some((k, _)) if k == entry.0 => last = Some(entry),
            Some(previous) => {
                if !b.place(previous)? {
                    let mut rest = vec![previous, entry];
                    for e in entries {
                        rest.push(e?);
                    }
                    return b.finish(Some(rest));
                }
                last = Some(entry);
            }
            None => last = Some(entry),
        }
    }
    if let Some(previous) = last
        && !b.place(previous)?
    {
        return b.finish(Some(vec![previous]));
    }
    b.finish(None)
}

/// Bytes of consecutive slots a build writes at once.
const RUN_BYTES: usize = 64 * 1024;

/// A table being written front to back.
struct Builder {
    file: File,
    bits: u32,
    /// Consecutive slots not yet written, from `run_start` on.
    run: Vec<u8>,
    run_start: u64,
    /// The first slot not yet taken.
    next: u64,
    len: u64,
}

impl Builder {
    /// Places an entry at its home slot or the first free one after it; false when that is
    /// past the last spare slot.
    fn place(&mut self, (key, value): (u128, u64)) -> io::Result<bool> {
        let at = home(key, self.bits).max(self.next);
        if at >= slots(self.bits) {
            return Ok(false);
        }
        if at != self.run_start + (self.run.len() / SLOT) as u64 || self.run.len() >= RUN_BYTES {
            self.flush()?;
            self.run_start = at;
        }
        self.run.extend_from_slice(&encode(key, value));
        self.next = at + 1;
        self.len += 1;
        Ok(true)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.run.is_empty() {
            self.file
                .write_all_at(&self.run, self.run_start * SLOT as u64)?;
            self.run.clear();
        }
        Ok(())
    }

    fn finish(mut self, left: Option<Vec<(u128, u64)>>) -> io::Result<Built> {
        self.flush()?;
        Ok((self.file, self.len, left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn key(rng: &mut fastrand::Rng) -> u128 {
        (u128::from(rng.u64(..)) << 64) | u128::from(rng.u64(..))
    }

    #[test]
    fn inserts_gets_and_updates_across_growth() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = DiskMap::new(dir.path());
        let mut want: HashMap<u128, u64> = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        assert_eq!(
            map.get(42).unwrap(),
            None,
            "an empty map has no file and no key"
        );
        let mut keys = Vec::new();
        for i in 0..20_000u64 {
            // Every fifth insert updates a key already there.
            let k = if i % 5 == 4 {
                keys[rng.usize(..keys.len())]
            } else {
                let k = stored(key(&mut rng));
                keys.push(k);
                k
            };
            assert_eq!(map.insert(k, i).unwrap(), want.insert(k, i), "insert {i}");
        }
        assert_eq!(map.len(), want.len() as u64);
        assert!(map.bits > MIN_BITS, "it grew");
        for (k, v) in &want {
            assert_eq!(map.get(*k).unwrap(), Some(*v));
        }
        for _ in 0..1000 {
            let k = stored(key(&mut rng));
            assert_eq!(map.get(k).unwrap(), want.get(&k).copied());
        }
    }

    #[test]
    fn keys_with_one_home_probe_past_the_end_into_the_spare_slots() {
        let dir = tempfile::tempdir().unwrap();
        // Every key's home is the last slot, in a table of any size: they crowd into the spare
        // slots (a build and inserts alike).
        let top = u128::MAX << 64;
        let entries: Vec<(u128, u64)> = (0..200u64)
            .map(|i| (top | (u128::from(i) << 1), i))
            .collect();
        let map = DiskMap::from_sorted(
            dir.path(),
            entries.len() as u64,
            entries.iter().copied().map(Ok),
        )
        .unwrap();
        for (k, v) in &entries {
            assert_eq!(map.get(*k).unwrap(), Some(*v));
        }
        assert_eq!(map.len(), 200);
        let mut map = DiskMap::new(dir.path());
        for (k, v) in &entries {
            assert_eq!(map.insert(*k, *v).unwrap(), None);
        }
        for (k, v) in &entries {
            assert_eq!(map.get(*k).unwrap(), Some(*v));
        }
        // More than the spare slots hold: an error, not a table grown without end.
        let e = DiskMap::from_sorted(
            dir.path(),
            400,
            (0..400u64).map(|i| Ok((top | (u128::from(i) << 1), i))),
        )
        .err()
        .expect("too many keys of one home");
        assert!(e.to_string().contains("same home"), "{e}");
    }

    #[test]
    fn a_sorted_build_keeps_the_last_value_of_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [
            (2u128 << 64, 1u64),
            (2 << 64, 5),
            (3 << 64, 7),
            (u128::MAX, 9),
        ];
        let map = DiskMap::from_sorted(dir.path(), 4, entries.iter().copied().map(Ok)).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(2 << 64).unwrap(), Some(5));
        assert_eq!(map.get(3 << 64).unwrap(), Some(7));
        assert_eq!(map.get(u128::MAX).unwrap(), Some(9));
        assert_eq!(map.get(4 << 64).unwrap(), None);
    }
}
