//! An external sort of fixed-size records (`[u64; 3]`, compared lexicographically) in bounded
//! memory: records fill one buffer of [`RUN`] records; a full buffer is sorted and written to
//! an unnamed temp file (a "run"); the end merges the runs with a heap. Memory is the same for a
//! thousand records and for a hundred million, which is what keeps a run's peak RSS flat
//! whatever the size of the input (duplicate keys, compaction of the results journal).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One record.
pub type Record = [u64; 3];

/// Records held in memory before a run is written: 64 Ki × 24 bytes = 1.5 MiB. Small, so that
/// even a modest input fills it: memory is then the same for a hundred thousand rows as for ten
/// million (a larger buffer only partly touched would make small inputs look cheaper).
pub const RUN: usize = 64 * 1024;

/// Runs kept at most: past this many, they are merged into one, so the final merge holds at most
/// this many read buffers and open files whatever the number of records.
const MAX_RUNS: usize = 64;

/// Read buffer of each run in a merge.
const READ_BUFFER: usize = 8 * 1024;

/// Sorts records pushed in any order.
pub struct ExternalSort {
    dir: PathBuf,
    buffer: Vec<Record>,
    runs: Vec<File>,
    run_len: usize,
    max_runs: usize,
}

impl ExternalSort {
    /// Temp files go in `dir` (unnamed: the OS removes them however the process ends).
    pub fn new(dir: &Path) -> ExternalSort {
        ExternalSort::with_sizes(dir, RUN, MAX_RUNS)
    }

    /// With other sizes than [`RUN`] and the run limit, for tests.
    fn with_sizes(dir: &Path, run_len: usize, max_runs: usize) -> ExternalSort {
        ExternalSort {
            dir: dir.to_owned(),
            buffer: Vec::new(),
            runs: Vec::new(),
            run_len,
            max_runs,
        }
    }

    /// Adds one record; a full buffer is sorted and spilled to a temp file (`Err` if that fails).
    pub fn push(&mut self, record: Record) -> io::Result<()> {
        if self.buffer.capacity() == 0 {
            // Allocated whole at once, so memory does not depend on how many records come.
            self.buffer.reserve_exact(self.run_len);
        }
        self.buffer.push(record);
        // After a failed spill the buffer keeps its records and grows: try again a run later.
        if self.buffer.len().is_multiple_of(self.run_len) {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buffer.sort_unstable();
        let mut file = tempfile::tempfile_in(&self.dir)?;
        {
            let mut w = BufWriter::with_capacity(64 * 1024, &mut file);
            for r in &self.buffer {
                for n in r {
                    w.write_all(&n.to_le_bytes())?;
                }
            }
            w.flush()?;
        }
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(file);
        self.buffer.clear();
        if self.runs.len() >= self.max_runs {
            let merged = merge_into_file(std::mem::take(&mut self.runs), &self.dir)?;
            self.runs.push(merged);
        }
        Ok(())
    }

    /// All records in ascending order.
    pub fn finish(mut self) -> io::Result<Sorted> {
        if self.runs.is_empty() {
            self.buffer.sort_unstable();
            return Ok(Sorted::Memory(std::mem::take(&mut self.buffer).into_iter()));
        }
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        merge(std::mem::take(&mut self.runs))
    }
}

/// A k-way merge of sorted runs.
fn merge(runs: Vec<File>) -> io::Result<Sorted> {
    let mut readers: Vec<BufReader<File>> = runs
        .into_iter()
        .map(|f| BufReader::with_capacity(READ_BUFFER, f))
        .collect();
    let mut heap = BinaryHeap::with_capacity(readers.len());
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(record) = read_record(r)? {
            heap.push(Reverse((record, i)));
        }
    }
    Ok(Sorted::Merge { readers, heap })
}

/// Merges `runs` into one new run.
fn merge_into_file(runs: Vec<File>, dir: &Path) -> io::Result<File> {
    let mut file = tempfile::tempfile_in(dir)?;
    {
        let mut w = BufWriter::with_capacity(64 * 1024, &mut file);
        for record in merge(runs)? {
            for n in record? {
                w.write_all(&n.to_le_bytes())?;
            }
        }
        w.flush()?;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

fn read_record(r: &mut impl Read) -> io::Result<Option<Record>> {
    let mut bytes = [0u8; 24];
    match r.read_exact(&mut bytes) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(Some([n(0), n(1), n(2)]))
}

/// The sorted records, from memory or merged from runs.
pub enum Sorted {
    /// Everything fit in one buffer: sorted in memory, no temp file.
    Memory(std::vec::IntoIter<Record>),
    /// Merged from sorted runs in temp files.
    Merge {
        /// One reader per run, each past the records already in the heap.
        readers: Vec<BufReader<File>>,
        /// The next record of each run, with the index of its reader; smallest on top.
        heap: BinaryHeap<Reverse<(Record, usize)>>,
    },
}

impl Iterator for Sorted {
    type Item = io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(it) => it.next().map(Ok),
            Sorted::Merge { readers, heap } => {
                let Reverse((record, i)) = heap.pop()?;
                match read_record(&mut readers[i]) {
                    Ok(Some(next)) => heap.push(Reverse((next, i))),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                Some(Ok(record))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(n: usize, seed: u64) -> (Vec<Record>, Vec<Record>) {
        const RUN: usize = 1000;
        const MAX_RUNS: usize = 4;
        let mut rng = fastrand::Rng::with_seed(seed);
        let input: Vec<Record> = (0..n)
            .map(|_| [rng.u64(0..50), rng.u64(..), rng.u64(..)])
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut sort = ExternalSort::with_sizes(dir.path(), RUN, MAX_RUNS);
        for r in &input {
            sort.push(*r).unwrap();
        }
        let got: Vec<Record> = sort.finish().unwrap().map(Result::unwrap).collect();
        let mut want = input;
        want.sort_unstable();
        (got, want)
    }

    #[test]
    fn sorts_in_memory_and_across_runs() {
        const RUN: usize = 1000;
        const MAX_RUNS: usize = 4;
        // Up to past MAX_RUNS runs, so the cascade merge is exercised too.
        for (n, seed) in [
            (0, 1),
            (1, 2),
            (1000, 3),
            (RUN, 4),
            (RUN * 2 + 17, 5),
            (RUN * (MAX_RUNS + 1) + 5, 6),
        ] {
            let (got, want) = sorted(n, seed);
            assert_eq!(got.len(), n);
            assert!(got == want, "n = {n}");
        }
    }
}
