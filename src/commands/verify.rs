//! `lc-import verify INPUT [--results PATH] [--sample N]`: reads the rows an import recorded
//! `sent` back by message ID (`GET /conversations/messages/{id}`) and says whether each landed
//! as it was sent: found, direction, type, body, `date` kept as `dateAdded` (or the offset
//! seen), and per conversation the order of `dateAdded` against the input's. Several of these
//! are not documented anywhere (FACTS pitfall 6): only a read-back on the user's own location
//! can tell, which is why a careful migration starts with a canary and this.
//!
//! One line per difference, then a table; exit 0 when everything matches, 1 when any row
//! differs (or could not be read), 2 on usage errors. Reads pass a gate paced by `--rate` and
//! the retry policy, like every request of `run`.

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::cli::{RunArgs, VerifyArgs};
use crate::config::Settings;
use crate::gate::Gate;
use crate::mapping::Mapping;
use crate::message::{InboundMessage, SpecEnum};
use crate::readback::kinds::kind_matches;
use crate::readback::matching::{same_body, same_date};
use crate::readback::{Found, ReadError, Reader};
use crate::reader::CsvInput;
use crate::resolve::Env;
use crate::results::line::{ResultLine, Status};
use crate::retry::Policy;
use crate::summary::{Ending, say};

/// One sent row to read back.
/// The rows to read back, and what the check must know of the import.
struct Rows {
    sent: Vec<Sent>,
    /// Rows recorded sent that the input no longer maps: not checked.
    unchecked: u64,
    /// The import sent each conversation in date order (`--order date`, or a thread column's
    /// default), not in the file's.
    date_order: bool,
}

struct Sent {
    row: u64,
    key: String,
    message_id: String,
    message: InboundMessage,
}

/// What the read said of one row.
#[derive(Default)]
struct Seen {
    found: bool,
    direction: bool,
    kind: bool,
    body: bool,
    /// `None`: the row has no date, or the answer none.
    date_kept: Option<bool>,
    added: Option<Timestamp>,
    /// The conversation it reads back in (a row looked up by phone or e-mail maps to none).
    conversation: Option<String>,
}

/// `lc-import verify`.
pub fn run(args: VerifyArgs) -> Result<Ending> {
    let sample = args.sample;
    let settings = Settings::new(as_run(args), None)?;
    let rows = sent_rows(&settings, sample)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(verify(&settings, rows))
}

/// `verify`'s options as `run`'s, so they are read and checked the same way (`--config`, the
/// token, `--base-url`, `--rate`).
fn as_run(args: VerifyArgs) -> RunArgs {
    RunArgs {
        input: args.input,
        results: args.results,
        api: args.api,
        mapping: args.mapping,
        ..RunArgs::default()
    }
}

/// The rows the results file records `sent` (its last line per key), mapped from the input
/// as the import mapped them; with `sample`, that many spread evenly over the file.
fn sent_rows(settings: &Settings, sample: Option<u64>) -> Result<Rows> {
    let path = &settings.results;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot read results file {}", path.display()))?;
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut record = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .with_context(|| format!("reading results file {}", path.display()))?
    {
        let Some(line) = ResultLine::from_record(&record) else {
            continue;
        };
        match line.status {
            Some(Status::Sent) if !line.message_id.is_empty() => {
                ids.insert(line.key, line.message_id);
            }
            Some(Status::Duplicate) | Some(Status::Valid) => {}
            _ => {
                ids.remove(&line.key);
            }
        }
    }
    let every = match sample {
        Some(0) => anyhow::bail!("--sample 0 would read nothing: give 1 or more"),
        Some(n) => (ids.len() as u64).div_ceil(n).max(1),
        None => 1,
    };
    let mut source = crate::source::Source::new(&settings.input, settings.encoding)?;
    let mut input = CsvInput::open(&mut source, settings.delimiter)?;
    let mapping = Mapping::new(input.header(), &settings.mapping)
        .with_context(|| settings.input.display().to_string())?;
    let mut sent = Vec::new();
    let mut nth = 0u64;
    let mut unmapped = 0u64;
    while let Some(record) = input
        .next_record()
        .with_context(|| format!("reading {}", settings.input.display()))?
    {
        let key = mapping.record_key(&record);
        let Some(id) = ids.get(&key) else { continue };
        nth += 1;
        if !(nth - 1).is_multiple_of(every) || sample.is_some_and(|n| sent.len() as u64 >= n) {
            continue;
        }
        match mapping.map_row(record.cells, record.line) {
            Ok(row) => sent.push(Sent {
                row: record.row,
                key,
                message_id: id.clone(),
                message: row.message,
            }),
            // Recorded sent, but the input (or the options) no longer map it: said, not
            // silently left out of the check (e.g. a row with a file to upload and no
            // --location-id given to verify).
            Err(errors) => {
                unmapped += 1;
                if let Some(first) = errors.first() {
                    tracing::warn!(
                        "row {} (key {key}) is recorded sent but not checked: {first}",
                        record.row
                    );
                }
            }
        }
    }
    if unmapped > 0 {
        tracing::warn!(
            "{unmapped} row(s) recorded sent were not checked: the input does not map them as the import did (give verify the options the run had)"
        );
    }
    if sent.is_empty() {
        anyhow::bail!(
            "{} records no sent row of {}: nothing to read back (run the import first, e.g. a canary with --limit 10)",
            path.display(),
            settings.input.display()
        );
    }
    Ok(Rows {
        sent,
        unchecked: unmapped,
        date_order: mapping.order == crate::mapping::Order::Date,
    })
}

