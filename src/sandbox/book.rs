//! The sandbox's store of contacts and conversations ([`Book`]), for migrations that resolve IDs
//! (issue 7); the HTTP routes that read and change it are in `contacts`. Contacts are found by
//! e-mail first, then phone, within one location; each contact has at most one conversation.
//!
//! The race of pitfall 5 is reproduced on request: with `search_misses` N, the first N searches
//! for a contact after its conversation is created (or seeded) do not list it, as a lagging
//! search index would not.
//!
//! Contacts (and their conversations) can be seeded from a CSV file (`--contacts FILE`, columns
//! `id,locationId,email,phone,firstName,lastName,conversationId`, all but `locationId` optional).
//! Every contact and conversation the sandbox creates is appended to the contacts record
//! (`--record-contacts FILE`) as a JSON line before the answer leaves.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chance;
use super::record::Recorder;

/// One contact of the sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    /// The contact's ID, as the API would give it.
    pub id: String,
    /// The sub-account the contact belongs to.
    pub location_id: String,
    /// Lower-case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Without spaces, dashes, dots or parentheses (`plain_phone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// `firstName`, as seeded or upserted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// `lastName`, as seeded or upserted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// `name`, as upserted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tags an upsert set (the importer must never send any).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tags: Vec<String>,
}

/// One conversation of the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    /// The conversation's ID.
    pub id: String,
    /// The sub-account of the conversation and its contact.
    pub location_id: String,
    /// The contact whose conversation it is (one per contact).
    pub contact_id: String,
}

/// Everything the sandbox knows of contacts and conversations, for tests and `/__stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// In the order they were seeded or created.
    pub contacts: Vec<Contact>,
    /// Sorted by ID.
    pub conversations: Vec<Conversation>,
}

/// The most conversations one search lists (the route's page).
pub const SEARCH_PAGE: usize = 20;

/// The contacts and conversations, behind one lock held only for map operations.
#[derive(Default)]
pub struct Book {
    state: Mutex<Entries>,
    search_misses: u32,
    recorder: Option<Recorder>,
    /// What the lookup routes count, for `/__stats`.
    pub counters: LookupCounters,
}

#[derive(Default)]
struct Entries {
    contacts: Vec<Contact>,
    /// (location, lower-case e-mail) → index in `contacts`.
    by_email: HashMap<(String, String), usize>,
    /// (location, E.164 phone) → index.
    by_phone: HashMap<(String, String), usize>,
    /// Contact ID → index (IDs are unique across locations).
    by_id: HashMap<String, usize>,
    /// (location, contact ID) → its conversation.
    conversations: HashMap<(String, String), Held>,
    /// Conversation ID → its key in `conversations`.
    conversation_by_id: HashMap<String, (String, String)>,
    /// Location → the contacts that have a conversation there, in the order they got it: what a
    /// search without `contactId` lists, without scanning the others' locations.
    listed: HashMap<String, Vec<String>>,
}

struct Held {
    conversation: Conversation,
    /// Searches that will still miss it (pitfall 5).
    misses_left: u32,
}

/// Counters of the lookup endpoints, served in `/__stats`.
#[derive(Debug, Default)]
pub struct LookupCounters {
    /// `GET /contacts/search/duplicate` requests past the gate.
    pub contact_searches: AtomicU64,
    /// `POST /contacts/upsert` requests past the gate.
    pub contact_upserts: AtomicU64,
    /// Upserts that created a contact.
    pub contacts_created: AtomicU64,
    /// `GET /conversations/search` requests past the gate.
    pub conversation_searches: AtomicU64,
    /// `POST /conversations/` requests past the gate.
    pub conversation_creates: AtomicU64,
    /// Conversations created.
    pub conversations_created: AtomicU64,
    /// `POST /conversations/` answered "already exists".
    pub conversation_conflicts: AtomicU64,
}

/// What an upsert says about a contact: `None` leaves a field as it is (or empty, for a new
/// contact). The e-mail is lower-case and the phone plain (`plain_phone`) already.
pub struct ContactUpsert {
    /// The location the contact is looked for and created in.
    pub location_id: String,
    /// Matched first.
    pub email: Option<String>,
    /// Matched when the e-mail finds nothing.
    pub phone: Option<String>,
    /// `firstName`: set when given.
    pub first_name: Option<String>,
    /// `lastName`: set when given.
    pub last_name: Option<String>,
    /// `name`: set when given.
    pub name: Option<String>,
    /// Replaces every tag of the contact when given.
    pub tags: Option<Vec<String>>,
}

