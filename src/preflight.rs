//! The pass before sending: everything a run can know before its first request, and every
//! refusal that must come before it. It opens the input and the results file (locking it and
//! reading what earlier runs recorded), opens the ID map when rows need lookups, and reads the
//! input once to
//!
//! - count the quota plan (messages to send, contacts and conversations to look up),
//! - find rows whose key an earlier row of the input already has (the `(key, row)` pairs are
//!   sorted on disk, so memory stays flat however many rows there are),
//! - refuse a results file that belongs to another input: a key it records as sent to another
//!   conversation than the row has. Found here, that costs nothing; found while sending, it
//!   would stop a run that has already sent rows,
//! - for rows keyed by content, mark in the content index every key the input has: the rows
//!   sent earlier whose keys it no longer has are the earlier versions of edited rows.
//!
//! An input that can be read only once (stdin, a FIFO, `<(…)`) is copied by this pass into a
//! temp file beside the results file, which the import then reads (see `source`).
//!
//! An error here is a usage error (exit 2): nothing has been sent.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Settings;
use crate::diskmap::DiskMap;
use crate::extsort::ExternalSort;
use crate::mapping::{Mapping, Order};
use crate::order::{OrderIndex, SendOrder};

use crate::progress::Progress;
use crate::quota::Plan;
use crate::readback::settle::Doubt;
use crate::reader::CsvInput;
use crate::reader::Utf8Hint;
use crate::resolve::{IdMap, Resolver};
use crate::results::content::{self, ContentLog, EarlierVersions};
use crate::results::line::{folder_of, key_id};
use crate::results::prior::conversation_tag;
use crate::results::target::{self, Target};
use crate::results::threads::ThreadLog;
use crate::results::{Journal, Prior, Status};
use crate::source::Source;
use crate::threads::{StartState, Starts, StartsBuilder};

/// What the pass found, ready for the run.
pub struct Prepared {
    /// The input, opened afresh after the pass, at its first row.
    pub input: CsvInput,
    /// How records become request bodies, built from the input's header.
    pub mapping: Mapping,
    /// The results journal, opened and locked for this run.
    pub journal: Journal,
    /// The outcomes of earlier runs, read from the results file, by key.
    pub prior: Prior,
    /// `None` when no row needs a lookup.
    pub resolver: Option<Resolver>,
    /// What the run still has to do, in requests: printed before anything is sent.
    pub plan: Plan,
    /// The rows whose key an earlier row already has, in row order.
    pub duplicates: DuplicateRows,
    /// For rows keyed by content: the file each row sent is added to, and the rows sent
    /// earlier whose keys this input no longer has. `None` when rows have a key column.
    pub content: Option<(ContentLog, EarlierVersions)>,
    /// With `--verify-unknown`: the rows an earlier run left `unknown`, to settle first.
    pub doubts: Vec<Doubt>,
    /// `--order date`: the rows in the order to read and send them (duplicates marked there,
    /// not in `duplicates`). `None`: the file's order.
    pub order: Option<SendOrder>,
    /// With a thread column: the thread store (beside the results file) and each thread's start.
    pub threads: Option<(std::sync::Arc<ThreadLog>, Starts)>,
}

