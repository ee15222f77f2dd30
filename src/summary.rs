//! What the user sees at the end: the counters a run keeps, the [`Report`] they become, the
//! summary printed from it, and the most frequent row errors grouped by kind. Also the two ways
//! every command writes to the terminal, [`say`] and [`say_err`], which never fail: a closed
//! stdout (`run … | head`) or stderr (a dead log collector) loses the text, not the run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::reader::RowError;
use crate::retry::StopReason;
use crate::validate::Problem;

/// Text on stdout that never fails the caller.
pub fn say(text: &str) {
    let _ = Stdout.write_all(text.as_bytes());
}

/// Standard output as a writer whose writes always succeed: what cannot be written (the reader
/// of the pipe has gone) is dropped, and the command goes on to its end and its exit code.
pub struct Stdout;

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stdout().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stdout().lock().flush();
        Ok(())
    }
}

/// A line on stderr that never fails the caller.
pub fn say_err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// How a command ended, in the terms the exit code is decided from (in `lib.rs`, once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ending {
    /// Stopped early and resumable.
    pub stopped: Option<StopReason>,
    /// Rows (or contacts) that need the user: invalid, failed, unknown, ambiguous.
    pub attention: u64,
    /// A run's report as `--summary-json` gives it (without the exit code, decided later).
    pub summary: Option<serde_json::Value>,
}

/// Counters of a run, shared by the stages; the [`Report`] is read from them at the end.
#[derive(Debug, Default)]
pub struct Counters {
    /// Input rows read so far, whatever became of them.
    pub rows: AtomicU64,
    /// Rows stored by this run.
    pub sent: AtomicU64,
    /// Rows skipped because an earlier run sent them.
    pub sent_before: AtomicU64,
    /// Rows that break a rule; recorded, not sent.
    pub invalid: AtomicU64,
    /// Rows recorded `failed` by this run: not stored (refused, out of retries, lookup failed).
    pub failed: AtomicU64,
    /// Rows sent with no answer in this run: they may be stored.
    pub unknown: AtomicU64,
    /// Rows left `unknown` by an earlier run and not sent again (no `--resend-unknown`).
    pub unknown_before: AtomicU64,
    /// Rows whose key repeats an earlier row of the input; recorded, not sent.
    pub duplicate: AtomicU64,
    /// Rows keyed by content that look like a row sent earlier with a cell edited; recorded
    /// `changed`, not sent (no `--send-changed`).
    pub changed: AtomicU64,
    /// With `--wait`, while the daily budget is spent: when the run tries again (Unix ms);
    /// 0 while it runs.
    pub resume_at_ms: AtomicU64,
    /// Rows left `unknown` earlier that read-back found stored (`--verify-unknown`).
    pub confirmed: AtomicU64,
    /// Rows a row filter left out on purpose; recorded `skipped`, not sent.
    pub skipped: AtomicU64,
    /// Rows held back behind a failed row of their conversation; recorded `waiting`, not sent.
    pub waiting: AtomicU64,
}

