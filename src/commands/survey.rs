//! `run --dry-run --resolve-only`: the lookups of a migration and nothing else. For every distinct
//! contact of the input it asks the API whether the contact and its conversation exist, creates
//! nothing, sends no message, and reports how many exist, would be created, or are ambiguous.
//!
//! Ambiguous contacts are the trap of FACTS pitfall 10: a row's e-mail address and phone number
//! find two different contacts (the run's single search, like the API's upsert, would take the
//! e-mail's). To see it, a contact with both is searched by each separately. Ambiguous
//! conversations are contacts for which the search lists more than one.
//!
//! What the survey finds unambiguously goes into the ID map, so the run after it repeats none
//! of these lookups. Requests are paced by `--rate` and counted by `--max-requests` as in a run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write as _};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::diskmap::DiskMap;
use crate::gate::Gate;
use crate::mapping::Mapping;
use crate::reader::CsvInput;
use crate::resolve::idmap::contact_hash;
use crate::resolve::{Env, Failure, IdMap, Known, Lookup, Origin, Resolver, stop_unread};
use crate::retry::{Policy, StopReason};
use crate::source::Source;
use crate::summary::{Ending, say};

/// One distinct contact of the input.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wanted {
    /// Its external key ([`Lookup::key`]).
    key: String,
    lookup: Lookup,
    /// Given in the input (then only the conversation is looked up).
    contact_id: Option<String>,
    /// Some row of this contact has no conversation ID.
    needs_conversation: bool,
}

/// What the survey learned about one contact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Finding {
    #[default]
    Skipped,
    Known,
    Exists,
    WouldCreate,
    Ambiguous,
}

#[derive(Debug, Default)]
struct Tally {
    contacts: HashMap<FindingKey, u64>,
    conversations: HashMap<FindingKey, u64>,
    /// Contacts that could not be looked up.
    failed: u64,
}

impl Tally {
    /// Counts what a finished task found.
    fn add(
        &mut self,
        done: Result<Option<(Finding, Finding)>, tokio::task::JoinError>,
    ) -> Result<()> {
        match done {
            Ok(Some((Finding::Skipped, _))) => self.failed += 1,
            Ok(Some((contact, conversation))) => {
                *self.contacts.entry(k(contact)).or_default() += 1;
                *self.conversations.entry(k(conversation)).or_default() += 1;
            }
            Ok(None) => {}
            Err(e) => bail!("a lookup task failed: {e}"),
        }
        Ok(())
    }
}

type FindingKey = u8;

fn k(f: Finding) -> FindingKey {
    f as u8
}