/// Runs the pass. `Ok(None)`: Ctrl-C ended it (nothing was sent; the results file is as it was).
pub fn prepare(settings: &Settings, interrupt: &CancellationToken) -> Result<Option<Prepared>> {
    let mut options = settings.mapping.clone();
    // A stream is read once: the pass reads it into a temp copy beside the results file, and
    // the import reads the copy.
    let mut source = Source::new(&settings.input, settings.encoding)?
        .spool_in(&folder_of(&settings.results))
        .stop_on(interrupt.clone());
    // `--order date` reads the rows at the offsets the pass saw: in the file when it is plain
    // UTF-8, else in a copy of the pass's decoded text (beside the results file, unnamed).
    if options.order == Order::Date {
        source = source.seekable_text(&folder_of(&settings.results));
    } else if !options.order_given {
        // A thread column sends in date order when no order was chosen: free to arrange for a
        // plain UTF-8 file, known only once its header is read.
        source = source.seekable_if_free();
    }
    let reading = Progress::reading(&source);
    let input = match CsvInput::open(&mut source, settings.delimiter) {
        Err(_) if interrupt.is_cancelled() => return Ok(None),
        opened => opened?,
    };
    let mut mapping = Mapping::new(input.header(), &options)
        .with_context(|| settings.input.display().to_string())?;
    if mapping.order == Order::Date && options.order == Order::Input && !source.seekable_again() {
        // Date order by default, but the input cannot be read again in another order for free
        // (a stream, a compressed file, another encoding): the file's order it is.
        options.order_given = true;
        mapping = Mapping::new(input.header(), &options)
            .with_context(|| settings.input.display().to_string())?;
    }
    if mapping.has_threads() && mapping.order == Order::Input {
        warn!(
            "{}: a thread column with --order input: a reply that comes before its thread's first message (by date) in the file waits for the next run{}",
            settings.input.display(),
            if settings.mapping.order_given {
                "; --order date sends each thread in date order"
            } else {
                " (a stream, a compressed file or another encoding is sent in date order only with --order date, which keeps a decoded copy of it)"
            }
        );
    }
    for w in &mapping.warnings {
        warn!("{}: {w}", settings.input.display());
    }
    let (journal, prior) = Journal::open(&settings.results)?;
    if !prior.is_empty() {
        info!(
            "resuming from {}: {} row(s) sent earlier will be skipped, {} unknown{}",
            settings.results.display(),
            prior.count(Status::Sent),
            prior.count(Status::Unknown),
            if settings.resend_unknown {
                " will be sent again (--resend-unknown)"
            } else if settings.verify_unknown {
                " will be looked for on the server first (--verify-unknown)"
            } else {
                " left alone"
            }
        );
    }
    let has_lines = journal.held_lines();
    // Opened under the results file's lock, which is also the content index's.
    let mut content = match mapping.has_key_column() {
        true => None,
        false => Some(ContentLog::open(&content::path_for(&settings.results))?),
    };
    let resolver = open_resolver(settings, &mapping)?;
    let temp = folder_of(&settings.results);
    let mut pairs = ExternalSort::new(&temp);
    let mut on_key = |row: u64, key: &str| {
        // Ctrl-C during the pass ends it (a pass over a big input takes seconds).
        if interrupt.is_cancelled() {
            bail!("interrupted");
        }
        if let Some((_, index)) = content.as_mut() {
            index.mark_present(key);
        }
        let id = key_id(key);
        pairs
            .push([(id >> 64) as u64, id as u64, row])
            .context("sorting row keys in a temp file")
    };
    let mut pass = Pass {
        settings,
        mapping: &mapping,
        prior: &prior,
        ids: resolver.as_ref().map(|r| &r.ids),
        conflicts: Vec::new(),
        locations: Vec::new(),
        doubts: Vec::new(),
        doubt_conversations: HashSet::new(),
        order: match mapping.order {
            Order::Date => {
                Some(OrderIndex::new(&temp).context("creating the send order's temp files")?)
            }
            Order::Input => None,
        },
        utf8: Utf8Hint::default(),
        threads: mapping.has_threads().then(StartsBuilder::default),
    };
    let plan = pass.run(input, &mut on_key);
    reading.finish();
    if interrupt.is_cancelled() {
        return Ok(None);
    }
    let plan = plan?;
    if let Some(hint) = pass.utf8.render(&settings.input) {
        warn!("{hint}");
    }
    let mut conflicts = std::mem::take(&mut pass.conflicts);
    let doubts = std::mem::take(&mut pass.doubts);
    let order = pass.order.take();
    let threads = match pass.threads.take() {
        None => None,
        Some(builder) => {
            let log = ThreadLog::open(&crate::results::threads::path_for(&settings.results))?;
            let (starts, report) = builder.finish(|id| log.get(id).is_some());
            report_threads(settings, &mapping, &log, &report);
            Some((std::sync::Arc::new(log), starts))
        }
    };
    // The target is checked (and recorded) before any request, as the pass's last refusal.
    let target = Target {
        api: if settings.rehearsal {
            target::SANDBOX.to_owned()
        } else {
            api_of(&settings.base_url)
        },
        location: settings
            .location_id
            .clone()
            .or(match pass.locations.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            }),
    };
    let mut duplicates = DuplicateRows::from_pairs(pairs, &temp, &mut conflicts)?;
    let order = match order {
        None => None,
        Some(mut index) => {
            // Rows are read out of file order: each is told whether it is a duplicate there.
            let context = || "sorting rows by date in a temp file";
            for row in 1..=plan.rows {
                if duplicates.contains(row)? {
                    index.mark_duplicate(row).with_context(context)?;
                }
            }
            duplicates = DuplicateRows::none(&temp)?;
            Some(index.finish().with_context(context)?)
        }
    };
    let content = match content {
        Some((log, index)) => {
            let gone = index.earlier_versions(&log)?;
            if !gone.is_empty() {
                info!(
                    "{}: {} row(s) sent earlier are not in this input: a new row with the conversation, direction, type and date of one of them is taken for it edited, and {}",
                    settings.input.display(),
                    gone.len(),
                    if settings.send_changed {
                        "sent as a new message (--send-changed)"
                    } else {
                        "recorded changed, not sent"
                    }
                );
            }
            Some((log, gone))
        }
        None => None,
    };
    if let Some(c) = conflicts.first() {
        bail!(
            "{results} records key {key} as sent to another conversation than row {row} of {input} has ({conversation}): the results file seems to belong to another input, and going on would skip this row as sent. Give {input} its own --results file (or, if you changed that row's conversationId on purpose, delete its line from {results} to send it again)",
            results = journal.path().display(),
            input = settings.input.display(),
            key = c.key,
            row = c.row,
            conversation = c.conversation,
        );
    }
    target::check_and_record(journal.path(), &target, has_lines)?;
    Ok(Some(Prepared {
        input: CsvInput::open(&mut source, settings.delimiter)?,
        mapping,
        journal,
        prior,
        resolver,
        plan,
        duplicates,
        content,
        doubts,
        order,
        threads,
    }))
}