impl Counters {
    /// Rows with their outcome, in this run or an earlier one: what progress counts as done.
    pub fn finished(&self) -> u64 {
        // One definition of "finished": the report's, from the counters as they stand.
        Report::read(self, None, 0, Duration::ZERO).finished()
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Default)]
pub struct Report {
    /// Why the run stopped early; `None` when it read the input to the end.
    pub stopped: Option<StopReason>,
    /// Rows in the input (from the pass before sending; 0 when it did not finish).
    pub total: u64,
    /// Input rows read.
    pub rows: u64,
    /// Rows stored by this run.
    pub sent: u64,
    /// Rows skipped because an earlier run sent them.
    pub sent_before: u64,
    /// Rows that break a rule.
    pub invalid: u64,
    /// Rows recorded `failed` by this run: not stored (refused, out of retries, lookup failed).
    pub failed: u64,
    /// Rows sent with no answer in this run.
    pub unknown: u64,
    /// Rows left `unknown` by an earlier run and not sent again.
    pub unknown_before: u64,
    /// Rows whose key repeats an earlier row of the input.
    pub duplicate: u64,
    /// Rows that look like a row sent earlier with a cell edited; not sent.
    pub changed: u64,
    /// Rows left `unknown` earlier that read-back found stored, recorded `sent`.
    pub confirmed: u64,
    /// Read-back requests among the requests.
    pub reads: u64,
    /// Rows a row filter left out on purpose; not sent.
    pub skipped: u64,
    /// Rows held back behind a failed row of their conversation; not sent.
    pub waiting: u64,
    /// Requests of every kind; `lookups` of them were contact and conversation lookups.
    pub requests: u64,
    /// Contact and conversation lookups among the requests.
    pub lookups: u64,
    /// Attachment uploads among the requests.
    pub uploads: u64,
    /// Access tokens refreshed at `/oauth/token` (not among the requests: the token endpoint
    /// is not the API's budget).
    pub token_refreshes: u64,
    /// Location tokens obtained from an agency token (`/oauth/locationToken`).
    pub location_tokens: u64,
    /// Rows recorded `sent` by earlier runs that this input no longer has.
    pub gone: u64,
    /// Rows are keyed by a hash of their cells (no key column).
    pub content_keys: bool,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// The counters as they stand, with the stop reason and request count of the run.
    pub fn read(
        c: &Counters,
        stopped: Option<StopReason>,
        requests: u64,
        elapsed: Duration,
    ) -> Report {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Report {
            stopped,
            total: 0,
            rows: n(&c.rows),
            sent: n(&c.sent),
            sent_before: n(&c.sent_before),
            invalid: n(&c.invalid),
            failed: n(&c.failed),
            unknown: n(&c.unknown),
            unknown_before: n(&c.unknown_before),
            duplicate: n(&c.duplicate),
            changed: n(&c.changed),
            confirmed: n(&c.confirmed),
            reads: 0,
            skipped: n(&c.skipped),
            waiting: n(&c.waiting),
            requests,
            lookups: 0,
            uploads: 0,
            token_refreshes: 0,
            location_tokens: 0,
            gone: 0,
            content_keys: false,
            elapsed,
        }
    }

    /// Rows with their outcome, now or earlier.
    pub fn finished(&self) -> u64 {
        self.sent
            + self.sent_before
            + self.invalid
            + self.failed
            + self.unknown
            + self.unknown_before
            + self.duplicate
            + self.changed
            + self.confirmed
            + self.skipped
            + self.waiting
    }

    /// Message requests among the requests (the rest are lookups, reads and uploads).
    pub fn messages(&self) -> u64 {
        self.requests
            .saturating_sub(self.lookups + self.reads + self.uploads)
    }

    /// How the run ended, for the exit code: its stop, and the rows that need the user.
    pub fn ending(&self) -> Ending {
        Ending {
            stopped: self.stopped.clone(),
            attention: self.invalid
                + self.failed
                + self.unknown
                + self.unknown_before
                + self.changed
                + self.waiting,
            summary: None,
        }
    }

    /// [`ending`](Report::ending) with the report for `--summary-json`.
    pub fn ending_with_summary(&self, input: &Path, results: &Path) -> Ending {
        Ending {
            summary: Some(self.json(input, results)),
            ..self.ending()
        }
    }

    /// The report as one JSON object: what `--summary-json` writes, beside the exit code.
    pub fn json(&self, input: &Path, results: &Path) -> serde_json::Value {
        serde_json::json!({
            "input": input.display().to_string(),
            "results": results.display().to_string(),
            "stopped": self.stopped.as_ref().map(ToString::to_string),
            "rows": {
                "in_input": self.total,
                "read": self.rows,
                "sent": self.sent,
                "sent_earlier": self.sent_before,
                "invalid": self.invalid,
                "failed": self.failed,
                "unknown": self.unknown,
                "unknown_earlier": self.unknown_before,
                "duplicate": self.duplicate,
                "changed": self.changed,
                "confirmed_by_read_back": self.confirmed,
                "skipped": self.skipped,
                "waiting": self.waiting,
                "sent_earlier_not_in_input": self.gone,
            },
            "requests": {
                "total": self.requests,
                "messages": self.messages(),
                "lookups": self.lookups,
                "token_refreshes": self.token_refreshes,
                "location_tokens": self.location_tokens,
                "reads": self.reads,
                "uploads": self.uploads,
            },
            "elapsed_seconds": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "resume_command": self.stopped.as_ref().map(|_| resume_command()),
        })
    }