/// Reads the rows back; rows recorded sent that could not be mapped were not checked: they
/// need attention as a difference does (the check is not whole).
async fn verify(settings: &Settings, rows: Rows) -> Result<Ending> {
    let Rows {
        sent,
        unchecked,
        date_order,
    } = rows;
    let reader = Reader::new(&settings.base_url, settings.timeout, None)?;
    // One read at a time.
    let gate = Gate::new(settings.rate, None, 1, CancellationToken::new());
    let policy = Policy::new(settings.max_retries, settings.backoff);
    let env = Env {
        gate: &gate,
        policy: &policy,
        auth: &settings.auth,
    };
    let mut out = String::new();
    let mut seen: Vec<Seen> = Vec::with_capacity(sent.len());
    let mut unread = 0u64;
    for s in &sent {
        let found = match reader.message(&env, &s.message_id).await {
            Ok(found) => found,
            Err(e @ (ReadError::Refused(_) | ReadError::Stop(_))) => {
                anyhow::bail!("reading message {} back: {e}", s.message_id)
            }
            Err(e) => {
                unread += 1;
                let _ = writeln!(out, "row {} (key {}): {e}", s.row, s.key);
                seen.push(Seen::default());
                continue;
            }
        };
        let v = compare(&s.message, found.as_ref());
        describe(&mut out, s, found.as_ref(), &v);
        seen.push(v);
    }
    let (orders_kept, orders) = order(&sent, &seen, date_order, &mut out);
    let differ = seen
        .iter()
        .filter(|v| !(v.found && v.direction && v.kind && v.body && v.date_kept != Some(false)))
        .count() as u64
        + orders.saturating_sub(orders_kept);
    out.push_str(&table(&sent, &seen, orders_kept, orders, reader.reads()));
    if unread > 0 {
        let _ = writeln!(out, "{unread} row(s) could not be read back (see above)");
    }
    if unchecked > 0 {
        let _ = writeln!(
            out,
            "{unchecked} row(s) recorded sent were not checked: the input does not map them as the import did (see the warnings above)"
        );
    }
    let _ = writeln!(
        out,
        "{}",
        match (differ, unchecked) {
            (0, 0) => "every row read back landed as it was sent".to_owned(),
            (0, _) => "every row checked landed as it was sent".to_owned(),
            _ => format!("{differ} difference(s) from what was sent"),
        }
    );
    say(&out);
    Ok(Ending {
        stopped: None,
        attention: differ + unchecked,
        summary: None,
    })
}

fn compare(m: &InboundMessage, found: Option<&Found>) -> Seen {
    let Some(f) = found else {
        return Seen::default();
    };
    let date: Option<Timestamp> = m.date.as_deref().and_then(|d| d.parse().ok());
    let added = f.added();
    Seen {
        found: true,
        direction: f.direction.as_deref() == Some(m.direction.as_str()),
        kind: f
            .message_type
            .as_deref()
            .is_some_and(|t| kind_matches(m.kind.as_str(), t)),
        body: same_body(m, f.body.as_deref().unwrap_or("")),
        date_kept: date.zip(added).map(|(d, a)| same_date(d, a)),
        added,
        conversation: f.conversation_id.clone(),
    }
}

