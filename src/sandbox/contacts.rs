//! The sandbox's contacts and conversations, for migrations that resolve IDs (issue 7): the four
//! endpoints of FACTS §4 with the same gate as the inbound route (token → budget → `Version`):
//!
//! - `GET /contacts/search/duplicate?locationId&number&email`: 200 `{contact: {…} | null}`.
//!   The query is form-decoded as the real server does, so a `+` sent unencoded arrives as a
//!   space and finds nothing (the spec asks for `%2B`). E-mail is matched first, then phone.
//! - `POST /contacts/upsert`: `UpsertContactDto`; unknown properties and a missing `locationId`
//!   are 422. Matches by e-mail, then phone (an e-mail match wins even when the phone belongs to
//!   another contact, as pitfall 10 describes); updates it (`new: false`) or creates one
//!   (`new: true`).
//! - `GET /conversations/search?locationId&contactId`: 200 `{conversations, total}`.
//! - `POST /conversations/` `{locationId, contactId}`: 201 `{success, conversation}`; 400
//!   "Conversation with the contact id:… already exists!" when the contact has one (one
//!   conversation per contact).
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
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::api::{self, Shared};
use super::chance;
use super::record::Recorder;
use super::stats::Counted;

/// The properties of `UpsertContactDto` (`api/apps/contacts.json`).
const UPSERT_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "name",
    "email",
    "locationId",
    "gender",
    "phone",
    "address1",
    "city",
    "state",
    "postalCode",
    "website",
    "timezone",
    "dnd",
    "dndSettings",
    "inboundDndSettings",
    "tags",
    "customFields",
    "source",
    "dateOfBirth",
    "country",
    "companyName",
    "assignedTo",
    "createNewIfDuplicateAllowed",
];

/// One contact of the sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub id: String,
    pub location_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
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
    pub id: String,
    pub location_id: String,
    pub contact_id: String,
}

/// Everything the sandbox knows of contacts and conversations, for tests and `/__stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pub contacts: Vec<Contact>,
    pub conversations: Vec<Conversation>,
}

/// The contacts and conversations, behind one lock held only for map operations.
#[derive(Default)]
pub struct Book {
    state: Mutex<Entries>,
    search_misses: u32,
    recorder: Option<Recorder>,
    pub counters: LookupCounters,
}

#[derive(Default)]
struct Entries {
    contacts: Vec<Contact>,
    /// (location, lower-case e-mail) → index in `contacts`.
    by_email: HashMap<(String, String), usize>,
    /// (location, E.164 phone) → index.
    by_phone: HashMap<(String, String), usize>,
    /// (location, contact ID) → its conversation.
    conversations: HashMap<(String, String), Held>,
}

struct Held {
    conversation: Conversation,
    /// Searches that will still miss it (pitfall 5).
    misses_left: u32,
}

/// Counters of the lookup endpoints, served in `/__stats`.
#[derive(Debug, Default)]
pub struct LookupCounters {
    pub contact_searches: AtomicU64,
    pub contact_upserts: AtomicU64,
    pub contacts_created: AtomicU64,
    pub conversation_searches: AtomicU64,
    pub conversation_creates: AtomicU64,
    pub conversations_created: AtomicU64,
    /// `POST /conversations/` answered "already exists".
    pub conversation_conflicts: AtomicU64,
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
                state.conversations.insert(
                    (contact.location_id.clone(), contact.id.clone()),
                    Held {
                        conversation: Conversation {
                            id: conversation,
                            location_id: contact.location_id.clone(),
                            contact_id: contact.id.clone(),
                        },
                        misses_left: self.search_misses,
                    },
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

    fn record(&self, line: &Value) {
        if let Some(recorder) = &self.recorder
            && let Err(e) = recorder.append_line(line)
        {
            tracing::error!("sandbox: writing the contacts record failed: {e}");
        }
    }

    pub fn sync(&self) -> std::io::Result<()> {
        self.recorder.as_ref().map_or(Ok(()), Recorder::sync)
    }
}

impl Entries {
    fn insert(&mut self, contact: Contact) -> usize {
        let i = self.contacts.len();
        self.index(i, &contact);
        self.contacts.push(contact);
        i
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
fn plain_phone(p: &str) -> String {
    p.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect()
}

fn contact_json(c: &Contact) -> Value {
    json!({
        "id": c.id,
        "locationId": c.location_id,
        "email": c.email,
        "phone": c.phone,
        "firstName": c.first_name,
        "lastName": c.last_name,
        "contactName": c.name.clone().or_else(|| {
            let full = [c.first_name.as_deref(), c.last_name.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            (!full.is_empty()).then_some(full)
        }),
        "tags": c.tags,
    })
}

/// The query parameters, form-decoded (a raw `+` becomes a space), or the 422 for unknown ones.
fn query(uri: &Uri, allowed: &[&str]) -> Result<HashMap<String, String>, Vec<String>> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if allowed.contains(&k.as_ref()) {
            out.insert(k.into_owned(), v.into_owned());
        } else {
            errors.push(format!("property {k} should not exist"));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A JSON object body, or the API's 400 / 422.
fn object(raw: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, (StatusCode, Value)> {
    let map = match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(map)) => map,
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                json!("Request body must be a JSON object"),
            ));
        }
    };
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| format!("property {k} should not exist"))
        .collect();
    if unknown.is_empty() {
        Ok(map)
    } else {
        Err((StatusCode::UNPROCESSABLE_ENTITY, json!(unknown)))
    }
}