    /// The summary printed at the end of a run: counts, pace, and what to do next.
    pub fn render(&self, input: &Path, results: &Path) -> String {
        let r = self;
        let mut out = String::new();
        let _ = writeln!(out, "{} → {}", input.display(), results.display());
        let _ = writeln!(out, "  rows read     {:>9}", r.rows);
        let _ = writeln!(
            out,
            "  sent          {:>9}   ({} now, {} in earlier runs)",
            r.sent + r.sent_before,
            r.sent,
            r.sent_before
        );
        if r.confirmed > 0 {
            let _ = writeln!(
                out,
                "  confirmed     {:>9}   (unknown rows read-back found stored: now sent)",
                r.confirmed
            );
        }
        let _ = writeln!(out, "  invalid       {:>9}", r.invalid);
        let _ = writeln!(out, "  failed        {:>9}", r.failed);
        let _ = writeln!(
            out,
            "  unknown       {:>9}   ({} now, {} from earlier runs)",
            r.unknown + r.unknown_before,
            r.unknown,
            r.unknown_before
        );
        let _ = writeln!(out, "  duplicate     {:>9}", r.duplicate);
        let _ = writeln!(out, "  changed       {:>9}", r.changed);
        if r.waiting > 0 {
            let _ = writeln!(
                out,
                "  waiting       {:>9}   (not sent: an earlier row of their conversation failed; the next run sends them after it)",
                r.waiting
            );
        }
        if r.skipped > 0 {
            let _ = writeln!(
                out,
                "  skipped       {:>9}   (left out on purpose by a row filter; each is in the results file with its reason)",
                r.skipped
            );
        }
        let secs = r.elapsed.as_secs_f64();
        let _ = writeln!(
            out,
            "  {} requests ({} messages, {} lookups{}{}) in {:.1}s: {:.1} messages sent/s",
            r.requests,
            r.messages(),
            r.lookups,
            if r.reads > 0 {
                format!(", {} reads", r.reads)
            } else {
                String::new()
            },
            if r.uploads > 0 {
                format!(", {} uploads", r.uploads)
            } else {
                String::new()
            },
            secs,
            r.sent as f64 / secs.max(0.001)
        );
        if r.token_refreshes + r.location_tokens > 0 {
            let _ = writeln!(
                out,
                "  tokens        {} refreshed, {} location token(s) from the agency token",
                r.token_refreshes, r.location_tokens
            );
        }
        if r.gone > 0 {
            let _ = writeln!(
                out,
                "  {} row(s) sent earlier are not in this input (their lines are kept){}",
                r.gone,
                if r.content_keys {
                    ": rows keyed by content change key when a cell is edited; an edited row is held back as changed when its conversation, direction, type and date are the same, else sent again as new; give the export a key column (--key-column)"
                } else {
                    ""
                }
            );
        }
        let mut again = resume_command();
        if read_from_pipe(input) {
            again.push_str("\n  (with the same input fed to it again: this one was read from a pipe; the rows sent are known by their keys)");
        }
        match &r.stopped {
            Some(reason) => {
                let _ = writeln!(out, "stopped early: {reason}.");
                let left = r.total.saturating_sub(r.finished());
                let what = match reason {
                    StopReason::TokenRejected(_) => {
                        "fix the token (a new one in LC_TOKEN or the --token-file), then run the same command again"
                    }
                    StopReason::RefreshRefused(_) => {
                        "once the token file holds a token that works (see above), run the same command again"
                    }
                    _ => "to resume, run the same command again",
                };
                let _ = writeln!(
                    out,
                    "{left} row(s) still to do (rows not attempted are not in the results file); {what}{}:\n  {again}",
                    token_note()
                );
            }
            None if r.failed + r.invalid > 0 => {
                let _ = writeln!(
                    out,
                    "failed and invalid rows are tried again when you run the same command (fix the input first for invalid rows){}:\n  {again}",
                    token_note()
                );
            }
            None => {}
        }
        if r.changed > 0 {
            let _ = writeln!(
                out,
                "changed rows look like rows sent earlier with a cell edited (the results file names each one and its message): they were not sent again. To send them as new messages, run the same command with --send-changed"
            );
        }
        if r.unknown + r.unknown_before > 0 {
            let _ = writeln!(
                out,
                "unknown rows may or may not be stored (the request left, no answer came, or a server error may have come after storing it): run the same command with --verify-unknown to look each one up in its conversation, send the missing ones and record the found ones sent (--resend-unknown sends them all again, and those that were stored are then stored twice)"
            );
        }
        out
    }
}

/// Whether `input` was a pipe the resume command cannot name: stdin, or a process substitution
/// (`<(…)`, which the shell passes as `/dev/fd/N`).
fn read_from_pipe(input: &Path) -> bool {
    input == Path::new("-") || input.starts_with("/dev/fd") || input.starts_with("/proc/self/fd")
}

