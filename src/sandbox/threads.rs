//! E-mail threads in the sandbox: every `emailMessageId` it gave out (one per stored e-mail, in
//! its 200 answer), the thread each is in, and the location it was given in.
//!
//! An e-mail whose body names no `emailMessageId` starts a thread; its own id is the thread's
//! **root**. One naming an id the sandbox gave out in the same location (or where either
//! location is unknown: a conversation it does not hold in its book) joins that id's thread: the
//! root of the id it names. One naming an id it never gave out is accepted, as a thread of its
//! own, and counted in `/__stats` (`unknown_email_message_ids`): the real API does not document
//! what it does with an unknown id, and an import that names one has a bug a test must see,
//! which the counter shows without making the row fail the way no one knows the API would.
//!
//! It also keeps each thread's ids in the order given out (its root first), which
//! `GET /conversations/messages/{id}` answers as `meta.email.messageIds` ("list of all email
//! message ids under the message thread", `MessageMeta` in the spec).
//!
//! The record (`--record`) carries each e-mail's `emailMessageId` and `thread` (its root), so a
//! test reads threads from it; a sandbox started again on the same record reads them back, so
//! a run resumed against it still finds the ids given before.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One id given out.
#[derive(Clone, Debug)]
struct Given {
    root: String,
    location: String,
}

/// Every `emailMessageId` given out, and the counts `/__stats` shows.
#[derive(Debug, Default)]
pub struct EmailThreads {
    given: Mutex<HashMap<String, Given>>,
    /// Each thread's ids by its root, in the order given out (the root first).
    members: Mutex<HashMap<String, Vec<String>>>,
    /// E-mails stored that started a thread.
    pub started: AtomicU64,
    /// E-mails stored into a thread by an id it gave out.
    pub replies: AtomicU64,
    /// E-mails naming an `emailMessageId` it never gave out (in their location).
    pub unknown: AtomicU64,
}

impl EmailThreads {
    /// The threads a record file holds (its lines with `emailMessageId` and `thread`); none
    /// when there is no such file yet. Lines that do not read are passed over.
    pub fn from_record(path: Option<&Path>) -> EmailThreads {
        use std::io::BufRead;
        let threads = EmailThreads::default();
        let Some(file) = path.and_then(|p| std::fs::File::open(p).ok()) else {
            return threads;
        };
        let mut given = threads.given.lock().unwrap_or_else(|p| p.into_inner());
        // Read line by line, and parsed only when it may be an e-mail's: a benchmark's record
        // of millions of SMS costs a scan, not its size in memory.
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            if !line.contains("\"thread\":") {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let (Some(id), Some(root)) = (v["emailMessageId"].as_str(), v["thread"].as_str()) {
                let location = v["locationId"].as_str().unwrap_or_default().to_owned();
                threads.member(root, id);
                given.insert(
                    id.to_owned(),
                    Given {
                        root: root.to_owned(),
                        location,
                    },
                );
            }
        }
        drop(given);
        threads
    }

    /// A new e-mail in `location`, given `own` as its id, naming `named` (its body's
    /// `emailMessageId`): the root of the thread it is in (its own id when it starts one).
    pub fn join(&self, own: &str, named: Option<&str>, location: &str) -> String {
        let mut given = self.given.lock().unwrap_or_else(|p| p.into_inner());
        let joined = named.and_then(|n| {
            given
                .get(n)
                .filter(|g| g.location.is_empty() || location.is_empty() || g.location == location)
                .map(|g| g.root.clone())
        });
        let root = match (named, joined) {
            (_, Some(root)) => {
                self.replies.fetch_add(1, Relaxed);
                root
            }
            (Some(_), None) => {
                self.unknown.fetch_add(1, Relaxed);
                self.started.fetch_add(1, Relaxed);
                own.to_owned()
            }
            (None, None) => {
                self.started.fetch_add(1, Relaxed);
                own.to_owned()
            }
        };
        given.insert(
            own.to_owned(),
            Given {
                root: root.clone(),
                location: location.to_owned(),
            },
        );
        drop(given);
        self.member(&root, own);
        root
    }

    /// Every id of the thread `own` is in, its root first (`meta.email.messageIds`); none for
    /// an id never given out.
    pub fn ids_of(&self, own: &str) -> Vec<String> {
        let root = {
            let given = self.given.lock().unwrap_or_else(|p| p.into_inner());
            match given.get(own) {
                Some(g) => g.root.clone(),
                None => return Vec::new(),
            }
        };
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.get(&root).cloned().unwrap_or_default()
    }

    fn member(&self, root: &str, own: &str) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members
            .entry(root.to_owned())
            .or_default()
            .push(own.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_join_the_root_and_unknown_ids_are_counted() {
        let t = EmailThreads::default();
        assert_eq!(t.join("a", None, "L1"), "a");
        assert_eq!(t.join("b", Some("a"), "L1"), "a");
        assert_eq!(t.join("c", Some("b"), "L1"), "a", "a reply to a reply");
        assert_eq!(t.join("d", Some("a"), "L2"), "d", "another location's id");
        assert_eq!(t.join("e", Some("never"), ""), "e");
        assert_eq!(
            (
                t.started.load(Relaxed),
                t.replies.load(Relaxed),
                t.unknown.load(Relaxed)
            ),
            (3, 2, 2)
        );
        assert_eq!(
            t.ids_of("c"),
            ["a", "b", "c"],
            "the thread's ids, its root first"
        );
        assert_eq!(t.ids_of("d"), ["d"]);
        assert!(t.ids_of("never").is_empty());
    }

    #[test]
    fn threads_are_read_back_from_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(
            &path,
            "{\"messageId\":\"m1\",\"emailMessageId\":\"a\",\"thread\":\"a\",\"locationId\":\"L\"}\n{\"messageId\":\"m2\"}\nnot json\n",
        )
        .unwrap();
        let t = EmailThreads::from_record(Some(&path));
        assert_eq!(t.join("b", Some("a"), "L"), "a");
        assert_eq!(t.unknown.load(Relaxed), 0);
        assert_eq!(t.ids_of("a"), ["a", "b"]);
    }
}
