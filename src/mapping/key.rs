//! A record's identity, for resume and duplicate detection: the `--key-column` (or `altId`)
//! cell when it has a value, else a 128-bit hash of every cell ([`record_hash`]).

use crate::message::SpecEnum;
use csv::ByteRecord;

use super::{MappedRow, Mapping};

impl Mapping {
    /// The identity of a record as read: [`Mapping::key`], or the hash of every cell when the
    /// record is broken (its cells are shifted, so the key column cannot be trusted).
    pub fn record_key(&self, record: &crate::reader::Record<'_>) -> String {
        match record.broken {
            Some(_) => record_hash(record.cells),
            None => self.key(record.cells),
        }
    }

    /// Whether rows are keyed by a column (`altId` or `--key-column`); without one, each row's
    /// key is a hash of its cells, which changes when a cell is edited.
    pub fn has_key_column(&self) -> bool {
        self.key.is_some()
    }

    /// The row's identity for resume and duplicate detection: the key column's value, or
    /// `h:` and a 128-bit hash of every cell (also when the key cell is empty).
    pub fn key(&self, cells: &ByteRecord) -> String {
        if let Some(k) = self.key
            && let Some(value) = cells.get(k).and_then(|v| std::str::from_utf8(v).ok())
        {
            let value = value.trim();
            if !value.is_empty() {
                return value.to_owned();
            }
        }
        record_hash(cells)
    }
}

/// `h:` and the hex of a 128-bit hash over every cell, length-prefixed so that cell
/// boundaries count (`a,bc` and `ab,c` differ).
pub fn record_hash(cells: &ByteRecord) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for cell in cells.iter() {
        hasher.update(&(cell.len() as u64).to_le_bytes());
        hasher.update(cell);
    }
    format!("h:{:032x}", hasher.digest128())
}

impl MappedRow {
    /// What a row is apart from its content: a hash of its conversation (else its contact, else
    /// who it is looked up by), direction, type and date, as mapped before any lookup. `None` for a
    /// row without a date: without one, every message of a conversation would look alike.
    pub fn fingerprint(&self) -> Option<u64> {
        let m = &self.message;
        let date = m.date.as_deref()?;
        let lane;
        let who: [&str; 2] = if !m.conversation_id.is_empty() {
            ["conversation", &m.conversation_id]
        } else if !m.contact_id.is_empty() {
            ["contact", &m.contact_id]
        } else {
            lane = self
                .lookup
                .as_ref()
                .map_or_else(String::new, |l| l.lane(&m.contact_id));
            ["lookup", &lane]
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for field in [who[0], who[1], m.direction.as_str(), m.kind.as_str(), date] {
            // Length-prefixed, so field boundaries count.
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        Some(hasher.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappingOptions;
    use crate::mapping::fixture::*;

    #[test]
    fn keys() {
        let m = mapping(MappingOptions::default());
        let a = m.key(&record(&["c1", "k1", "SMS"]));
        assert!(a.starts_with("h:") && a.len() == 34, "{a}");
        assert_eq!(a, m.key(&record(&["c1", "k1", "SMS"])));
        assert_ne!(a, m.key(&record(&["c1", "k1", "SMs"])));
        // Cell boundaries count.
        assert_ne!(
            record_hash(&ByteRecord::from(vec!["ab", "c"])),
            record_hash(&ByteRecord::from(vec!["a", "bc"]))
        );
        let keyed = mapping(MappingOptions {
            key_column: Some("notes".into()),
            ..Default::default()
        });
        let mut cells = ["c1", "k1", "SMS", "", "", "", "", "", "", "", "", " ext-9 "];
        assert_eq!(keyed.key(&record(&cells)), "ext-9");
        cells[11] = "";
        assert!(
            keyed.key(&record(&cells)).starts_with("h:"),
            "an empty key cell falls back to the hash"
        );
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;
    use crate::message::{Direction, InboundMessage};

    fn row(conversation: &str, date: Option<&str>, text: &str) -> MappedRow {
        MappedRow {
            message: InboundMessage {
                conversation_id: conversation.into(),
                contact_id: "k1".into(),
                direction: Direction::Inbound,
                date: date.map(Into::into),
                message: Some(text.into()),
                ..Default::default()
            },
            lookup: None,
            thread: None,
        }
    }

    #[test]
    fn the_fingerprint_ignores_the_text_but_not_the_date_or_conversation() {
        let d = Some("2024-01-01T00:00:00Z");
        let a = row("c1", d, "helo").fingerprint().unwrap();
        assert_eq!(Some(a), row("c1", d, "hello").fingerprint());
        assert_ne!(
            Some(a),
            row("c1", Some("2024-01-01T00:00:01Z"), "helo").fingerprint()
        );
        assert_ne!(Some(a), row("c2", d, "helo").fingerprint());
        let mut outbound = row("c1", d, "helo");
        outbound.message.direction = Direction::Outbound;
        assert_ne!(Some(a), outbound.fingerprint());
        assert_eq!(row("c1", None, "helo").fingerprint(), None, "no date");
        // Rows whose IDs are looked up: by whom (before the lookup, so every run agrees).
        let looked_up = |phone: &str| {
            let mut r = row("", d, "helo");
            r.message.contact_id.clear();
            r.lookup = Some(Box::new(crate::resolve::Lookup {
                location_id: "loc".into(),
                phone: Some(phone.into()),
                ..Default::default()
            }));
            r.fingerprint()
        };
        assert_eq!(looked_up("+15550001"), looked_up("+15550001"));
        assert_ne!(looked_up("+15550001"), looked_up("+15550002"));
        assert_ne!(looked_up("+15550001"), Some(a));
    }
}
