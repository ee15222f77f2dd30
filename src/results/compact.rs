//! Compaction: at the end of a run the journal is rewritten atomically (temp file in the same
//! folder, fsync, rename, fsync of the folder so the new name survives a power cut) to one
//! line per row in input order, then the lines of earlier runs whose rows are no longer in the
//! input, so no record of a sent message is ever dropped. The lines are copied raw, read back
//! through a few windows of the old file ([`LineReader`]).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::line::{HEADER, col, folder_of};
use super::prior::Prior;
use super::sync::sync_folder;
use crate::extsort::ExternalSort;

// Lines are copied with their row number swapped without parsing them: that needs the row to
// be the first field (and, as a number, never quoted).
const _: () = assert!(col::ROW == 0);

/// The context of every error of a compaction.
pub(crate) fn context(path: &Path) -> String {
    format!("compacting results file {}", path.display())
}

/// The name a compaction of `path` gives its temp file before the rename: the results file's
/// own name is in it, so the run holding that file's lock knows which leftovers are its own.
pub(crate) fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".lc-import-results.{name}.")
}

/// Removes what compactions of `path` killed midway left behind (a temp file as large as the
/// results file each time). Only the run holding `path`'s lock may call it.
pub(crate) fn remove_leftovers(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(folder_of(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    "removed {}, left by a compaction that was killed midway",
                    entry.path().display()
                ),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

/// Writes a new `path` from the journal `file`: for each row in `finals` (`[row, offset, 0]`,
/// any order) the line at its last offset, then the lines of `prior` no row took, in file
/// order.
pub(crate) fn rewrite(path: &Path, file: &File, finals: ExternalSort, prior: &Prior) -> Result<()> {
    let context = || context(path);
    let dir = folder_of(path);
    let finals = finals.finish().with_context(context)?;
    let temp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .tempfile_in(&dir)
        .with_context(context)?;
    let mut out = BufWriter::with_capacity(256 * 1024, temp);
    out.write_all(HEADER.join(",").as_bytes())
        .with_context(context)?;
    out.write_all(b"\n").with_context(context)?;
    let mut lines = LineReader::new(file.try_clone().with_context(context)?);
    // Sorted by row, then offset: of two lines for one row, the later written wins.
    let mut finals = finals.peekable();
    while let Some(next) = finals.next() {
        let [row, mut offset, _] = next.with_context(context)?;
        while let Some(Ok([r, o, _])) = finals.peek()
            && *r == row
        {
            offset = *o;
            finals.next();
        }
        lines
            .write_with_row(offset, Some(row), &mut out)
            .with_context(context)?;
    }
    let mut unmatched: Vec<u64> = prior.unmatched().collect();
    unmatched.sort_unstable();
    for offset in unmatched {
        lines
            .write_with_row(offset, None, &mut out)
            .with_context(context)?;
    }
    let temp = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(context)?;
    temp.as_file().sync_all().with_context(context)?;
    temp.persist(path).with_context(context)?;
    // Bug: a folder that could not be opened or synced was let be silently, so the rename could
    // be lost to a power cut with nothing said. Now only a filesystem that cannot sync folders
    // is (see `sync_folder`). Either way the file at `path` is whole: the old one or this one.
    sync_folder(&dir).with_context(context)?;
    Ok(())
}

/// Reads raw journal lines at given offsets. Compaction visits lines in row order, which is
/// nearly the order they were written: rows finish a little out of order (concurrency), and a
/// busy conversation's rows are written long after the rows around them. So the reader keeps a
/// few windows of the file, each reloaded a little behind the offset that missed: a jump back by
/// a few lines, or between two places in the file, costs no system call. (A single buffer
/// re-read 256 KiB at every step back: 10 % of a 300k-row run's CPU.)
struct LineReader {
    file: File,
    windows: Vec<Window>,
    clock: u64,
}

struct Window {
    /// File offset of `data[0]`.
    start: u64,
    data: Vec<u8>,
    last_used: u64,
}

impl LineReader {
    const WINDOWS: usize = 8;
    const WINDOW: usize = 128 * 1024;
    /// How far behind a missed offset a window starts.
    const BEHIND: u64 = 32 * 1024;

    fn new(file: File) -> LineReader {
        LineReader {
            file,
            windows: Vec::new(),
            clock: 0,
        }
    }

    /// Copies the line at `offset` to `out`, with its row number replaced by `row` if given.
    /// The row is the first field and never quoted, so no CSV parsing is needed.
    fn write_with_row(
        &mut self,
        offset: u64,
        row: Option<u64>,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let line = self.line_at(offset)?;
        match (row, line.iter().position(|b| *b == b',')) {
            (Some(row), Some(comma)) => {
                write!(out, "{row}")?;
                out.write_all(&line[comma..])
            }
            _ => out.write_all(line),
        }
    }

    /// The record at `offset`, up to and including its line end outside quotes.
    fn line_at(&mut self, offset: u64) -> io::Result<&[u8]> {
        self.clock += 1;
        let hit = self
            .windows
            .iter()
            .enumerate()
            .find_map(|(i, w)| Some((i, w.line(offset)?)));
        let (index, line) = match hit {
            Some(hit) => hit,
            None => self.load(offset)?,
        };
        let window = &mut self.windows[index];
        window.last_used = self.clock;
        Ok(&window.data[line])
    }

    /// Loads a window holding the whole line at `offset` in place of the least recently used.
    fn load(&mut self, offset: u64) -> io::Result<(usize, std::ops::Range<usize>)> {
        let index = if self.windows.len() < Self::WINDOWS {
            self.windows.push(Window {
                start: 0,
                data: Vec::with_capacity(Self::WINDOW),
                last_used: 0,
            });
            self.windows.len() - 1
        } else {
            (0..self.windows.len())
                .min_by_key(|i| self.windows[*i].last_used)
                .expect("there are windows")
        };
        let window = &mut self.windows[index];
        window.start = offset.saturating_sub(Self::BEHIND);
        window.data.clear();
        // A window grown for one long line goes back to its size.
        window.data.shrink_to(Self::WINDOW);
        loop {
            // Read until the line ends; a line longer than the window grows it.
            let len = window.data.len();
            let want = (len + Self::WINDOW).max(window.data.capacity());
            window.data.resize(want, 0);
            let read = window.file_read(&self.file, len)?;
            window.data.truncate(len + read);
            if let Some(line) = window.line(offset) {
                return Ok((index, line));
            }
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the line at byte {offset} is cut short"),
                ));
            }
        }
    }
}