/// One line per difference of a row.
fn describe(out: &mut String, s: &Sent, f: Option<&Found>, v: &Seen) {
    let head = format!("row {} (key {}, message {})", s.row, s.key, s.message_id);
    let Some(f) = f else {
        let _ = writeln!(
            out,
            "{head}: not found: the API has no message with that ID"
        );
        return;
    };
    let m = &s.message;
    let shown = |o: &Option<String>| o.clone().unwrap_or_else(|| "nothing".into());
    if !v.direction {
        let _ = writeln!(
            out,
            "{head}: direction: sent {}, reads back {}",
            m.direction.as_str(),
            shown(&f.direction)
        );
    }
    if !v.kind {
        let _ = writeln!(
            out,
            "{head}: type: sent {}, reads back {}",
            m.kind.as_str(),
            shown(&f.message_type)
        );
    }
    if !v.body {
        let _ = writeln!(out, "{head}: body: reads back {:?}", shown(&f.body));
    }
    if v.date_kept == Some(false)
        && let (Some(date), Some(added)) = (&m.date, v.added)
    {
        let _ = writeln!(
            out,
            "{head}: date: sent {date}, dateAdded {added:.3} ({}): the API did not keep the date",
            offset(date, added)
        );
    }
}

/// `dateAdded` against the date sent, as a person reads it: `2d 04:05:06 later`.
fn offset(date: &str, added: Timestamp) -> String {
    let Ok(date) = date.parse::<Timestamp>() else {
        return "not comparable".to_owned();
    };
    let d = date.duration_until(added);
    let s = d.unsigned_abs().as_secs();
    format!(
        "{}d {:02}:{:02}:{:02} {}",
        s / 86_400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        if d.is_negative() { "earlier" } else { "later" }
    )
}

/// Per conversation: whether `dateAdded` runs in the order the input sent the rows. Returns
/// (conversations in order, conversations with two rows or more read back).
fn order(sent: &[Sent], seen: &[Seen], date_order: bool, out: &mut String) -> (u64, u64) {
    let mut by_conversation: HashMap<&str, Vec<(u64, Timestamp)>> = HashMap::new();
    // In the order the import sent them: the file's, or by date (rows of one instant in the
    // file's order) when it sent each conversation oldest first.
    let mut in_send_order: Vec<(&Sent, &Seen)> = sent.iter().zip(seen).collect();
    if date_order {
        in_send_order.sort_by_key(|(s, _)| {
            let date = s
                .message
                .date
                .as_deref()
                .and_then(|d| d.parse::<Timestamp>().ok());
            (date, s.row)
        });
    }
    for (s, v) in in_send_order {
        if let Some(a) = v.added {
            let conversation = v.conversation.as_deref();
            by_conversation
                .entry(conversation.unwrap_or(s.message.conversation_id.as_str()))
                .or_default()
                .push((s.row, a));
        }
    }
    let mut names: Vec<&&str> = by_conversation.keys().collect();
    names.sort();
    let (mut kept, mut counted) = (0, 0);
    for name in names {
        let rows = &by_conversation[*name];
        if rows.len() < 2 {
            continue;
        }
        counted += 1;
        match rows.windows(2).find(|w| w[1].1 < w[0].1) {
            None => kept += 1,
            Some(w) => {
                let _ = writeln!(
                    out,
                    "conversation {name}: order: row {} was sent after row {} but reads back dated earlier ({:.3} before {:.3})",
                    w[1].0, w[0].0, w[1].1, w[0].1
                );
            }
        }
    }
    (kept, counted)
}

fn table(sent: &[Sent], seen: &[Seen], orders_kept: u64, orders: u64, reads: u64) -> String {
    let count = |f: fn(&Seen) -> bool| seen.iter().filter(|v| f(v)).count();
    let found = count(|v| v.found);
    let dated = count(|v| v.date_kept.is_some());
    let kept = count(|v| v.date_kept == Some(true));
    let mut out = format!(
        "verify: {} sent row(s) read back with {reads} read(s)\n  {:<32}{:>8}{:>8}\n",
        sent.len(),
        "",
        "match",
        "differ"
    );
    let mut line = |name: &str, good: usize, of: usize| {
        let _ = writeln!(out, "  {name:<32}{good:>8}{:>8}", of - good);
    };
    line("found", found, sent.len());
    line(
        "direction as sent",
        count(|v| v.found && v.direction),
        found,
    );
    line("type as sent", count(|v| v.found && v.kind), found);
    line("body as sent", count(|v| v.found && v.body), found);
    line("date kept as dateAdded", kept, dated);
    line(
        "order per conversation",
        orders_kept as usize,
        orders as usize,
    );
    out
}
