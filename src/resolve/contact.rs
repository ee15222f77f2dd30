//! Finding a row's contact: `GET /contacts/search/duplicate` by phone and e-mail, and with
//! `--create-contacts` `POST /contacts/upsert` with only the fields that name the contact.

use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::json;

use super::{
    CONTACTS_VERSION, Env, Failure, Known, Lookup, Origin, Resolver, WithId, answer_unreadable,
};

impl Resolver {
    /// `GET /contacts/search/duplicate`: the contact's ID, if the location has it.
    pub async fn search_contact(
        &self,
        location: &str,
        email: Option<&str>,
        phone: Option<&str>,
        env: &Env<'_>,
    ) -> Result<Option<String>, Failure> {
        let mut url = self.url("/contacts/search/duplicate");
        {
            // Form encoding writes `+` as %2B and `@` as %40, as the spec asks.
            let mut q = url.query_pairs_mut();
            q.append_pair("locationId", location);
            if let Some(p) = phone {
                q.append_pair("number", p);
            }
            if let Some(e) = email {
                q.append_pair("email", e);
            }
        }
        let answer = self
            .call(env, "searching the contact", || {
                self.client
                    .get(url.clone())
                    .header("Version", CONTACTS_VERSION)
            })
            .await?;
        if !(200..300).contains(&answer.status) {
            return Err(answer.failure("searching the contact"));
        }
        #[derive(Deserialize)]
        struct Duplicate {
            #[serde(default)]
            contact: Option<WithId>,
        }
        match serde_json::from_slice::<Duplicate>(&answer.body) {
            Ok(d) => Ok(d.contact.map(|c| c.id).filter(|id| !id.is_empty())),
            Err(e) => Err(answer_unreadable(&answer, "the contact search", &e)),
        }
    }

    pub(super) async fn find_or_create_contact(
        &self,
        lookup: &Lookup,
        env: &Env<'_>,
    ) -> Result<Known, Failure> {
        let (email, phone) = (lookup.email.as_deref(), lookup.phone.as_deref());
        let who = || {
            [
                email.map(|e| format!("e-mail {e}")),
                phone.map(|p| format!("phone {p}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" or ")
        };
        let missing = || {
            Failure::row(format!(
                "no contact with {} in location {}: add it in HighLevel, or run with --create-contacts",
                who(),
                lookup.location_id
            ))
        };
        // A contact found missing in this run is not searched for again for each of its rows
        // (and counted once in the summary).
        let (location, key) = (lookup.location_id.as_str(), lookup.key(""));
        if !self.create_contacts && self.known_missing(location, &key)? {
            return Err(missing());
        }
        if let Some(id) = self
            .search_contact(&lookup.location_id, email, phone, env)
            .await?
        {
            self.counters.contacts_found.fetch_add(1, Ordering::Relaxed);
            return Ok(Known {
                id,
                origin: Origin::Found,
            });
        }
        if !self.create_contacts {
            if self.note_missing(location, &key)? {
                self.counters
                    .contacts_missing
                    .fetch_add(1, Ordering::Relaxed);
            }
            return Err(missing());
        }
        // Only the fields that name the contact: never `tags` (it replaces all tags).
        let mut body = json!({ "locationId": lookup.location_id });
        for (field, value) in [
            ("email", &lookup.email),
            ("phone", &lookup.phone),
            ("name", &lookup.name),
            ("firstName", &lookup.first_name),
            ("lastName", &lookup.last_name),
        ] {
            if let Some(v) = value {
                body[field] = json!(v);
            }
        }
        let body = body.to_string();
        let answer = self
            .call(env, "creating the contact", || {
                self.client
                    .post(self.url("/contacts/upsert"))
                    .header("Version", CONTACTS_VERSION)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
            })
            .await?;
        if !(200..300).contains(&answer.status) {
            return Err(answer.failure("creating the contact"));
        }
        #[derive(Deserialize)]
        struct Upserted {
            #[serde(default, rename = "new")]
            created: bool,
            contact: WithId,
        }
        match serde_json::from_slice::<Upserted>(&answer.body) {
            Ok(u) if !u.contact.id.is_empty() => {
                // `new: false`: the upsert matched a contact the search had not seen yet.
                let (counter, origin) = if u.created {
                    (&self.counters.contacts_created, Origin::Created)
                } else {
                    (&self.counters.contacts_found, Origin::Found)
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(Known {
                    id: u.contact.id,
                    origin,
                })
            }
            Ok(_) => Err(answer.failure("creating the contact: no contact ID in the answer")),
            Err(e) => Err(answer_unreadable(&answer, "the contact upsert", &e)),
        }
    }
}
