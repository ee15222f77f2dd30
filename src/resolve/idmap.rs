//! The ID map: what earlier lookups found, so that no lookup is ever made twice, across rows,
//! runs and resumes. It lives beside the results file (`<results>.ids.csv`), one CSV line per
//! finding:
//!
//! ```text
//! location_id,key,contact_id,contact,conversation_id,conversation,resolved_at
//! ve9EPM428h8vShlRW1KT,email:ann@example.com,K1…,found,,,2024-…   contact found, no conversation yet
//! ve9EPM428h8vShlRW1KT,email:ann@example.com,K1…,found,C7…,created,2024-…
//! ```
//!
//! `key` is the contact's external key ([`super::Lookup::key`]). A later line for the same key
//! wins. `contact` / `conversation` say whether the ID was `found`, `created` or `given` (in the
//! input). Lines are appended with one `write(2)` each as soon as an ID is known, like the results
//! journal, so a crash loses nothing that a message was sent with; a line cut short by a crash is
//! skipped on reading. The file is locked while a run or survey uses it.
//!
//! The file is the store; memory holds none of it. Opening the map reads the file once and
//! indexes it on disk: two [`DiskMap`]s in unnamed temp files beside it, from a 128-bit hash of
//! (location, key) and of (location, contact ID) to where the line that last named it starts
//! (built by sorting on disk, so opening a map of a million lines takes the same memory as one
//! of ten). A lookup reads the index's slots and that one line back (positional reads: the
//! OS's page cache keeps them, outside the process) and checks that the line names what was
//! asked. The last [`CACHE`] findings asked for or recorded are also kept decoded in memory, so
//! a contact whose rows come close together costs no read at all. Memory is therefore the same
//! for two thousand contacts as for half a million; nothing of the index needs to survive a
//! crash, as the next run rebuilds it from the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use crate::diskmap::DiskMap;
use crate::extsort::ExternalSort;

/// The header every ID map starts with.
pub const HEADER: [&str; 7] = [
    "location_id",
    "key",
    "contact_id",
    "contact",
    "conversation_id",
    "conversation",
    "resolved_at",
];

/// How an ID came to be known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The input had it.
    Given,
    /// A search found it.
    Found,
    /// This tool created it.
    Created,
}

impl Origin {
    /// The word for it in the ID map's file: `given`, `found` or `created`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Given => "given",
            Origin::Found => "found",
            Origin::Created => "created",
        }
    }

    fn parse(s: &str) -> Option<Origin> {
        Some(match s {
            "given" => Origin::Given,
            "found" => Origin::Found,
            "created" => Origin::Created,
            _ => return None,
        })
    }
}

/// One known ID with how it came to be known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// The HighLevel ID (a contact's or a conversation's).
    pub id: String,
    /// How it came to be known.
    pub origin: Origin,
}

/// What a lookup in the map asks for.
#[derive(Clone, Copy)]
enum Kind {
    /// A contact, by its external key.
    Contact,
    /// A contact's conversation, by the contact's ID.
    Conversation,
}

impl Kind {
    /// The field of a line that names what was asked (`key`, `contact_id`).
    fn field(self) -> usize {
        match self {
            Kind::Contact => 1,
            Kind::Conversation => 2,
        }
    }
}

/// The `<results>.ids.csv` path for a results file.
pub fn path_for(results: &Path) -> PathBuf {
    crate::results::line::beside(results, ".ids.csv")
}

/// Findings kept decoded in memory, per kind (contacts, conversations): the most recently asked
/// for or recorded, from 2,048 to 4,096 of each (about 100 bytes each).
pub const CACHE: usize = 4096;

/// The most locations one map tells apart (the index keeps a location's number in 16 bits).
const MAX_LOCATIONS: usize = 1 << 16;

/// Bits of an index value that hold the line's byte offset; the location's number is above.
const OFFSET_BITS: u32 = 48;