/// `locationId` / `contactId` as class-validator checks a required string.
fn required(name: &str, value: Option<&Value>, errors: &mut Vec<String>) -> String {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            errors.push(format!("{name} should not be empty"));
            errors.push(format!("{name} must be a string"));
            String::new()
        }
        Some(_) => {
            errors.push(format!("{name} must be a string"));
            String::new()
        }
    }
}

fn text(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// What a lookup route answers, before the gate's headers are put on.
type Answer = Result<(StatusCode, Value), (StatusCode, Value)>;

pub async fn search_duplicate(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    shared
        .lookup(&headers, |book, _| {
            book.counters.contact_searches.fetch_add(1, Relaxed);
            let q = query(&uri, &["locationId", "number", "email"])
                .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, json!(e)))?;
            let location = q.get("locationId").map(|s| s.trim()).unwrap_or_default();
            if location.is_empty() {
                return Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!(["locationId should not be empty"]),
                ));
            }
            let some = |k: &str| q.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
            let state = book.lock();
            let found = state
                .find(location, some("email"), some("number"))
                .map(|i| contact_json(&state.contacts[i]));
            Ok((StatusCode::OK, json!({ "contact": found })))
        })
        .await
}

pub async fn upsert(State(shared): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> Response {
    shared
        .lookup(&headers, |book, rng| {
            book.counters.contact_upserts.fetch_add(1, Relaxed);
            let map = object(&raw, UPSERT_FIELDS)?;
            let mut errors = Vec::new();
            let location = required("locationId", map.get("locationId"), &mut errors);
            let email = text(&map, "email").map(|e| e.to_lowercase());
            if let Some(e) = &email
                && !e.contains('@')
            {
                errors.push("email must be an email".to_owned());
            }
            if !errors.is_empty() {
                return Err((StatusCode::UNPROCESSABLE_ENTITY, json!(errors)));
            }
            let phone = text(&map, "phone").map(|p| plain_phone(&p));
            let tags: Option<Vec<String>> = map.get("tags").and_then(|t| {
                t.as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
            });
            let mut state = book.lock();
            let (i, created) = match state.find(&location, email.as_deref(), phone.as_deref()) {
                Some(i) => {
                    // Update: fields given replace what is there; `tags` replaces all tags.
                    let mut c = state.contacts[i].clone();
                    c.email = c.email.or(email);
                    c.phone = c.phone.or(phone);
                    c.first_name = text(&map, "firstName").or(c.first_name);
                    c.last_name = text(&map, "lastName").or(c.last_name);
                    c.name = text(&map, "name").or(c.name);
                    if let Some(tags) = tags {
                        c.tags = tags;
                    }
                    state.index(i, &c);
                    state.contacts[i] = c;
                    (i, false)
                }
                None => {
                    let contact = Contact {
                        id: chance::new_id(rng),
                        location_id: location,
                        email,
                        phone,
                        first_name: text(&map, "firstName"),
                        last_name: text(&map, "lastName"),
                        name: text(&map, "name"),
                        tags: tags.unwrap_or_default(),
                    };
                    book.counters.contacts_created.fetch_add(1, Relaxed);
                    (state.insert(contact), true)
                }
            };
            let contact = contact_json(&state.contacts[i]);
            drop(state);
            if created {
                book.record(
                    &json!({"created": "contact", "contact": contact, "body": Value::Object(map)}),
                );
            }
            Ok((
                StatusCode::OK,
                json!({ "new": created, "contact": contact }),
            ))
        })
        .await
}

pub async fn search_conversations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    shared
        .lookup(&headers, |book, _| {
            book.counters.conversation_searches.fetch_add(1, Relaxed);
            // The filters a client may use; only these two are applied.
            let q = query(
                &uri,
                &[
                    "locationId",
                    "contactId",
                    "limit",
                    "sort",
                    "sortBy",
                    "status",
                    "query",
                    "id",
                ],
            )
            .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, json!(e)))?;
            let location = q.get("locationId").map(|s| s.trim()).unwrap_or_default();
            if location.is_empty() {
                return Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!(["locationId should not be empty"]),
                ));
            }
            let contact = q
                .get("contactId")
                .map(|s| s.trim())
                .filter(|s| !s.is_empty());
            let mut state = book.lock();
            let mut listed = Vec::new();
            let contacts: HashMap<String, Contact> = state
                .contacts
                .iter()
                .filter(|c| c.location_id == location)
                .map(|c| (c.id.clone(), c.clone()))
                .collect();
            for ((loc, contact_id), held) in state.conversations.iter_mut() {
                if loc != location || contact.is_some_and(|c| c != contact_id) {
                    continue;
                }
                if held.misses_left > 0 {
                    held.misses_left -= 1;
                    continue;
                }
                let c = contacts.get(contact_id);
                let field = |f: fn(&Contact) -> Option<String>| c.and_then(f).unwrap_or_default();
                listed.push(json!({
                    "id": held.conversation.id,
                    "contactId": contact_id,
                    "locationId": loc,
                    "lastMessageBody": "",
                    "lastMessageType": "TYPE_SMS",
                    "type": "TYPE_PHONE",
                    "unreadCount": 0,
                    "fullName": field(|c| c.name.clone().or_else(|| c.first_name.clone())),
                    "contactName": field(|c| c.name.clone().or_else(|| c.first_name.clone())),
                    "email": field(|c| c.email.clone()),
                    "phone": field(|c| c.phone.clone()),
                }));
            }
            listed.truncate(20);
            let total = listed.len();
            Ok((
                StatusCode::OK,
                json!({ "conversations": listed, "total": total }),
            ))
        })
        .await
}