/// Runs the survey; the exit code is 0 when every contact and conversation exists or will be
/// created by the run, 1 when some are ambiguous or missing without `--create-contacts`.
pub async fn survey(settings: Settings, interrupt: &CancellationToken) -> Result<Ending> {
    let mut source = Source::new(&settings.input, settings.encoding)?.stop_on(interrupt.clone());
    let mut input = CsvInput::open(&mut source, settings.delimiter)?;
    let mapping = Mapping::new(input.header(), &settings.mapping)
        .with_context(|| settings.input.display().to_string())?;
    if !mapping.resolving() {
        bail!(
            "--resolve-only: no row needs a lookup (there is no contactPhone, contactEmail or locationId column, and no --location-id)"
        );
    }
    let ids = IdMap::open(&crate::resolve::idmap::path_for(&settings.results))?;

    // The distinct contacts, in input order, on disk (half a million contacts cost no memory):
    // each one's first row as a JSON line in a temp file, and by its hash whether some row of it
    // lacks a conversation ID.
    let dir = crate::results::line::folder_of(&settings.results);
    let temp = || {
        format!(
            "listing the input's contacts in a temp file in {}",
            dir.display()
        )
    };
    let mut seen = DiskMap::new(&dir);
    let mut list = BufWriter::new(tempfile::tempfile_in(&dir).with_context(temp)?);
    let (mut rows, mut invalid, mut contacts) = (0u64, 0u64, 0u64);
    while let Some(record) = input
        .next_record()
        .with_context(|| format!("reading {}", settings.input.display()))?
    {
        rows += 1;
        let row = match (&record.broken, mapping.map_row(record.cells, record.line)) {
            (None, Ok(row)) => row,
            _ => {
                invalid += 1;
                continue;
            }
        };
        let Some(lookup) = row.lookup else { continue };
        let m = row.message;
        let key = lookup.key(&m.contact_id);
        let h = contact_hash(&lookup.location_id, &key);
        let needs_conversation = u64::from(m.conversation_id.is_empty());
        match seen.get(h).with_context(temp)? {
            None => {
                seen.insert(h, needs_conversation).with_context(temp)?;
                let wanted = Wanted {
                    key,
                    lookup: *lookup,
                    contact_id: (!m.contact_id.is_empty()).then(|| m.contact_id.clone()),
                    needs_conversation: false,
                };
                serde_json::to_writer(&mut list, &wanted).with_context(temp)?;
                list.write_all(b"\n").with_context(temp)?;
                contacts += 1;
            }
            Some(0) if needs_conversation == 1 => {
                seen.insert(h, 1).with_context(temp)?;
            }
            Some(_) => {}
        }
    }
    let mut list = list
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(temp)?;
    list.rewind().with_context(temp)?;

    let shared = Arc::new(Shared {
        resolver: Resolver::new(&settings.base_url, settings.timeout, false, ids)?,
        auth: settings.auth.clone(),
        gate: Gate::new(
            settings.rate,
            settings.max_requests,
            settings.concurrency,
            interrupt.child_token(),
        ),
        policy: Policy::new(settings.max_retries, settings.backoff),
    });
    // At most --concurrency contacts looked up at once: a task is started as one ends.
    let mut tasks = tokio::task::JoinSet::new();
    let mut tally = Tally::default();
    for line in BufReader::new(list).lines() {
        let mut w: Wanted = serde_json::from_str(&line.with_context(temp)?).with_context(temp)?;
        w.needs_conversation = seen
            .get(contact_hash(&w.lookup.location_id, &w.key))
            .with_context(temp)?
            == Some(1);
        while tasks.len() >= settings.concurrency.max(1) {
            let done = tasks.join_next().await.expect("a task is running");
            tally.add(done)?;
        }
        if shared.gate.is_stopping() {
            break;
        }
        let shared = shared.clone();
        tasks.spawn(async move {
            if shared.gate.is_stopping() {
                return None;
            }
            match shared.one(&w).await {
                Ok(found) => Some(found),
                Err(Failure::Stop(reason)) => {
                    if let Some(reason) = reason {
                        shared.gate.stop_with(reason);
                    }
                    None
                }
                Err(Failure::Row { error, .. }) => {
                    tracing::warn!("{}: {error}", w.key);
                    Some((Finding::Skipped, Finding::Skipped))
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        tally.add(done)?;
    }
    let failed = tally.failed;
    if interrupt.is_cancelled() {
        shared.gate.stop_with(StopReason::Interrupted);
    }
    let count = |t: &HashMap<FindingKey, u64>, f: Finding| t.get(&k(f)).copied().unwrap_or(0);
    let c = |f| count(&tally.contacts, f);
    let v = |f| count(&tally.conversations, f);
    let create_word = if settings.create_contacts {
        "would be created"
    } else {
        "not found (the run fails their rows unless --create-contacts)"
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "resolve-only: {contacts} contact(s) in {rows} row(s) of {}{}",
        settings.input.display(),
        if invalid > 0 {
            format!(" ({invalid} invalid row(s) not counted)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  contacts       {} known from the ID map, {} exist, {} {create_word}, {} ambiguous (e-mail and phone find different contacts)",
        c(Finding::Known),
        c(Finding::Exists),
        c(Finding::WouldCreate),
        c(Finding::Ambiguous),
    );
    let _ = writeln!(
        out,
        "  conversations  {} known from the ID map, {} exist, {} would be created, {} ambiguous (more than one)",
        v(Finding::Known),
        v(Finding::Exists),
        v(Finding::WouldCreate),
        v(Finding::Ambiguous),
    );
    if failed > 0 {
        let _ = writeln!(
            out,
            "  {failed} contact(s) could not be looked up (see the log)"
        );
    }
    let _ = writeln!(
        out,
        "  {} lookup request(s); found IDs are kept in {}",
        shared.gate.requests(),
        shared.resolver.ids.path().display()
    );
    let stopped = shared.gate.reason();
    if let Some(reason) = &stopped {
        let _ = writeln!(out, "stopped early: {reason}.");
    }
    say(&out);
    let attention = c(Finding::Ambiguous)
        + v(Finding::Ambiguous)
        + failed
        + if settings.create_contacts {
            0
        } else {
            c(Finding::WouldCreate)
        };
    Ok(Ending {
        stopped,
        attention: attention + invalid,
        summary: None,
    })
}

/// What the survey's tasks share.
struct Shared {
    resolver: Resolver,
    gate: Gate,
    policy: Policy,
    auth: std::sync::Arc<crate::auth::Auth>,
}

impl Shared {
    /// The contact's and its conversation's findings.
    async fn one(&self, w: &Wanted) -> Result<(Finding, Finding), Failure> {
        let key = w.key.as_str();
        let env = Env {
            gate: &self.gate,
            policy: &self.policy,
            auth: &self.auth,
        };
        let r = &self.resolver;
        let location = w.lookup.location_id.as_str();
        let (contact, contact_finding) =
            match (&w.contact_id, stop_unread(r.ids.contact(location, key))?) {
                (Some(id), _) => (Some(id.clone()), Finding::Known),
                (None, Some(known)) => (Some(known.id), Finding::Known),
                (None, None) => {
                    let (email, phone) = (w.lookup.email.as_deref(), w.lookup.phone.as_deref());
                    let by_email = match email {
                        Some(e) => r.search_contact(location, Some(e), None, &env).await?,
                        None => None,
                    };
                    let by_phone = match phone {
                        Some(p) => r.search_contact(location, None, Some(p), &env).await?,
                        None => None,
                    };
                    match (by_email, by_phone) {
                        (Some(a), Some(b)) if a != b => (None, Finding::Ambiguous),
                        (Some(id), _) | (None, Some(id)) => {
                            let found = Known {
                                id: id.clone(),
                                origin: Origin::Found,
                            };
                            record(r, location, key, &found, None)?;
                            (Some(id), Finding::Exists)
                        }
                        (None, None) => (None, Finding::WouldCreate),
                    }
                }
            };
        let conversation = match (&contact, w.needs_conversation) {
            (_, false) => Finding::Skipped,
            (None, true) if contact_finding == Finding::WouldCreate => Finding::WouldCreate,
            (None, true) => Finding::Skipped,
            (Some(id), true) => match stop_unread(r.ids.conversation(location, id))? {
                Some(_) => Finding::Known,
                None => {
                    let found = r.search_conversations(location, id, &env).await?;
                    match found.as_slice() {
                        [] => Finding::WouldCreate,
                        [one] => {
                            let contact = Known {
                                id: id.clone(),
                                origin: if w.contact_id.is_some() {
                                    Origin::Given
                                } else {
                                    Origin::Found
                                },
                            };
                            let conversation = Known {
                                id: one.clone(),
                                origin: Origin::Found,
                            };
                            record(r, location, key, &contact, Some(&conversation))?;
                            Finding::Exists
                        }
                        _ => Finding::Ambiguous,
                    }
                }
            },
        };
        Ok((contact_finding, conversation))
    }
}

fn record(
    r: &Resolver,
    location: &str,
    key: &str,
    contact: &Known,
    conversation: Option<&Known>,
) -> Result<(), Failure> {
    r.record(location, key, contact, conversation)
}
