//! `lc-import report RESULTS`: what a results file says, summed up: rows per status and the
//! most frequent errors. It reads a compacted file or a journal a crash left uncompacted (the
//! last line of each row and key wins; a trailing `sending` is reported as in flight, like `unknown`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cli::ReportArgs;
use crate::extsort::ExternalSort;
use crate::results::Status;
use crate::results::line::{HEADER, col, folder_of};
use crate::summary::Ending;

/// Counts of one results file.
#[derive(Debug, Default)]
pub struct Summary {
    /// Rows in the file, each counted once (by its last line): a row and key.
    pub rows: u64,
    /// Rows per status of their last line; rows still `sending` are counted in `in_flight` instead.
    pub by_status: HashMap<Status, u64>,
    /// Rows whose last line is `sending`: their request was in flight when a run died.
    pub in_flight: u64,
    /// Error text with the row-specific parts blanked → (count, first full example).
    pub errors: HashMap<String, (u64, String)>,
}

/// `lc-import report`: prints the summary; rows not `sent`, `valid`, `duplicate` or `skipped`
/// need attention.
pub fn run(args: ReportArgs) -> Result<Ending> {
    let summary = summarise(&args.results)?;
    let _ = print(&args.results, &summary, &mut crate::summary::Stdout);
    let done = [
        Status::Sent,
        Status::Valid,
        Status::Duplicate,
        Status::Skipped,
    ]
    .iter()
    .map(|s| summary.by_status.get(s).copied().unwrap_or(0))
    .sum::<u64>();
    Ok(Ending {
        stopped: None,
        attention: summary.rows.saturating_sub(done),
        summary: None,
    })
}

/// Reads `path` once to sort `(row, key, line number)` triples on disk, and once more to count
/// the last line of each row and key: memory stays flat whatever the size of the file.
pub fn summarise(path: &Path) -> Result<Summary> {
    let context = || format!("reading results file {}", path.display());
    let open = || -> Result<csv::Reader<std::fs::File>> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_path(path)
            .with_context(context)?;
        let header: Vec<String> = reader
            .headers()
            .with_context(context)?
            .iter()
            .map(str::to_owned)
            .collect();
        if header != HEADER {
            bail!(
                "{} is not a results file of lc-import (its first line is not {})",
                path.display(),
                HEADER.join(",")
            );
        }
        Ok(reader)
    };
    // Pass 1: the last line number of every row and key. A row's key counts: a compacted file
    // keeps the lines of earlier runs whose keys the input no longer has (a row edited, say)
    // after the input's own, and neither hides the other.
    let mut reader = open()?;
    let mut pairs = ExternalSort::new(&folder_of(path));
    let mut record = csv::StringRecord::new();
    let mut n = 0u64;
    while reader.read_record(&mut record).with_context(context)? {
        n += 1;
        if let Some(row) = record.get(col::ROW).and_then(|r| r.parse::<u64>().ok()) {
            let key = xxhash_rust::xxh3::xxh3_64(record.get(col::KEY).unwrap_or("").as_bytes());
            pairs.push([row, key, n]).with_context(context)?;
        }
    }
    let mut last_lines = ExternalSort::new(&folder_of(path));
    let mut sorted = pairs.finish().with_context(context)?.peekable();
    while let Some(pair) = sorted.next() {
        let [row, key, mut line] = pair.with_context(context)?;
        while let Some(Ok([r, k, l])) = sorted.peek()
            && (*r, *k) == (row, key)
        {
            line = *l;
            sorted.next();
        }
        last_lines.push([line, 0, 0]).with_context(context)?;
    }
    // Pass 2: count those lines.
    let mut wanted = last_lines.finish().with_context(context)?.peekable();
    let mut reader = open()?;
    let mut summary = Summary::default();
    let mut n = 0u64;
    while reader.read_record(&mut record).with_context(context)? {
        n += 1;
        match wanted.peek() {
            Some(Ok([l, _, _])) if *l == n => {
                wanted.next();
            }
            _ => continue,
        }
        summary.rows += 1;
        let status = record
            .get(col::STATUS)
            .and_then(|s| s.parse::<Status>().ok());
        match status {
            Some(Status::Sending) => summary.in_flight += 1,
            Some(s) => *summary.by_status.entry(s).or_default() += 1,
            None => {}
        }
        let error = record.get(col::ERROR).unwrap_or("");
        if !error.is_empty() {
            let row = record.get(col::ROW).unwrap_or("?");
            let entry = summary
                .errors
                .entry(error_kind(error))
                .or_insert_with(|| (0, format!("row {row}: {error}")));
            entry.0 += 1;
        }
    }
    Ok(summary)
}

/// An error message with what differs from row to row blanked: the leading `line N, column …:`
/// and quoted values, so `type 'Text' is not …` and `type 'Txt' is not …` count as one kind.
fn error_kind(error: &str) -> String {
    let first = error.split(" | ").next().unwrap_or(error);
    let rest = match first.strip_prefix("line ") {
        Some(r) => r.split_once(": ").map_or(r, |(_, msg)| msg),
        None => first,
    };
    let mut out = String::with_capacity(rest.len().min(120));
    let mut quoted = false;
    for c in rest.chars() {
        match (c, quoted) {
            ('\'', false) => {
                quoted = true;
                out.push('…');
            }
            ('\'', true) => quoted = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
        if out.len() > 100 {
            break;
        }
    }
    out
}

/// Writes the summary of the results file at `path` to `out`: rows per status, then the most
/// frequent errors.
pub fn print(path: &Path, s: &Summary, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}: {} rows", path.display(), s.rows)?;
    let order = [
        Status::Sent,
        Status::Valid,
        Status::Failed,
        Status::Unknown,
        Status::Invalid,
        Status::Duplicate,
        Status::Changed,
        Status::Skipped,
        Status::Waiting,
    ];
    for status in order {
        if let Some(n) = s.by_status.get(&status) {
            writeln!(out, "  {:<10} {n:>9}", status.as_str())?;
        }
    }
    if s.in_flight > 0 {
        writeln!(
            out,
            "  {:<10} {:>9}   (the run stopped while these were in flight: unknown until the next run)",
            "sending", s.in_flight
        )?;
    }
    if !s.errors.is_empty() {
        let mut kinds: Vec<_> = s.errors.iter().collect();
        kinds.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        writeln!(out, "most frequent errors:")?;
        for (kind, (count, example)) in kinds.into_iter().take(5) {
            writeln!(out, "  {count:>7}  {kind}")?;
            writeln!(out, "           e.g. {example}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_blank_what_differs_by_row() {
        for (a, b) in [
            (
                "line 2, column 5 (type): type 'Text' is not one of SMS, Email",
                "line 9, column 5 (type): type 'Txt' is not one of SMS, Email",
            ),
            (
                "HTTP 422: property foo should not exist",
                "HTTP 422: property foo should not exist",
            ),
        ] {
            assert_eq!(error_kind(a), error_kind(b));
        }
        assert_eq!(
            error_kind("line 2, column 5 (type): type 'Text' is not one of SMS | line 2: more"),
            "type … is not one of SMS"
        );
        assert_ne!(error_kind("HTTP 422: a"), error_kind("HTTP 400: a"));
    }
}