/// The pass's log lines about threads.
fn report_threads(
    settings: &Settings,
    mapping: &Mapping,
    log: &ThreadLog,
    report: &crate::threads::Report,
) {
    let input = settings.input.display();
    info!(
        "{input}: {} e-mail(s) in {} thread(s) (threadId from {}); {} thread(s) started in earlier runs go on ({}: {} known)",
        report.messages,
        report.threads,
        mapping
            .column_of(crate::mapping::Field::ThreadId)
            .map_or_else(|| "--set".to_owned(), |c| format!("column {c:?}")),
        report.continued,
        log.path().display(),
        log.len(),
    );
    if report.held > 0 {
        warn!(
            "{input}: {} thread(s) have a first message that is not sent and will not be sent by this run (left unknown, invalid, or sent without its emailMessageId kept): their other messages wait (recorded waiting, with the reason)",
            report.held
        );
    }
    if report.replies_first_in_file > 0 {
        info!(
            "{input}: {} thread(s) list a reply before their first message{}",
            report.replies_first_in_file,
            if mapping.order == Order::Date {
                ": sent in date order, each thread's first message first"
            } else {
                ": with --order input those replies wait for the next run"
            }
        );
    }
}

/// The API a base URL names, for the results file's target. A server on a loopback address is
/// a local stand-in (an `lc-import sandbox`, a test server) whose port changes from start to
/// start: any port is the same target (`http://127.0.0.1:*`).
fn api_of(base: &reqwest::Url) -> String {
    if !crate::sender::is_loopback(base) {
        return crate::sender::shown(base);
    }
    let host = base.host_str().unwrap_or("localhost");
    format!("{}://{host}:*{}", base.scheme(), base.path())
}

/// Opens the ID map beside the results file and the resolver, when rows may need lookups.
fn open_resolver(settings: &Settings, mapping: &Mapping) -> Result<Option<Resolver>> {
    if !mapping.resolving() {
        return Ok(None);
    }
    let ids = IdMap::open(&crate::resolve::idmap::path_for(&settings.results))?;
    // Per location: IDs of another location are no help to this run's rows.
    for (location, (contacts, conversations)) in ids.per_location() {
        info!(
            "{}: {contacts} contact(s) and {conversations} conversation(s) of location {location} known from earlier runs",
            ids.path().display()
        );
    }
    Ok(Some(Resolver::new(
        &settings.base_url,
        settings.timeout,
        settings.create_contacts,
        ids,
    )?))
}

/// The most rows the pass keeps as conflicting with the results file. Each is refused unless it
/// turns out to be a duplicate (then it was never sent itself); more than this many is another
/// input's results file whatever the duplicates.
const MAX_CONFLICTS: usize = 4096;

/// A row whose key the results file records as sent to another conversation.
struct Conflict {
    row: u64,
    key: String,
    conversation: String,
}

/// One read of the input: the plan, every row's key, and the conflicts with the results file.
struct Pass<'a> {
    settings: &'a Settings,
    mapping: &'a Mapping,
    prior: &'a Prior,
    ids: Option<&'a IdMap>,
    conflicts: Vec<Conflict>,
    /// The distinct `locationId`s of rows to look up (two at most: one is all that is used).
    locations: Vec<String>,
    /// With `--verify-unknown`: the rows left `unknown`, valid, to settle before sending.
    doubts: Vec<Doubt>,
    /// Conversations of rows in doubt: one read settles all of a conversation's.
    doubt_conversations: HashSet<String>,
    /// `--order date`: where each row starts and its date.
    order: Option<OrderIndex>,
    /// Cells that are not UTF-8, for one hint about the file's encoding.
    utf8: Utf8Hint,
    /// With a thread column: each thread's first message so far.
    threads: Option<StartsBuilder>,
}