/// The map, on disk, with its index and a cache.
pub struct IdMap {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Opened for reading and appending, and locked; dropped (and unlocked) with the map.
    file: File,
    /// Where the next line goes: the file's length.
    end: u64,
    /// hash of (location, external key) → the line that last gave its contact.
    contacts: DiskMap,
    /// hash of (location, contact ID) → the line that last gave its conversation.
    conversations: DiskMap,
    /// Every location the map names, with how many contacts and conversations it knows there;
    /// an index value holds the location's number here.
    locations: Vec<(String, u64, u64)>,
    /// hash → finding, of the most recent.
    recent_contacts: Recent,
    recent_conversations: Recent,
}

/// The index key of a contact's external key in a location (also the key of the other tables
/// of distinct contacts: the pass's, the survey's, the missing contacts').
pub fn contact_hash(location: &str, key: &str) -> u128 {
    hash(b'k', location, key)
}

/// The index key of a contact's conversation.
fn conversation_hash(location: &str, contact_id: &str) -> u128 {
    hash(b'c', location, contact_id)
}

fn hash(kind: u8, location: &str, name: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[kind]);
    h.update(&(location.len() as u64).to_le_bytes());
    h.update(location.as_bytes());
    h.update(name.as_bytes());
    h.digest128()
}

impl IdMap {
    /// Opens (or creates) the map at `path`, locks it, and indexes what it holds.
    pub fn open(path: &Path) -> Result<IdMap> {
        IdMap::with_cache(path, CACHE)
    }

    /// [`open`](IdMap::open) with room for `cache` decoded findings of each kind (tests use a
    /// cache smaller than the contacts they look up).
    pub fn with_cache(path: &Path, cache: usize) -> Result<IdMap> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("cannot open the ID map {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "the ID map {} is in use by another lc-import run: wait for it to finish",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let dir = crate::results::line::folder_of(path);
        let mut inner = Inner {
            file,
            end: 0,
            contacts: DiskMap::new(&dir),
            conversations: DiskMap::new(&dir),
            locations: Vec::new(),
            recent_contacts: Recent::new(cache),
            recent_conversations: Recent::new(cache),
        };
        let len = inner.file.metadata()?.len();
        if len == 0 {
            (&inner.file).write_all(format!("{}\n", HEADER.join(",")).as_bytes())?;
        } else {
            index(path, &dir, &mut inner)?;
            // A line cut short by a crash must not swallow the next one appended after it.
            if !ends_with_newline(&inner.file, len)? {
                (&inner.file).write_all(b"\n")?;
            }
        }
        inner.end = inner.file.metadata()?.len();
        Ok(IdMap {
            path: path.to_owned(),
            inner: Mutex::new(inner),
        })
    }

