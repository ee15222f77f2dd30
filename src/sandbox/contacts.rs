//! The sandbox's contact and conversation routes, for migrations that resolve IDs (issue 7): the
//! four endpoints of FACTS §4 with the same gate as the inbound route (token → budget → `Version`):
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
//! The routes parse and check the request, ask the store (`book`: matching, the search-miss
//! race, the seed and record files) and write the answer; each counts its request in
//! `/__stats`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::book::{Book, Contact, ContactUpsert, NotCreated, plain_phone};
use super::state::Shared;
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

/// A contact as the API's contact routes answer with it.
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

/// `GET /contacts/search/duplicate`: the contact with this e-mail, else this phone, or `null`.
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
            let found = book
                .find_contact(location, some("email"), some("number"))
                .map(|c| contact_json(&c));
            Ok((StatusCode::OK, json!({ "contact": found })))
        })
        .await
}

/// `POST /contacts/upsert`: updates the contact matched by e-mail, then phone, or creates one.
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
            let upsert = ContactUpsert {
                location_id: location,
                email,
                phone,
                first_name: text(&map, "firstName"),
                last_name: text(&map, "lastName"),
                name: text(&map, "name"),
                tags,
            };
            let (contact, created) = book.upsert(upsert, rng);
            let contact = contact_json(&contact);
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

/// `GET /conversations/search`: the location's conversations (of one contact, if given), at
/// most 20; one created moments ago may be missing (`--search-misses`).
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
            let mut listed: Vec<Value> = book
                .search_conversations(location, contact)
                .into_iter()
                .map(|(conversation, c)| {
                    let c = c.as_ref();
                    let field =
                        |f: fn(&Contact) -> Option<String>| c.and_then(f).unwrap_or_default();
                    json!({
                        "id": conversation.id,
                        "contactId": conversation.contact_id,
                        "locationId": conversation.location_id,
                        "lastMessageBody": "",
                        "lastMessageType": "TYPE_SMS",
                        "type": "TYPE_PHONE",
                        "unreadCount": 0,
                        "fullName": field(|c| c.name.clone().or_else(|| c.first_name.clone())),
                        "contactName": field(|c| c.name.clone().or_else(|| c.first_name.clone())),
                        "email": field(|c| c.email.clone()),
                        "phone": field(|c| c.phone.clone()),
                    })
                })
                .collect();
            listed.truncate(super::book::SEARCH_PAGE);
            let total = listed.len();
            Ok((
                StatusCode::OK,
                json!({ "conversations": listed, "total": total }),
            ))
        })
        .await
}

/// `POST /conversations/`: the contact's conversation, or 400 when it has one already.
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
            let conversation = match book.create_conversation(&location, &contact_id, rng) {
                Ok(conversation) => conversation,
                Err(NotCreated::NoContact) => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        json!(format!("Contact with id {contact_id} not found")),
                    ));
                }
                Err(NotCreated::Exists) => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        json!(format!(
                            "Conversation with the contact id:{contact_id} already exists!"
                        )),
                    ));
                }
            };
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
        let mut admitted = match self.admit_route(headers) {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
        let answer = route(&self.book, &mut admitted.rng);
        self.answer_route(answer, Counted::Other, &admitted)
    }
}