impl Pass<'_> {
    fn run(
        &mut self,
        mut input: CsvInput,
        on_key: &mut dyn FnMut(u64, &str) -> Result<()>,
    ) -> Result<Plan> {
        let settings = self.settings;
        let path = &settings.input;
        let mut plan = Plan {
            contact_cost: if self.settings.create_contacts { 2 } else { 1 },
            ..Plan::default()
        };
        // The distinct contacts so far, on disk: half a million of them cost no memory.
        let mut seen = DiskMap::new(&folder_of(&settings.results));
        while let Some(record) = input
            .next_record()
            .with_context(|| format!("reading {}", path.display()))?
        {
            let (row, offset, line) = (record.row, record.offset, record.line);
            let date = self.visit(record, &mut plan, &mut seen, on_key)?;
            if let Some(order) = &mut self.order {
                order
                    .push(row, offset, line, date)
                    .context("sorting rows by date in a temp file")?;
            }
        }
        Ok(plan)
    }

    /// One row of the pass; its date in milliseconds when it is to be sent.
    fn visit(
        &mut self,
        record: crate::reader::Record<'_>,
        plan: &mut Plan,
        seen: &mut DiskMap,
        on_key: &mut dyn FnMut(u64, &str) -> Result<()>,
    ) -> Result<Option<i64>> {
        plan.rows += 1;
        // Every row's key goes to `on_key` (duplicate keys are found from them).
        let key = self.mapping.record_key(&record);
        on_key(record.row, &key)?;
        if record.broken.is_some() {
            return Ok(None);
        }
        let place = match self.threads {
            Some(_) => self.mapping.thread_place(record.cells, record.line),
            None => None,
        };
        let row_no = record.row;
        match self.prior.get(&key) {
            Some(p) if p.status == Status::Sent => {
                self.thread(&place, row_no, StartState::SentEarlier);
                self.check_same_conversation(p.conversation, key, record.row, record.cells)?;
                plan.done_before += 1;
                return Ok(None);
            }
            Some(p) if p.status == Status::Unknown && !self.settings.resend_unknown => {
                self.thread(&place, row_no, StartState::UnknownEarlier);
                plan.done_before += 1;
                if self.settings.verify_unknown
                    && let Ok(row) = self.mapping.map_row(record.cells, record.line)
                {
                    let c = &row.message.conversation_id;
                    // A row whose conversation is to be found reads on its own.
                    if c.is_empty() || self.doubt_conversations.insert(c.clone()) {
                        plan.settle_reads += 1;
                    }
                    plan.doubts += 1;
                    // Sent again if read-back does not find it: its files are uploaded then.
                    plan.uploads += uploads_of(&row.message);
                    self.doubts.push(Doubt {
                        row: record.row,
                        key,
                        message: row.message,
                        offset: p.offset,
                        thread: place.clone(),
                    });
                }
                return Ok(None);
            }
            _ => {}
        }
        if self
            .mapping
            .skip_reason(record.cells, record.line)
            .is_some()
        {
            return Ok(None);
        }
        let row = match self.mapping.map_row(record.cells, record.line) {
            Ok(row) => row,
            Err(errors) => {
                self.thread(&place, row_no, StartState::Invalid);
                self.utf8.observe(record.cells, &errors);
                return Ok(None);
            }
        };
        let mut row = row;
        if self
            .settings
            .files
            .check(self.mapping, &mut row, record.line)
            .is_err()
        {
            self.thread(&place, row_no, StartState::Invalid);
            return Ok(None);
        }
        self.thread(&place, row_no, StartState::ToSend);
        plan.messages += 1;
        plan.uploads += uploads_of(&row.message);
        let date = row
            .message
            .date
            .as_deref()
            .and_then(|d| d.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond());
        let (Some(lookup), Some(ids)) = (row.lookup, self.ids) else {
            return Ok(date);
        };
        let m = &row.message;
        let location = lookup.location_id.clone();
        if self.locations.len() < 2 && !self.locations.contains(&location) {
            self.locations.push(location.clone());
        }
        let key = lookup.key(&m.contact_id);
        let distinct = seen
            .insert(crate::resolve::idmap::contact_hash(&location, &key), 1)
            .context("counting distinct contacts in a temp file")?;
        if distinct.is_some() {
            return Ok(date);
        }
        let contact = if m.contact_id.is_empty() {
            let known = ids.contact(&location, &key)?.map(|k| k.id);
            if known.is_none() {
                plan.contacts += 1;
            }
            known
        } else {
            Some(m.contact_id.clone())
        };
        if m.conversation_id.is_empty() {
            let known = match &contact {
                Some(c) => ids.conversation(&location, c)?.is_some(),
                None => false,
            };
            if !known {
                plan.conversations += 1;
            }
        }
        Ok(date)
    }

    /// Row `row`, an e-mail at `place` of a thread (if it is one), in the state `state`.
    fn thread(&mut self, place: &Option<crate::mapping::ThreadPlace>, row: u64, state: StartState) {
        if let (Some(builder), Some(place)) = (self.threads.as_mut(), place) {
            builder.visit(place, row, state);
        }
    }

    /// A key recorded as sent to another conversation is not this row, but a row of another
    /// input sharing the results file (both numbered from 1, say): skipping it as sent would
    /// lose it. Kept as a conflict, refused after the pass unless the row is a duplicate. (The
    /// raw cell is enough: mapping a row sent earlier would cost every resume.)
    fn check_same_conversation(
        &mut self,
        recorded: u32,
        key: String,
        row: u64,
        cells: &csv::ByteRecord,
    ) -> Result<()> {
        let conversation = self.mapping.conversation_cell(cells).unwrap_or("");
        if recorded != 0 && !conversation.is_empty() && recorded != conversation_tag(conversation) {
            if self.conflicts.len() == MAX_CONFLICTS {
                bail!(
                    "more than {MAX_CONFLICTS} rows of {} have keys that the results file records as sent to other conversations: it belongs to another input. Give this input its own --results file",
                    self.settings.input.display()
                );
            }
            self.conflicts.push(Conflict {
                row,
                key,
                conversation: conversation.to_owned(),
            });
        }
        Ok(())
    }
}