    /// Where the map lives (`<results>.ids.csv`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unreadable(&self, e: std::io::Error) -> anyhow::Error {
        anyhow::Error::new(e).context(format!("cannot read the ID map {}", self.path.display()))
    }

    /// The contact an external key resolved to earlier.
    pub fn contact(&self, location: &str, key: &str) -> Result<Option<Known>> {
        self.known(Kind::Contact, location, key)
    }

    /// The conversation of a contact, if known.
    pub fn conversation(&self, location: &str, contact_id: &str) -> Result<Option<Known>> {
        self.known(Kind::Conversation, location, contact_id)
    }

    /// What the map knows of `name` (a contact's key, or a contact ID for its conversation):
    /// from the cache, else the line the index points at, if that line names it.
    fn known(&self, kind: Kind, location: &str, name: &str) -> Result<Option<Known>> {
        let h = match kind {
            Kind::Contact => contact_hash(location, name),
            Kind::Conversation => conversation_hash(location, name),
        };
        let mut guard = self.inner.lock().expect("id map lock");
        let inner = &mut *guard;
        let (table, recent) = match kind {
            Kind::Contact => (&inner.contacts, &mut inner.recent_contacts),
            Kind::Conversation => (&inner.conversations, &mut inner.recent_conversations),
        };
        if let Some(known) = recent.get(h) {
            return Ok(Some(known));
        }
        let Some(value) = table.get(h).map_err(|e| self.unreadable(e))? else {
            return Ok(None);
        };
        let line = inner.line(value).map_err(|e| self.unreadable(e))?;
        let found = line
            .filter(|l| l.names(location, kind.field(), name))
            .and_then(|l| match kind {
                Kind::Contact => l.contact(),
                Kind::Conversation => l.conversation(),
            });
        if let Some(known) = &found {
            match kind {
                Kind::Contact => inner.recent_contacts.put(h, known.clone()),
                Kind::Conversation => inner.recent_conversations.put(h, known.clone()),
            }
        }
        Ok(found)
    }

    /// How many contacts and conversations the map knows in each location, by location.
    pub fn per_location(&self) -> std::collections::BTreeMap<String, (usize, usize)> {
        let inner = self.inner.lock().expect("id map lock");
        inner
            .locations
            .iter()
            .map(|(name, contacts, conversations)| {
                (name.clone(), (*contacts as usize, *conversations as usize))
            })
            .collect()
    }

    /// How many contacts and conversations the map knows.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("id map lock");
        (
            inner.contacts.len() as usize,
            inner.conversations.len() as usize,
        )
    }

    /// Records what is known of `key` now, written through to the file before returning.
    pub fn record(
        &self,
        location: &str,
        key: &str,
        contact: &Known,
        conversation: Option<&Known>,
    ) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(160);
        {
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(&mut line);
            w.write_record([
                location,
                key,
                &contact.id,
                contact.origin.as_str(),
                conversation.map_or("", |c| c.id.as_str()),
                conversation.map_or("", |c| c.origin.as_str()),
                &crate::results::line::now_rfc3339(),
            ])?;
            w.flush()?;
        }
        let mut inner = self.inner.lock().expect("id map lock");
        let at = inner.end;
        // One write of the whole line: a crash leaves it whole or cut, never interleaved.
        if let Err(e) = (&inner.file).write_all(&line) {
            // Part of it may be there: the next line goes after whatever is.
            inner.end = inner.file.metadata().map_or(at, |m| m.len());
            return Err(e);
        }
        inner.end += line.len() as u64;
        let place = inner.place(location, at)?;
        let h = contact_hash(location, key);
        if inner.contacts.insert(h, place)?.is_none() {
            inner.count(place, 1);
        }
        inner.recent_contacts.put(h, contact.clone());
        if let Some(c) = conversation {
            let h = conversation_hash(location, &contact.id);
            if inner.conversations.insert(h, place)?.is_none() {
                inner.count(place, 2);
            }
            inner.recent_conversations.put(h, c.clone());
        }
        Ok(())
    }
}

impl Inner {
    /// The index value of a line at `offset` naming `location`: the location's number and the
    /// offset. A location not named before is added.
    fn place(&mut self, location: &str, offset: u64) -> std::io::Result<u64> {
        let number = match self.locations.iter().position(|(l, _, _)| l == location) {
            Some(n) => n,
            None if self.locations.len() < MAX_LOCATIONS => {
                self.locations.push((location.to_owned(), 0, 0));
                self.locations.len() - 1
            }
            None => {
                return Err(std::io::Error::other(format!(
                    "it names more than {MAX_LOCATIONS} locations; give this run its own --results file"
                )));
            }
        };
        if offset >> OFFSET_BITS != 0 {
            return Err(std::io::Error::other("it is larger than 256 TiB"));
        }
        Ok(((number as u64) << OFFSET_BITS) | offset)
    }

    /// One more distinct contact (`what` 1) or conversation (2) in the location of `place`.
    fn count(&mut self, place: u64, what: u8) {
        let (_, contacts, conversations) = &mut self.locations[(place >> OFFSET_BITS) as usize];
        match what {
            1 => *contacts += 1,
            _ => *conversations += 1,
        }
    }

    /// The line an index value points at, read back from the file.
    fn line(&self, place: u64) -> std::io::Result<Option<Line>> {
        read_line(&self.file, place & ((1 << OFFSET_BITS) - 1), self.end)
    }
}

/// One line of the map, as read back.
struct Line(csv::StringRecord);

impl Line {
    /// Whether the line is of `location` and its field `field` is `value`.
    fn names(&self, location: &str, field: usize, value: &str) -> bool {
        self.0.len() == HEADER.len() && &self.0[0] == location && &self.0[field] == value
    }

