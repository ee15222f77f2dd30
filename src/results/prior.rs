//! The resume index: what earlier runs recorded, per row key that ended `sent` or `unknown`,
//! packed into 24 bytes a key (status, a tag of its conversation, where its line is) and looked
//! up by binary search. Built once by [`Journal::open`](super::Journal::open); a run asks it
//! what to skip, and compaction asks it which earlier lines no row of this input took.

use super::line::{Status, key_id};

/// What earlier runs recorded: per key that ended `sent` or `unknown` (the outcomes that change
/// what this run does), where its line is. A sorted array of 24-byte entries, looked up by
/// binary search: a million done keys take 24 MiB, where a hash map would take nearly three
/// times that at its peak.
#[derive(Debug, Default)]
pub struct Prior {
    /// Sorted by key.
    entries: Vec<PriorEntry>,
    /// One bit per entry: its key is in this run's input (its line goes with the row).
    matched: Vec<u64>,
}

/// One outcome line read from the file, as the index keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PriorEntry {
    key: [u64; 2],
    /// Status (2 bits), conversation tag (22 bits) and the line's offset (40 bits: results
    /// files up to 1 TiB), see `pack`.
    packed: u64,
}

const STATUS_SHIFT: u32 = 62;
const TAG_SHIFT: u32 = 40;
const TAG_BITS: u32 = STATUS_SHIFT - TAG_SHIFT;
const OFFSET_MASK: u64 = (1 << TAG_SHIFT) - 1;

fn pack(status: Status, tag: u32, offset: u64) -> u64 {
    let s = match status {
        Status::Sent => 0,
        Status::Unknown => 1,
        _ => 2,
    };
    (s << STATUS_SHIFT)
        | (u64::from(tag & ((1 << TAG_BITS) - 1)) << TAG_SHIFT)
        | (offset & OFFSET_MASK)
}

fn unpack(packed: u64) -> (Status, u32, u64) {
    let status = match packed >> STATUS_SHIFT {
        0 => Status::Sent,
        1 => Status::Unknown,
        _ => Status::Failed,
    };
    let tag = ((packed >> TAG_SHIFT) & ((1 << TAG_BITS) - 1)) as u32;
    (status, tag, packed & OFFSET_MASK)
}

/// A 22-bit tag of a conversation ID (0 for none), to tell a row that was sent from a different
/// row with the same key, as in a results file of another input, at no cost in memory (it
/// shares the prior entry's word with the offset). Equal IDs always have equal tags; two
/// different IDs share one with a chance of one in four million.
pub fn conversation_tag(conversation_id: &str) -> u32 {
    if conversation_id.is_empty() {
        0
    } else {
        ((xxhash_rust::xxh3::xxh3_64(conversation_id.as_bytes()) as u32) & ((1 << TAG_BITS) - 1))
            .max(1)
    }
}

fn split_id(id: u128) -> [u64; 2] {
    [(id >> 64) as u64, id as u64]
}

impl PriorEntry {
    /// The line at `offset` says the key with [`key_id`] `id` ended `status`, in the
    /// conversation of [`conversation_tag`] `conversation`.
    pub(crate) fn new(id: u128, status: Status, conversation: u32, offset: u64) -> PriorEntry {
        PriorEntry {
            key: split_id(id),
            packed: pack(status, conversation, offset),
        }
    }

    /// Whether this is a line of the key with [`key_id`] `id`.
    pub(crate) fn is_key(&self, id: u128) -> bool {
        self.key == split_id(id)
    }

    /// The status the line records (`failed` for any but `sent` and `unknown`).
    pub(crate) fn status(&self) -> Status {
        unpack(self.packed).0
    }
}

/// What an earlier run said about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriorOutcome {
    /// `sent` or `unknown`.
    pub status: Status,
    /// Where its line is, for [`Journal::keep_prior`](super::Journal::keep_prior).
    pub(crate) offset: u64,
    /// [`conversation_tag`] of the recorded `conversation_id`; 0 when none was recorded.
    pub conversation: u32,
}

