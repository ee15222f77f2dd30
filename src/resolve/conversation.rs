//! Finding a contact's conversation: `GET /conversations/search`, and if it has none
//! `POST /conversations/`, whose 400 "already exists" (search lags a create, FACTS pitfall 5)
//! sends it back to searching.

use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::json;

use super::{
    CONVERSATIONS_VERSION, Env, Failure, Known, Origin, Resolver, WithId, answer_unreadable,
};

impl Resolver {
    /// `GET /conversations/search`: the contact's conversations' IDs, in the API's order.
    pub async fn search_conversations(
        &self,
        location: &str,
        contact_id: &str,
        env: &Env<'_>,
    ) -> Result<Vec<String>, Failure> {
        let mut url = self.url("/conversations/search");
        url.query_pairs_mut()
            .append_pair("locationId", location)
            .append_pair("contactId", contact_id);
        let answer = self
            .call(env, "searching the conversation", || {
                self.client
                    .get(url.clone())
                    .header("Version", CONVERSATIONS_VERSION)
            })
            .await?;
        if !(200..300).contains(&answer.status) {
            return Err(answer.failure("searching the conversation"));
        }
        #[derive(Deserialize)]
        struct Found {
            #[serde(rename = "contactId", default)]
            contact_id: String,
            id: String,
        }
        #[derive(Deserialize)]
        struct Search {
            #[serde(default)]
            conversations: Vec<Found>,
        }
        match serde_json::from_slice::<Search>(&answer.body) {
            // Only this contact's: a search that ignored the filter must not misfile messages.
            Ok(s) => Ok(s
                .conversations
                .into_iter()
                .filter(|c| c.contact_id == contact_id && !c.id.is_empty())
                .map(|c| c.id)
                .collect()),
            Err(e) => Err(answer_unreadable(&answer, "the conversation search", &e)),
        }
    }

    pub(super) async fn find_or_create_conversation(
        &self,
        location: &str,
        contact_id: &str,
        env: &Env<'_>,
    ) -> Result<Known, Failure> {
        let mut conflicts = 0u32;
        loop {
            let found = self.search_conversations(location, contact_id, env).await?;
            if let Some(first) = found.first() {
                if found.len() > 1 {
                    self.counters
                        .conversations_ambiguous
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "contact {contact_id} has {} conversations; its messages go to the first the API lists, {first}",
                        found.len()
                    );
                }
                self.counters
                    .conversations_found
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(Known {
                    id: first.clone(),
                    origin: Origin::Found,
                });
            }
            if conflicts > env.policy.max_retries() {
                return Err(Failure::row(format!(
                    "the API says contact {contact_id} has a conversation, but {conflicts} searches did not find it"
                )));
            }
            let body = json!({ "locationId": location, "contactId": contact_id }).to_string();
            let answer = self
                .call(env, "creating the conversation", || {
                    self.client
                        .post(self.url("/conversations/"))
                        .header("Version", CONVERSATIONS_VERSION)
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                })
                .await?;
            #[derive(Deserialize)]
            struct Created {
                conversation: WithId,
            }
            #[derive(Deserialize)]
            struct Refused {
                #[serde(default)]
                message: serde_json::Value,
                #[serde(default, rename = "conversationId")]
                conversation_id: Option<String>,
            }
            match answer.status {
                200..=299 => {
                    return match serde_json::from_slice::<Created>(&answer.body) {
                        Ok(c) if !c.conversation.id.is_empty() => {
                            self.counters
                                .conversations_created
                                .fetch_add(1, Ordering::Relaxed);
                            Ok(Known {
                                id: c.conversation.id,
                                origin: Origin::Created,
                            })
                        }
                        Ok(_) => Err(answer.failure(
                            "creating the conversation: no conversation ID in the answer",
                        )),
                        Err(e) => Err(answer_unreadable(&answer, "the conversation create", &e)),
                    };
                }
                400 => {
                    let refused = serde_json::from_slice::<Refused>(&answer.body).ok();
                    let exists = refused.as_ref().is_some_and(|r| {
                        r.message
                            .to_string()
                            .to_lowercase()
                            .contains("already exists")
                    });
                    if !exists {
                        return Err(answer.failure("creating the conversation"));
                    }
                    // FACTS pitfall 5: search lags a create made a moment ago (by another
                    // client, or by an earlier attempt of ours whose answer was lost).
                    if let Some(id) = refused.and_then(|r| r.conversation_id)
                        && !id.is_empty()
                    {
                        self.counters
                            .conversations_found
                            .fetch_add(1, Ordering::Relaxed);
                        return Ok(Known {
                            id,
                            origin: Origin::Found,
                        });
                    }
                    conflicts += 1;
                    if conflicts > 1 {
                        let delay =
                            env.policy
                                .backoff()
                                .delay(conflicts - 1, None, fastrand::f64());
                        if env.gate.wait(delay).await.is_err() {
                            return Err(Failure::Stop(None));
                        }
                    }
                }
                _ => return Err(answer.failure("creating the conversation")),
            }
        }
    }
}
