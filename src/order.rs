//! `--order date`: each conversation's rows sent oldest first, whatever the file's order (an
//! export that lists newest first would otherwise build every timeline backwards).
//!
//! The pass before sending records, for every row, where it starts in the input (byte offset
//! and line) in a temp file indexed by row, and pushes `(date, row)` into an external sort.
//! Intake then reads the rows in that order, seeking to each: memory stays flat whatever the
//! size of the input (the sort's buffer and one record), at the cost of a temp file of 24 bytes
//! per row and a seek per row. Sorting all rows by date orders each conversation's rows by date
//! and keeps conversations interleaved as their dates are; rows of the same instant keep the
//! file's order. Rows with no date to sort by (broken, invalid, sent earlier) come first: they
//! are recorded, never sent, so where they come does not matter.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::extsort::{ExternalSort, Sorted};

/// Built by the pass before sending: where each row starts, and the rows sorted by date.
pub struct OrderIndex {
    sort: ExternalSort,
    positions: Positions,
}

/// Per row (from 1), at `(row - 1) * 24`: byte offset, line, and 1 when the row is a duplicate.
struct Positions {
    file: File,
    pending: Vec<u8>,
    written: u64,
}

const ENTRY: u64 = 24;

impl OrderIndex {
    /// Temp files go in `dir` (unnamed: the OS removes them however the process ends).
    pub fn new(dir: &Path) -> io::Result<OrderIndex> {
        Ok(OrderIndex {
            sort: ExternalSort::new(dir),
            positions: Positions {
                file: tempfile::tempfile_in(dir)?,
                pending: Vec::with_capacity(64 * 1024),
                written: 0,
            },
        })
    }

    /// Row `row` (rows come in file order, from 1) starts at `offset` on `line`; `date_ms` is
    /// its date in milliseconds since 1970, `None` when it has none to sort by.
    pub fn push(
        &mut self,
        row: u64,
        offset: u64,
        line: u64,
        date_ms: Option<i64>,
    ) -> io::Result<()> {
        debug_assert_eq!(
            self.positions.written + self.positions.pending.len() as u64,
            (row - 1) * ENTRY
        );
        let p = &mut self.positions.pending;
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&line.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        if p.len() >= 64 * 1024 {
            self.positions.flush()?;
        }
        // Dates are after 1970 (earlier ones are refused): +1 keeps 0 for rows without one.
        let key = date_ms.map_or(0, |ms| ms.max(0) as u64 + 1);
        self.sort.push([key, row, 0])
    }

    /// Marks `row` as a duplicate of an earlier row (found after the pass).
    pub fn mark_duplicate(&mut self, row: u64) -> io::Result<()> {
        self.positions.flush()?;
        self.positions
            .file
            .write_all_at(&1u64.to_le_bytes(), (row - 1) * ENTRY + 16)
    }

    /// The rows in the order to send them.
    pub fn finish(mut self) -> io::Result<SendOrder> {
        self.positions.flush()?;
        Ok(SendOrder {
            sorted: self.sort.finish()?,
            positions: self.positions.file,
        })
    }
}

impl Positions {
    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.pending, self.written)?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

/// One row to read, in send order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The row, from 1.
    pub row: u64,
    /// Byte offset of the record in the input.
    pub offset: u64,
    /// Line where the record starts.
    pub line: u64,
    /// Its key was seen on an earlier row of the input.
    pub duplicate: bool,
}

/// The rows of the input, oldest first.
pub struct SendOrder {
    sorted: Sorted,
    positions: File,
}

impl Iterator for SendOrder {
    type Item = io::Result<Place>;

    fn next(&mut self) -> Option<Self::Item> {
        let [_, row, _] = match self.sorted.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let mut entry = [0u8; ENTRY as usize];
        if let Err(e) = self.positions.read_exact_at(&mut entry, (row - 1) * ENTRY) {
            return Some(Err(e));
        }
        let n = |i: usize| u64::from_le_bytes(entry[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Some(Ok(Place {
            row,
            offset: n(0),
            line: n(1),
            duplicate: n(2) != 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_out_by_date_then_row_with_their_places() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = OrderIndex::new(dir.path()).unwrap();
        // Newest first, one row without a date, two rows of the same instant.
        let dates = [Some(500), Some(300), None, Some(300), Some(100)];
        for (i, d) in dates.iter().enumerate() {
            let row = i as u64 + 1;
            index.push(row, row * 1000, row * 2, *d).unwrap();
        }
        index.mark_duplicate(4).unwrap();
        let got: Vec<Place> = index.finish().unwrap().map(Result::unwrap).collect();
        let rows: Vec<u64> = got.iter().map(|p| p.row).collect();
        assert_eq!(rows, [3, 5, 2, 4, 1]);
        for p in &got {
            assert_eq!((p.offset, p.line), (p.row * 1000, p.row * 2));
            assert_eq!(p.duplicate, p.row == 4);
        }
    }
}