/// The attachments of `m` to upload before it is sent (local files, URLs with a query string).
fn uploads_of(m: &crate::message::InboundMessage) -> u64 {
    m.attachments
        .iter()
        .filter(|a| crate::validate::check_attachment(a).is_ok_and(|s| s.needs_upload()))
        .count() as u64
}

/// Rows whose key an earlier row of the same input already has, in row order. Found by the pass,
/// which sorts `(key, row)` pairs on disk, so memory stays flat however many rows there are.
pub struct DuplicateRows(std::iter::Peekable<crate::extsort::Sorted>);

impl DuplicateRows {
    /// No duplicate rows (the send order marks them itself).
    fn none(temp: &Path) -> Result<DuplicateRows> {
        Ok(DuplicateRows(
            ExternalSort::new(temp)
                .finish()
                .context("an empty sort")?
                .peekable(),
        ))
    }

    /// Whether `row` is a duplicate; rows must be asked in ascending order.
    pub fn contains(&mut self, row: u64) -> Result<bool> {
        while let Some(next) = self.0.peek() {
            match next {
                Ok([r, _, _]) if *r < row => {
                    self.0.next();
                }
                Ok([r, _, _]) => return Ok(*r == row),
                Err(_) => {
                    let e = self.0.next().expect("peeked").expect_err("peeked an error");
                    return Err(e).context("reading the duplicate rows back");
                }
            }
        }
        Ok(false)
    }

    /// From `[key hi, key lo, row]` pairs of every row: every row after the first of its key.
    /// Conflicting rows that are duplicates are taken out of `conflicts`.
    fn from_pairs(
        pairs: ExternalSort,
        temp: &Path,
        conflicts: &mut Vec<Conflict>,
    ) -> Result<DuplicateRows> {
        let context = || "finding duplicate keys in a temp file";
        let mut rows = ExternalSort::new(temp);
        let mut previous = None;
        for pair in pairs.finish().with_context(context)? {
            let [hi, lo, row] = pair.with_context(context)?;
            // Sorted by key then row: every row after the first of its key is a duplicate.
            if previous == Some((hi, lo)) {
                rows.push([row, 0, 0]).with_context(context)?;
                // Conflicts were found in row order: sorted by row.
                if let Ok(i) = conflicts.binary_search_by_key(&row, |c| c.row) {
                    conflicts.remove(i);
                }
            }
            previous = Some((hi, lo));
        }
        Ok(DuplicateRows(
            rows.finish().with_context(context)?.peekable(),
        ))
    }
}
