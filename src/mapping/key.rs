//! A record's identity, for resume and duplicate detection: the `--key-column` (or `altId`)
//! cell when it has a value, else a 128-bit hash of every cell ([`record_hash`]).

use csv::ByteRecord;

use super::Mapping;

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