/// Why [`Book::create_conversation`] created nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum NotCreated {
    /// No contact of that ID in that location.
    NoContact,
    /// The contact has its conversation already.
    Exists,
}

impl Book {
    /// A book seeded from `seed` (if given), recording creations to `record` (if given).
    pub fn open(
        seed: Option<&Path>,
        search_misses: u32,
        record: Option<&Path>,
    ) -> anyhow::Result<Book> {
        let book = Book {
            search_misses,
            recorder: record.map(Recorder::open).transpose()?,
            ..Book::default()
        };
        if let Some(path) = seed {
            book.seed(path)?;
        }
        Ok(book)
    }

    fn seed(&self, path: &Path) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Row {
            #[serde(default)]
            id: String,
            location_id: String,
            #[serde(default)]
            email: String,
            #[serde(default)]
            phone: String,
            #[serde(default)]
            first_name: String,
            #[serde(default)]
            last_name: String,
            #[serde(default)]
            conversation_id: String,
        }
        let context = || format!("reading the contacts file {}", path.display());
        let mut reader = csv::Reader::from_path(path).with_context(context)?;
        let mut rng = fastrand::Rng::new();
        let mut state = self.lock();
        for (i, row) in reader.deserialize::<Row>().enumerate() {
            let row = row.with_context(|| format!("{}, row {}", context(), i + 1))?;
            if row.location_id.trim().is_empty() {
                bail!("{}, row {}: locationId is empty", context(), i + 1);
            }
            let some = |s: String| (!s.trim().is_empty()).then(|| s.trim().to_owned());
            let contact = Contact {
                id: some(row.id).unwrap_or_else(|| chance::new_id(&mut rng)),
                location_id: row.location_id.trim().to_owned(),
                email: some(row.email).map(|e| e.to_lowercase()),
                phone: some(row.phone).map(|p| plain_phone(&p)),
                first_name: some(row.first_name),
                last_name: some(row.last_name),
                ..Contact::default()
            };
            if let Some(conversation) = some(row.conversation_id) {
                state.hold(
                    Conversation {
                        id: conversation,
                        location_id: contact.location_id.clone(),
                        contact_id: contact.id.clone(),
                    },
                    self.search_misses,
                );
            }
            state.insert(contact);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A poisoned lock only means a request panicked mid-update of plain maps.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The duplicate search: the contact with this e-mail (any case), else this phone.
    pub fn find_contact(
        &self,
        location: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Option<Contact> {
        let state = self.lock();
        state
            .find(location, email, phone)
            .map(|i| state.contacts[i].clone())
    }

    /// Updates the contact `upsert` matches (e-mail first, then phone) or creates one. Returns
    /// the contact as it now is, and whether it was created.
    pub fn upsert(&self, upsert: ContactUpsert, rng: &mut fastrand::Rng) -> (Contact, bool) {
        let mut state = self.lock();
        let found = state.find(
            &upsert.location_id,
            upsert.email.as_deref(),
            upsert.phone.as_deref(),
        );
        let (i, created) = match found {
            Some(i) => {
                // Update: fields given replace what is there; `tags` replaces all tags.
                let mut c = state.contacts[i].clone();
                c.email = c.email.or(upsert.email);
                c.phone = c.phone.or(upsert.phone);
                c.first_name = upsert.first_name.or(c.first_name);
                c.last_name = upsert.last_name.or(c.last_name);
                c.name = upsert.name.or(c.name);
                if let Some(tags) = upsert.tags {
                    c.tags = tags;
                }
                state.index(i, &c);
                state.contacts[i] = c;
                (i, false)
            }
            None => {
                let contact = Contact {
                    id: chance::new_id(rng),
                    location_id: upsert.location_id,
                    email: upsert.email,
                    phone: upsert.phone,
                    first_name: upsert.first_name,
                    last_name: upsert.last_name,
                    name: upsert.name,
                    tags: upsert.tags.unwrap_or_default(),
                };
                self.counters.contacts_created.fetch_add(1, Relaxed);
                (state.insert(contact), true)
            }
        };
        (state.contacts[i].clone(), created)
    }

    /// The conversations of `location` (of one contact, if given) that a search lists now, each
    /// with its contact. One still within its `search_misses` is left out, and has one miss
    /// fewer to go (pitfall 5).
    pub fn search_conversations(
        &self,
        location: &str,
        contact: Option<&str>,
    ) -> Vec<(Conversation, Option<Contact>)> {
        let mut state = self.lock();
        let state = &mut *state;
        let keys: Vec<String> = match contact {
            Some(c) => vec![c.to_owned()],
            None => state.listed.get(location).cloned().unwrap_or_default(),
        };
        let mut listed = Vec::new();
        for contact_id in keys {
            // The route lists 20 at most: a search stops there instead of walking them all.
            if listed.len() == SEARCH_PAGE {
                break;
            }
            let key = (location.to_owned(), contact_id);
            let Some(held) = state.conversations.get_mut(&key) else {
                continue;
            };
            if held.misses_left > 0 {
                held.misses_left -= 1;
                continue;
            }
            let owner = state
                .by_id
                .get(&key.1)
                .map(|&i| &state.contacts[i])
                .filter(|c| c.location_id == location)
                .cloned();
            listed.push((held.conversation.clone(), owner));
        }
        listed
    }

    /// The location of the conversation `id`, if the book holds it.
    pub fn location_of_conversation(&self, id: &str) -> Option<String> {
        self.lock()
            .conversation_by_id
            .get(id)
            .map(|(location, _)| location.clone())
    }

    /// Creates the conversation of a contact: refused when the contact does not exist in
    /// `location` or already has one (one conversation per contact).
    pub fn create_conversation(
        &self,
        location: &str,
        contact_id: &str,
        rng: &mut fastrand::Rng,
    ) -> Result<Conversation, NotCreated> {
        let mut state = self.lock();
        if state
            .by_id
            .get(contact_id)
            .is_none_or(|&i| state.contacts[i].location_id != location)
        {
            return Err(NotCreated::NoContact);
        }
        let key = (location.to_owned(), contact_id.to_owned());
        if state.conversations.contains_key(&key) {
            self.counters.conversation_conflicts.fetch_add(1, Relaxed);
            return Err(NotCreated::Exists);
        }
        let conversation = Conversation {
            id: chance::new_id(rng),
            location_id: location.to_owned(),
            contact_id: contact_id.to_owned(),
        };
        state.hold(conversation.clone(), self.search_misses);
        drop(state);
        self.counters.conversations_created.fetch_add(1, Relaxed);
        Ok(conversation)
    }

    /// Every contact and conversation, conversations sorted by ID.
    pub fn directory(&self) -> Directory {
        let state = self.lock();
        let mut conversations: Vec<Conversation> = state
            .conversations
            .values()
            .map(|h| h.conversation.clone())
            .collect();
        conversations.sort_by(|a, b| a.id.cmp(&b.id));
        Directory {
            contacts: state.contacts.clone(),
            conversations,
        }
    }

    /// Appends `line` to the contacts record (`--record-contacts`), if there is one.
    pub(super) fn record(&self, line: &Value) {
        if let Some(recorder) = &self.recorder
            && let Err(e) = recorder.append_line(line)
        {
            tracing::error!("sandbox: writing the contacts record failed: {e}");
        }
    }

    /// Syncs the contacts record to disk, at shutdown.
    pub fn sync(&self) -> std::io::Result<()> {
        self.recorder.as_ref().map_or(Ok(()), Recorder::sync)
    }
}

impl Entries {
    fn insert(&mut self, contact: Contact) -> usize {
        let i = self.contacts.len();
        self.index(i, &contact);
        self.by_id.entry(contact.id.clone()).or_insert(i);
        self.contacts.push(contact);
        i
    }

    /// Keeps `conversation`, indexed by its contact, its ID and its location.
    fn hold(&mut self, conversation: Conversation, misses_left: u32) {
        let key = (
            conversation.location_id.clone(),
            conversation.contact_id.clone(),
        );
        self.conversation_by_id
            .insert(conversation.id.clone(), key.clone());
        let held = Held {
            conversation,
            misses_left,
        };
        if self.conversations.insert(key.clone(), held).is_none() {
            self.listed.entry(key.0).or_default().push(key.1);
        }
    }

    fn index(&mut self, i: usize, contact: &Contact) {
        if let Some(e) = &contact.email {
            self.by_email
                .entry((contact.location_id.clone(), e.clone()))
                .or_insert(i);
        }
        if let Some(p) = &contact.phone {
            self.by_phone
                .entry((contact.location_id.clone(), p.clone()))
                .or_insert(i);
        }
    }

    /// E-mail first, then phone: the duplicate search's and upsert's priority.
    fn find(&self, location: &str, email: Option<&str>, phone: Option<&str>) -> Option<usize> {
        let by = |map: &HashMap<(String, String), usize>, v: &str| {
            map.get(&(location.to_owned(), v.to_owned())).copied()
        };
        email
            .and_then(|e| by(&self.by_email, &e.to_lowercase()))
            .or_else(|| phone.and_then(|p| by(&self.by_phone, &plain_phone(p))))
    }
}

/// A phone as stored and matched: without spaces, dashes, dots or parentheses.
pub fn plain_phone(p: &str) -> String {
    p.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(location: &str, email: &str) -> ContactUpsert {
        ContactUpsert {
            location_id: location.to_owned(),
            email: Some(email.to_owned()),
            phone: None,
            first_name: None,
            last_name: None,
            name: None,
            tags: None,
        }
    }

    /// The indexes answer what a scan of everything would: per contact, per ID, per location,
    /// and a contact of another location is neither listed nor given a conversation.
    #[test]
    fn searches_find_by_index_what_a_scan_would() {
        let book = Book::open(None, 0, None).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut made = Vec::new();
        for i in 0..30 {
            let location = if i % 3 == 0 { "B" } else { "A" };
            let (contact, created) = book.upsert(upsert(location, &format!("c{i}@x.io")), &mut rng);
            assert!(created);
            let conversation = book
                .create_conversation(location, &contact.id, &mut rng)
                .unwrap();
            made.push((location, contact, conversation));
        }
        let (_, b_contact, _) = &made[0];
        assert_eq!(
            book.create_conversation("A", &b_contact.id, &mut rng),
            Err(NotCreated::NoContact)
        );
        assert_eq!(
            book.create_conversation("B", &b_contact.id, &mut rng),
            Err(NotCreated::Exists)
        );
        for (location, contact, conversation) in &made {
            let found = book.search_conversations(location, Some(&contact.id));
            assert_eq!(found.len(), 1);
            assert_eq!(&found[0].0, conversation);
            assert_eq!(found[0].1.as_ref(), Some(contact));
            let other = if *location == "A" { "B" } else { "A" };
            assert!(
                book.search_conversations(other, Some(&contact.id))
                    .is_empty()
            );
            assert_eq!(
                book.location_of_conversation(&conversation.id).as_deref(),
                Some(*location)
            );
        }
        assert_eq!(book.location_of_conversation("nope"), None);
        // Without a contact: the location's conversations in creation order, one page at most.
        let listed: Vec<String> = book
            .search_conversations("A", None)
            .into_iter()
            .map(|(c, _)| c.id)
            .collect();
        let a: Vec<String> = made
            .iter()
            .filter(|(l, ..)| *l == "A")
            .map(|(_, _, c)| c.id.clone())
            .collect();
        assert_eq!(listed, a[..SEARCH_PAGE]);
        assert_eq!(book.search_conversations("B", None).len(), 10);
    }

    /// A conversation created moments ago is missed by the next `search_misses` searches.
    #[test]
    fn a_new_conversation_is_missed_then_found() {
        let book = Book::open(None, 2, None).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let (contact, _) = book.upsert(upsert("A", "a@x.io"), &mut rng);
        book.create_conversation("A", &contact.id, &mut rng)
            .unwrap();
        assert!(book.search_conversations("A", Some(&contact.id)).is_empty());
        assert!(book.search_conversations("A", None).is_empty());
        assert_eq!(book.search_conversations("A", Some(&contact.id)).len(), 1);
    }
}