    fn contact(&self) -> Option<Known> {
        let r = &self.0;
        if r.len() != HEADER.len() || r[2].is_empty() {
            return None;
        }
        Some(Known {
            id: r[2].to_owned(),
            origin: Origin::parse(&r[3])?,
        })
    }

    fn conversation(&self) -> Option<Known> {
        let r = &self.0;
        self.contact()?;
        if r[4].is_empty() {
            return None;
        }
        Some(Known {
            id: r[4].to_owned(),
            origin: Origin::parse(&r[5])?,
        })
    }
}

/// The CSV record that starts at `offset` (`None` if what is there is no whole record), read
/// with positional reads, a few hundred bytes at a time.
fn read_line(file: &File, offset: u64, end: u64) -> std::io::Result<Option<Line>> {
    use std::os::unix::fs::FileExt;
    let mut want = 512usize;
    loop {
        let n = (want as u64).min(end.saturating_sub(offset)) as usize;
        let mut bytes = vec![0u8; n];
        file.read_exact_at(&mut bytes, offset)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes.as_slice());
        let mut record = csv::StringRecord::new();
        let whole = match reader.read_record(&mut record) {
            Ok(true) => true,
            Ok(false) => return Ok(None),
            Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => return Ok(None),
            Err(e) => return Err(std::io::Error::other(e)),
        };
        // A record that runs to the end of what was read may go on past it.
        let complete = (reader.position().byte() as usize) < n || offset + n as u64 >= end;
        if whole && complete {
            return Ok(Some(Line(record)));
        }
        want *= 4;
    }
}

/// The most recent findings, decoded: two generations of at most half the room each; a full
/// young one becomes the old one, and what was old goes. A finding asked for from the old
/// generation moves to the young one.
struct Recent {
    room: usize,
    young: HashMap<u128, Known>,
    old: HashMap<u128, Known>,
}

impl Recent {
    fn new(room: usize) -> Recent {
        Recent {
            room: room.max(2),
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    fn get(&mut self, h: u128) -> Option<Known> {
        if let Some(k) = self.young.get(&h) {
            return Some(k.clone());
        }
        let k = self.old.remove(&h)?;
        self.put(h, k.clone());
        Some(k)
    }

    fn put(&mut self, h: u128, known: Known) {
        if self.young.len() >= self.room / 2 && !self.young.contains_key(&h) {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&h);
        self.young.insert(h, known);
    }
}

fn ends_with_newline(file: &File, len: u64) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Reads the whole file once and builds the index: every valid line's offset, under the hash
/// of its contact key and (when it gives one) of its contact's conversation, sorted on disk;
/// the last line of a hash wins.
fn index(path: &Path, dir: &Path, inner: &mut Inner) -> Result<()> {
    let context = || format!("reading the ID map {}", path.display());
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(
            64 * 1024,
            inner.file.try_clone().with_context(context)?,
        ));
    let mut contacts = ExternalSort::new(dir);
    let mut conversations = ExternalSort::new(dir);
    let (mut contact_lines, mut conversation_lines) = (0u64, 0u64);
    let push = |sort: &mut ExternalSort, h: u128, place: u64| {
        sort.push([(h >> 64) as u64, h as u64, place])
            .context("indexing the ID map in a temp file")
    };
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let offset = reader.position().byte();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            // A line cut short or garbled by a crash: skip it, the lookup is simply made again.
            Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => continue,
            Err(e) => return Err(e).with_context(context),
        }
        if first {
            first = false;
            if record.iter().ne(HEADER) {
                bail!(
                    "{} is not an ID map of lc-import (its first line is not {}): move it away",
                    path.display(),
                    HEADER.join(",")
                );
            }
            continue;
        }
        let line = Line(record);
        let (contact, conversation) = (line.contact(), line.conversation());
        record = line.0;
        if contact.is_none() {
            continue;
        }
        let place = inner.place(&record[0], offset).with_context(context)?;
        push(&mut contacts, contact_hash(&record[0], &record[1]), place)?;
        contact_lines += 1;
        if conversation.is_some() {
            push(
                &mut conversations,
                conversation_hash(&record[0], &record[2]),
                place,
            )?;
            conversation_lines += 1;
        }
    }
    let build = |sort: ExternalSort, lines: u64, locations: &mut Vec<(String, u64, u64)>, what| {
        let sorted = sort
            .finish()
            .context("indexing the ID map in a temp file")?;
        let counted = Distinct {
            sorted,
            last: None,
            per_location: |place: u64| {
                let (_, contacts, conversations) = &mut locations[(place >> OFFSET_BITS) as usize];
                match what {
                    1 => *contacts += 1,
                    _ => *conversations += 1,
                }
            },
        };
        DiskMap::from_sorted(dir, lines, counted).context("indexing the ID map in a temp file")
    };
    inner.contacts = build(contacts, contact_lines, &mut inner.locations, 1)?;
    inner.conversations = build(conversations, conversation_lines, &mut inner.locations, 2)?;
    Ok(())
}