pub async fn create_conversation(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    shared
        .lookup(&headers, |book, rng| {
            book.counters.conversation_creates.fetch_add(1, Relaxed);
            let map = object(&raw, &["locationId", "contactId"])?;
            let mut errors = Vec::new();
            let location = required("locationId", map.get("locationId"), &mut errors);
            let contact_id = required("contactId", map.get("contactId"), &mut errors);
            if !errors.is_empty() {
                return Err((StatusCode::UNPROCESSABLE_ENTITY, json!(errors)));
            }
            let mut state = book.lock();
            if !state
                .contacts
                .iter()
                .any(|c| c.id == contact_id && c.location_id == location)
            {
                return Err((
                    StatusCode::BAD_REQUEST,
                    json!(format!("Contact with id {contact_id} not found")),
                ));
            }
            let key = (location.clone(), contact_id.clone());
            if state.conversations.contains_key(&key) {
                book.counters.conversation_conflicts.fetch_add(1, Relaxed);
                return Err((
                    StatusCode::BAD_REQUEST,
                    json!(format!(
                        "Conversation with the contact id:{contact_id} already exists!"
                    )),
                ));
            }
            let conversation = Conversation {
                id: chance::new_id(rng),
                location_id: location,
                contact_id,
            };
            state.conversations.insert(
                key,
                Held {
                    conversation: conversation.clone(),
                    misses_left: book.search_misses,
                },
            );
            drop(state);
            book.counters.conversations_created.fetch_add(1, Relaxed);
            book.record(&json!({"created": "conversation", "conversation": conversation}));
            let now = format!("{:.3}", jiff::Timestamp::now());
            Ok((
                StatusCode::CREATED,
                json!({
                    "success": true,
                    "conversation": {
                        "id": conversation.id,
                        "dateUpdated": now,
                        "dateAdded": now,
                        "deleted": false,
                        "contactId": conversation.contact_id,
                        "locationId": conversation.location_id,
                        "lastMessageDate": now,
                    }
                }),
            ))
        })
        .await
}

impl Shared {
    /// The gate of every lookup route (token → budget → `Version`), then `route` on the book,
    /// answered with the rate headers and a `traceId`.
    async fn lookup(
        &self,
        headers: &HeaderMap,
        route: impl FnOnce(&Book, &mut fastrand::Rng) -> Answer,
    ) -> Response {
        let _in_flight = self.counters.enter();
        let mut rng = self.request_rng();
        let trace_id = chance::new_trace_id(&mut rng);
        let rate = match self.gate(headers, &trace_id) {
            Err(refused) => return *refused,
            Ok(rate) => rate,
        };
        let answer = route(&self.book, &mut rng);
        let (status, mut body) = match answer {
            Ok(ok) => {
                self.counters.count(Counted::Other);
                ok
            }
            Err((status, message)) => {
                self.counters.count(match status {
                    StatusCode::UNPROCESSABLE_ENTITY => Counted::Unprocessable,
                    StatusCode::BAD_REQUEST => Counted::BadRequest,
                    _ => Counted::Other,
                });
                let error = status.canonical_reason().unwrap_or("Error");
                (
                    status,
                    json!({"statusCode": status.as_u16(), "message": message, "error": error}),
                )
            }
        };
        body["traceId"] = json!(trace_id);
        let mut response = api::json_response(status, &body);
        api::put_rate_headers(response.headers_mut(), rate);
        response
    }
}