impl Prior {
    /// From every outcome line read, in file order: the last line of each key wins, and only
    /// keys that ended `sent` or `unknown` are kept.
    pub(crate) fn from_lines(mut lines: Vec<PriorEntry>) -> Prior {
        // Stable by key, so within a key the file order (the offset) decides: last wins.
        lines.sort_by_key(|e| (e.key, e.packed & OFFSET_MASK));
        let mut entries: Vec<PriorEntry> = Vec::with_capacity(lines.len());
        for e in lines {
            match entries.last_mut() {
                Some(last) if last.key == e.key => *last = e,
                _ => entries.push(e),
            }
        }
        entries.retain(|e| matches!(e.status(), Status::Sent | Status::Unknown));
        entries.shrink_to_fit();
        let matched = vec![0; entries.len().div_ceil(64)];
        Prior { entries, matched }
    }

    /// How many keys ended `sent` or `unknown`.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no earlier run sent anything (or left anything unknown).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, key: &str) -> Option<usize> {
        let id = split_id(key_id(key));
        self.entries.binary_search_by_key(&id, |e| e.key).ok()
    }

    /// The earlier status of `key`, without marking it seen.
    pub fn status(&self, key: &str) -> Option<Status> {
        Some(self.entries[self.find(key)?].status())
    }

    /// The earlier outcome of `key`, without marking it seen (for the pass before sending).
    pub fn get(&self, key: &str) -> Option<PriorOutcome> {
        Some(self.outcome(self.find(key)?))
    }

    fn outcome(&self, i: usize) -> PriorOutcome {
        let (status, conversation, offset) = unpack(self.entries[i].packed);
        PriorOutcome {
            status,
            offset,
            conversation,
        }
    }

    /// The earlier outcome of `key`, marking it as present in this input.
    pub fn take(&mut self, key: &str) -> Option<PriorOutcome> {
        let i = self.find(key)?;
        self.matched[i / 64] |= 1 << (i % 64);
        Some(self.outcome(i))
    }

    /// How many keys end in `status`.
    pub fn count(&self, status: Status) -> usize {
        self.entries.iter().filter(|e| e.status() == status).count()
    }

    /// Keys recorded `sent` that this run's input did not have (read to its end): rows of an
    /// earlier export, or rows whose content key changed because a cell was edited.
    pub fn unmatched_sent(&self) -> u64 {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                self.matched[i / 64] & (1 << (i % 64)) == 0 && e.status() == Status::Sent
            })
            .count() as u64
    }

    /// Offsets of the lines whose keys this run's input did not have.
    pub(crate) fn unmatched(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| self.matched[i / 64] & (1 << (i % 64)) == 0)
            .map(|(_, e)| e.packed & OFFSET_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_keeps_the_last_outcome_of_sent_and_unknown_keys() {
        let e = |key: &str, status, offset| PriorEntry {
            key: split_id(key_id(key)),
            packed: pack(status, conversation_tag("c1"), offset),
        };
        let mut prior = Prior::from_lines(vec![
            e("a", Status::Failed, 10),
            e("b", Status::Sent, 20),
            e("a", Status::Sent, 30),
            e("c", Status::Sent, 40),
            e("c", Status::Failed, 50),
            e("d", Status::Unknown, 60),
            e("e", Status::Invalid, 70),
        ]);
        assert_eq!(
            prior.len(),
            3,
            "a, b sent and d unknown; c and e end failed/invalid"
        );
        assert_eq!(prior.status("a"), Some(Status::Sent));
        assert_eq!(prior.status("c"), None);
        assert_eq!(
            prior.take("d"),
            Some(PriorOutcome {
                status: Status::Unknown,
                offset: 60,
                conversation: conversation_tag("c1"),
            })
        );
        assert_eq!(prior.status("zzz"), None);
        assert_eq!(
            prior.take("a"),
            Some(PriorOutcome {
                status: Status::Sent,
                offset: 30,
                conversation: conversation_tag("c1"),
            })
        );
        assert_eq!(
            (prior.count(Status::Sent), prior.count(Status::Unknown)),
            (2, 1)
        );
        let mut unmatched: Vec<u64> = prior.unmatched().collect();
        unmatched.sort();
        assert_eq!(unmatched, vec![20], "a and d were taken");
        assert_eq!(
            unpack(pack(Status::Unknown, 5, OFFSET_MASK)),
            (Status::Unknown, 5, OFFSET_MASK)
        );
    }
}
