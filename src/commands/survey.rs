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
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::gate::Gate;
use crate::mapping::Mapping;
use crate::reader::CsvInput;
use crate::resolve::{Env, Failure, IdMap, Known, Lookup, Origin, Resolver};
use crate::retry::{Policy, StopReason};
use crate::source::Source;
use crate::summary::{Ending, say};

/// One distinct contact of the input.
struct Wanted {
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

    // The distinct contacts, in input order.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut wanted: HashMap<(String, String), Wanted> = HashMap::new();
    let (mut rows, mut invalid) = (0u64, 0u64);
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
        let id = (lookup.location_id.clone(), lookup.key(&m.contact_id));
        let entry = wanted.entry(id.clone()).or_insert_with(|| {
            order.push(id);
            Wanted {
                lookup: *lookup,
                contact_id: (!m.contact_id.is_empty()).then(|| m.contact_id.clone()),
                needs_conversation: false,
            }
        });
        entry.needs_conversation |= m.conversation_id.is_empty();
    }

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
    let permits = Arc::new(tokio::sync::Semaphore::new(settings.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let contacts = order.len();
    for id in order {
        let Some(w) = wanted.remove(&id) else {
            continue;
        };
        let (shared, permits) = (shared.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            if shared.gate.is_stopping() {
                return None;
            }
            let key = id.1;
            match shared.one(&key, &w).await {
                Ok(found) => Some(found),
                Err(Failure::Stop(reason)) => {
                    if let Some(reason) = reason {
                        shared.gate.stop_with(reason);
                    }
                    None
                }
                Err(Failure::Row { error, .. }) => {
                    tracing::warn!("{key}: {error}");
                    Some((Finding::Skipped, Finding::Skipped))
                }
            }
        });
    }
    let mut tally = Tally::default();
    let mut failed = 0u64;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Some((Finding::Skipped, _))) => failed += 1,
            Ok(Some((contact, conversation))) => {
                *tally.contacts.entry(k(contact)).or_default() += 1;
                *tally.conversations.entry(k(conversation)).or_default() += 1;
            }
            Ok(None) => {}
            Err(e) => bail!("a lookup task failed: {e}"),
        }
    }
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
    async fn one(&self, key: &str, w: &Wanted) -> Result<(Finding, Finding), Failure> {
        let env = Env {
            gate: &self.gate,
            policy: &self.policy,
            auth: &self.auth,
        };
        let r = &self.resolver;
        let location = w.lookup.location_id.as_str();
        let (contact, contact_finding) = match (&w.contact_id, r.ids.contact(location, key)) {
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
            (Some(id), true) => match r.ids.conversation(location, id) {
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