/// An argument holding a URL with a password (`--base-url https://user:pw@host`), with the
/// password replaced: the summary must not print it.
fn redact_password(arg: &str) -> String {
    let (flag, value) = match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => (format!("{flag}="), value),
        _ => (String::new(), arg),
    };
    match url::Url::parse(value) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("PASSWORD"));
            format!("{flag}{url}")
        }
        _ => arg.to_owned(),
    }
}

/// How the token reaches the resumed run, when it came from the environment: its variable,
/// never its value.
fn token_note() -> &'static str {
    let from_env = std::env::var_os("LC_TOKEN").is_some_and(|t| !t.is_empty());
    let from_file_or_sandbox = std::env::args()
        .any(|a| a == "--sandbox" || a == "--token-file" || a.starts_with("--token-file="));
    if from_env && !from_file_or_sandbox {
        " (with the token in LC_TOKEN, as for this run)"
    } else {
        ""
    }
}

/// The command line of this run, quoted for a POSIX shell, without `--limit` (a canary's limit
/// would stop the resume after as many rows again).
pub fn resume_command() -> String {
    let mut skip_next = false;
    std::env::args()
        .filter(|a| {
            if std::mem::take(&mut skip_next) {
                return false;
            }
            if a == "--limit" {
                skip_next = true;
                return false;
            }
            !a.starts_with("--limit=")
        })
        .map(|a| redact_password(&a))
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Row errors grouped by kind, with the first one of each kind as the example.
#[derive(Debug, Default)]
pub struct ErrorTally {
    kinds: HashMap<Problem, (u64, String)>,
}

impl ErrorTally {
    /// Counts one row error under its kind; the first of a kind is kept as its example.
    pub fn add(&mut self, error: &RowError) {
        let entry = self
            .kinds
            .entry(error.invalid.problem)
            .or_insert_with(|| (0, error.to_string()));
        entry.0 += 1;
    }

    /// `true` when no error was added.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// The `top` most frequent kinds, most frequent first, one per line.
    pub fn render(&self, top: usize) -> String {
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        let width = kinds.first().map_or(1, |k| k.1.0.to_string().len());
        let mut out = String::new();
        for (problem, (count, example)) in kinds.into_iter().take(top) {
            let _ = writeln!(out, "  {count:>width$}  {}", problem.label());
            let _ = writeln!(out, "  {:>width$}  e.g. {example}", "");
        }
        out
    }
}

/// `--summary-json`: the file is removed as the run starts, so a monitor never reads an old
/// run's outcome as this one's (a run that cannot write it at the end leaves none).
pub fn clear_json(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        say_err(&format!(
            "warning: cannot remove the old summary {}: {e}",
            path.display()
        ));
    }
}

/// Writes `--summary-json` at the end: the exit code and what it means, the usage error if the
/// run never started, and the run's report. Atomic (temp file in the same folder, synced,
/// renamed): a monitor reads the whole object or none.
pub fn write_json(
    path: &Path,
    exit: crate::Exit,
    error: Option<&str>,
    report: Option<&serde_json::Value>,
) {
    let mut object = serde_json::json!({
        "exit_code": exit as u8,
        "outcome": match exit {
            crate::Exit::Success => "success",
            crate::Exit::RowsNeedAttention => "finished, some rows need attention",
            crate::Exit::Usage => "usage or configuration error, nothing sent",
            crate::Exit::Stopped => "stopped early, resumable",
        },
        "error": error,
    });
    if let (Some(serde_json::Value::Object(fields)), Some(target)) =
        (report, object.as_object_mut())
    {
        target.extend(fields.clone());
    }
    let mut body = serde_json::to_vec_pretty(&object).expect("a summary serialises");
    body.push(b'\n');
    if let Err(e) = crate::results::line::write_atomically(path, ".lc-import-summary.", &body) {
        say_err(&format!(
            "error: cannot write the summary {}: {e}",
            path.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Invalid;

    fn err(line: u64, problem: Problem) -> RowError {
        RowError {
            line,
            column: None,
            invalid: Invalid::new(problem, format!("problem at {line}")),
        }
    }

    #[test]
    fn most_frequent_first_with_first_example() {
        let mut t = ErrorTally::default();
        for (line, p) in [
            (2, Problem::Date),
            (3, Problem::Type),
            (4, Problem::Date),
            (5, Problem::Url),
        ] {
            t.add(&err(line, p));
        }
        let out = t.render(2);
        assert_eq!(
            out,
            "  2  bad date\n     e.g. line 2: problem at 2\n  1  unknown type\n     e.g. line 3: problem at 3\n"
        );
    }
}
