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

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

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

/// The `<results>.ids.csv` path for a results file.
pub fn path_for(results: &Path) -> PathBuf {
    crate::results::line::beside(results, ".ids.csv")
}

/// The map in memory, written through to its file.
pub struct IdMap {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Opened for append and locked; dropped (and unlocked) with the map.
    file: File,
    /// (location, external key) → contact.
    contacts: HashMap<(String, String), Known>,
    /// (location, contact ID) → conversation.
    conversations: HashMap<(String, String), Known>,
}

impl IdMap {
    /// Opens (or creates) the map at `path`, locks it, and reads what it holds.
    pub fn open(path: &Path) -> Result<IdMap> {
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
        let mut inner = Inner {
            file,
            contacts: HashMap::new(),
            conversations: HashMap::new(),
        };
        let len = inner.file.metadata()?.len();
        if len == 0 {
            (&inner.file).write_all(format!("{}\n", HEADER.join(",")).as_bytes())?;
        } else {
            read_into(path, &mut inner)?;
            // A line cut short by a crash must not swallow the next one appended after it.
            if !ends_with_newline(&inner.file, len)? {
                (&inner.file).write_all(b"\n")?;
            }
        }
        Ok(IdMap {
            path: path.to_owned(),
            inner: Mutex::new(inner),
        })
    }

    /// Where the map lives (`<results>.ids.csv`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The contact an external key resolved to earlier.
    pub fn contact(&self, location: &str, key: &str) -> Option<Known> {
        let inner = self.inner.lock().expect("id map lock");
        inner
            .contacts
            .get(&(location.to_owned(), key.to_owned()))
            .cloned()
    }

    /// The conversation of a contact, if known.
    pub fn conversation(&self, location: &str, contact_id: &str) -> Option<Known> {
        let inner = self.inner.lock().expect("id map lock");
        inner
            .conversations
            .get(&(location.to_owned(), contact_id.to_owned()))
            .cloned()
    }

    /// How many contacts and conversations the map knows in each location, by location.
    pub fn per_location(&self) -> std::collections::BTreeMap<String, (usize, usize)> {
        let inner = self.inner.lock().expect("id map lock");
        let mut counts = std::collections::BTreeMap::<String, (usize, usize)>::new();
        for (location, _) in inner.contacts.keys() {
            counts.entry(location.clone()).or_default().0 += 1;
        }
        for (location, _) in inner.conversations.keys() {
            counts.entry(location.clone()).or_default().1 += 1;
        }
        counts
    }

    /// How many contacts and conversations the map knows.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("id map lock");
        (inner.contacts.len(), inner.conversations.len())
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
        // One write of the whole line: a crash leaves it whole or cut, never interleaved.
        (&inner.file).write_all(&line)?;
        inner
            .contacts
            .insert((location.to_owned(), key.to_owned()), contact.clone());
        if let Some(c) = conversation {
            inner
                .conversations
                .insert((location.to_owned(), contact.id.clone()), c.clone());
        }
        Ok(())
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

fn read_into(path: &Path, inner: &mut Inner) -> Result<()> {
    let context = || format!("reading the ID map {}", path.display());
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::new(
            inner.file.try_clone().with_context(context)?,
        ));
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
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
        if record.len() != HEADER.len() || record[2].is_empty() {
            continue;
        }
        let (Some(contact_origin), location, key) =
            (Origin::parse(&record[3]), &record[0], &record[1])
        else {
            continue;
        };
        let contact = Known {
            id: record[2].to_owned(),
            origin: contact_origin,
        };
        if let (false, Some(origin)) = (record[4].is_empty(), Origin::parse(&record[5])) {
            inner.conversations.insert(
                (location.to_owned(), contact.id.clone()),
                Known {
                    id: record[4].to_owned(),
                    origin,
                },
            );
        }
        inner
            .contacts
            .insert((location.to_owned(), key.to_owned()), contact);
    }
    Ok(())
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
            assert_eq!(map.conversation("L", "K1"), None);
            map.record("L", "email:a@x.io", &k, Some(&known("C1", Origin::Created)))
                .unwrap();
            assert_eq!(map.conversation("L", "K1").unwrap().id, "C1");
            // Locked while open.
            assert!(IdMap::open(&path).is_err());
        }
        // A line cut short by a crash is skipped.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"L,phone:+15037081210,K2").unwrap();
        drop(f);
        let map = IdMap::open(&path).unwrap();
        assert_eq!(
            map.contact("L", "email:a@x.io"),
            Some(known("K1", Origin::Found))
        );
        assert_eq!(
            map.conversation("L", "K1"),
            Some(known("C1", Origin::Created))
        );
        assert_eq!(map.contact("L", "phone:+15037081210"), None);
        // The cut line did not swallow the next one.
        map.record("L", "phone:+1", &known("K3", Origin::Created), None)
            .unwrap();
        drop(map);
        let map = IdMap::open(&path).unwrap();
        assert_eq!(map.contact("L", "phone:+1").unwrap().id, "K3");
        assert_eq!(map.contact("other", "email:a@x.io"), None);
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
    fn beside_the_results_file() {
        assert_eq!(
            path_for(Path::new("out/export.results.csv")),
            PathBuf::from("out/export.results.csv.ids.csv")
        );
    }
}