/// Sorted index records, one per hash (the last, the line written last), each counted in its
/// location as it goes by.
struct Distinct<F: FnMut(u64)> {
    sorted: crate::extsort::Sorted,
    last: Option<(u128, u64)>,
    per_location: F,
}

impl<F: FnMut(u64)> Iterator for Distinct<F> {
    type Item = std::io::Result<(u128, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.sorted.next() {
                Some(Ok([hi, lo, place])) => {
                    let h = (u128::from(hi) << 64) | u128::from(lo);
                    match self.last.replace((h, place)) {
                        Some((previous, _)) if previous == h => {}
                        Some(done) => {
                            (self.per_location)(done.1);
                            return Some(Ok(done));
                        }
                        None => {}
                    }
                }
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    let done = self.last.take()?;
                    (self.per_location)(done.1);
                    return Some(Ok(done));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(id: &str, origin: Origin) -> Known {
        Known {
            id: id.into(),
            origin,
        }
    }

    #[test]
    fn written_through_and_read_back_with_the_last_line_winning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv.ids.csv");
        {
            let map = IdMap::open(&path).unwrap();
            let k = known("K1", Origin::Found);
            map.record("L", "email:a@x.io", &k, None).unwrap();
            assert_eq!(map.conversation("L", "K1").unwrap(), None);
            map.record("L", "email:a@x.io", &k, Some(&known("C1", Origin::Created)))
                .unwrap();
            assert_eq!(map.conversation("L", "K1").unwrap().unwrap().id, "C1");
            // Locked while open.
            assert!(IdMap::open(&path).is_err());
        }
        // A line cut short by a crash is skipped.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"L,phone:+15037081210,K2").unwrap();
        drop(f);
        let map = IdMap::open(&path).unwrap();
        assert_eq!(
            map.contact("L", "email:a@x.io").unwrap(),
            Some(known("K1", Origin::Found))
        );
        assert_eq!(
            map.conversation("L", "K1").unwrap(),
            Some(known("C1", Origin::Created))
        );
        assert_eq!(map.contact("L", "phone:+15037081210").unwrap(), None);
        // The cut line did not swallow the next one.
        map.record("L", "phone:+1", &known("K3", Origin::Created), None)
            .unwrap();
        drop(map);
        let map = IdMap::open(&path).unwrap();
        assert_eq!(map.contact("L", "phone:+1").unwrap().unwrap().id, "K3");
        assert_eq!(map.contact("other", "email:a@x.io").unwrap(), None);
        assert_eq!(map.len(), (2, 1));
    }

    #[test]
    fn counts_are_per_location() {
        let dir = tempfile::tempdir().unwrap();
        let map = IdMap::open(&dir.path().join("r.csv.ids.csv")).unwrap();
        let k = known("K1", Origin::Found);
        map.record("L1", "email:a@x.io", &k, Some(&known("C1", Origin::Found)))
            .unwrap();
        map.record("L1", "email:b@x.io", &known("K2", Origin::Found), None)
            .unwrap();
        map.record("L2", "email:a@x.io", &known("K3", Origin::Created), None)
            .unwrap();
        let counts: Vec<_> = map.per_location().into_iter().collect();
        assert_eq!(counts, vec![("L1".into(), (2, 1)), ("L2".into(), (1, 0))]);
    }

    #[test]
    fn a_cache_smaller_than_the_contacts_still_gives_the_right_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv.ids.csv");
        let contact = |i: u64| known(&format!("K{i}"), Origin::Created);
        let conversation = |i: u64| known(&format!("C{i}"), Origin::Found);
        let key = |i: u64| format!("email:person{i}@example.com");
        // 70,000 contacts: more than one run of the sort that indexes the file on opening.
        const N: u64 = 70_000;
        {
            let map = IdMap::with_cache(&path, 8).unwrap();
            for i in 0..N {
                map.record("L", &key(i), &contact(i), None).unwrap();
                // Every other contact's conversation on a second line, as a run writes it.
                if i.is_multiple_of(2) {
                    map.record("L", &key(i), &contact(i), Some(&conversation(i)))
                        .unwrap();
                }
            }
            // A contact found again under another ID: the later line wins, after eviction too.
            map.record("L", &key(7), &known("K7b", Origin::Found), None)
                .unwrap();
            let mut rng = fastrand::Rng::with_seed(3);
            for _ in 0..2_000 {
                let i = rng.u64(0..N);
                let want = if i == 7 {
                    known("K7b", Origin::Found)
                } else {
                    contact(i)
                };
                assert_eq!(
                    map.contact("L", &key(i)).unwrap(),
                    Some(want),
                    "contact {i}"
                );
                assert_eq!(
                    map.conversation("L", &format!("K{i}")).unwrap(),
                    i.is_multiple_of(2).then(|| conversation(i)),
                    "conversation {i}"
                );
            }
        }
        // Opened again: the index is built anew from the file, the cache still tiny.
        let map = IdMap::with_cache(&path, 2).unwrap();
        assert_eq!(map.len(), (N as usize, N as usize / 2));
        assert_eq!(map.per_location()["L"], (N as usize, N as usize / 2));
        for i in (0..N).step_by(997).chain([7, N - 1]) {
            let want = if i == 7 {
                known("K7b", Origin::Found)
            } else {
                contact(i)
            };
            assert_eq!(
                map.contact("L", &key(i)).unwrap(),
                Some(want),
                "contact {i}"
            );
            assert_eq!(
                map.conversation("L", &format!("K{i}")).unwrap(),
                i.is_multiple_of(2).then(|| conversation(i))
            );
            // The same key in another location, and a key never recorded, are unknown.
            assert_eq!(map.contact("M", &key(i)).unwrap(), None);
        }
        assert_eq!(map.contact("L", "email:nobody@example.com").unwrap(), None);
        // K6's conversation is known from K6's line; K7b has no conversation of its own.
        assert_eq!(map.conversation("L", "K7b").unwrap(), None);
    }

    #[test]
    fn an_id_map_written_by_hand_reads_fields_with_commas_and_quotes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv.ids.csv");
        std::fs::write(
            &path,
            format!(
                "{}\n\"L,1\",\"email:\"\"odd\"\"@x.io\",K1,found,C1,created,2024-01-01T00:00:00Z\n\nL,phone:+1,K2,nonsense,,,\n",
                HEADER.join(",")
            ),
        )
        .unwrap();
        let map = IdMap::open(&path).unwrap();
        assert_eq!(
            map.contact("L,1", "email:\"odd\"@x.io").unwrap(),
            Some(known("K1", Origin::Found))
        );
        assert_eq!(
            map.conversation("L,1", "K1").unwrap(),
            Some(known("C1", Origin::Created))
        );
        // A line whose origin is no word of the map is skipped, as before.
        assert_eq!(map.contact("L", "phone:+1").unwrap(), None);
        assert_eq!(map.len(), (1, 1));
    }

    #[test]
    fn beside_the_results_file() {
        assert_eq!(
            path_for(Path::new("out/export.results.csv")),
            PathBuf::from("out/export.results.csv.ids.csv")
        );
    }
}