impl Window {
    /// Where the line at `offset` is in `data`, if all of it is there.
    fn line(&self, offset: u64) -> Option<std::ops::Range<usize>> {
        let from = usize::try_from(offset.checked_sub(self.start)?).ok()?;
        let end = line_end(self.data.get(from..)?)?;
        Some(from..from + end)
    }

    /// Reads into `data[len..]` from the file at the matching offset; returns the bytes read.
    fn file_read(&mut self, file: &File, len: usize) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            match file.read_at(&mut self.data[len..], self.start + len as u64) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// The length of the record at the start of `bytes` up to and including its line end outside
/// quotes ("" inside a quoted field toggles twice), if the line end is there.
fn line_end(bytes: &[u8]) -> Option<usize> {
    let mut quoted = false;
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_reader_finds_every_line_in_any_order() {
        // Lines of many sizes: one longer than a window, quoted line ends, quotes doubled.
        let mut file = tempfile::tempfile().unwrap();
        let mut lines: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut offset = 0u64;
        for i in 0..20_000u64 {
            let body = match i % 997 {
                0 => format!("{i},k,\"{}\"\n", "x".repeat(LineReader::WINDOW * 2 + 5)),
                1 => format!("{i},k,\"two\nlines, \"\"quoted\"\"\",end\n"),
                _ => format!("{i},key-{i},sent,{}\n", "m".repeat((i % 300) as usize)),
            };
            file.write_all(body.as_bytes()).unwrap();
            lines.push((offset, body.into_bytes()));
            offset += lines.last().unwrap().1.len() as u64;
        }
        // Forward with small steps back (rows finishing out of order), then two places in
        // turn (a busy conversation written late), then at random.
        let n = lines.len();
        let mut order: Vec<usize> = (0..n).map(|i| i ^ 5).filter(|i| *i < n).collect();
        order.extend((0..n / 2).flat_map(|i| [i, n / 2 + i]));
        let mut rng = fastrand::Rng::with_seed(7);
        order.extend((0..5_000).map(|_| rng.usize(..n)));
        let mut reader = LineReader::new(file);
        for i in order {
            let (offset, line) = &lines[i];
            let mut out = Vec::new();
            reader
                .write_with_row(*offset, Some(i as u64 + 1), &mut out)
                .unwrap();
            let comma = line.iter().position(|b| *b == b',').unwrap();
            assert_eq!(
                out[..out.len() - (line.len() - comma)],
                *format!("{}", i + 1).as_bytes()
            );
            assert_eq!(
                out[out.len() - (line.len() - comma)..],
                line[comma..],
                "line {i}"
            );
        }
        let mut out = Vec::new();
        let err = reader
            .write_with_row(offset + 1, None, &mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
