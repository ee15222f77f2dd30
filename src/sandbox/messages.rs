//! The sandbox's memory of what it stored ([`Messages`]), for the read endpoints (`reads`): each
//! stored message as `GetMessageResponseDto` gives it, found by ID, listed per conversation
//! newest first (paged back with `lastMessageId`), or exported with filters and a cursor.
//!
//! `dateAdded` is the request's `date` when `--backdate on` (the default) and it has one, else
//! the time it arrived. Optional (`--reads off`): a benchmark of millions of messages keeps
//! nothing.
//!
//! One lock, held only for map operations and the sorting of one conversation's messages.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

/// One stored message, as the read endpoints give it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub id: String,
    pub conversation_id: String,
    pub contact_id: String,
    pub location_id: String,
    /// The inbound `type` it was posted with.
    pub kind: String,
    pub direction: String,
    /// `message`, else `html`, else empty.
    pub body: String,
    pub attachments: Vec<String>,
    pub conversation_provider_id: Option<String>,
    pub date_added: Timestamp,
    /// An e-mail's `emailMessageId` (the one its answer gave it).
    pub email_message_id: Option<String>,
    /// Arrival order: ties of `date_added` are broken by it.
    seq: u64,
}

impl StoredMessage {
    /// From an accepted inbound body.
    pub fn new(
        id: String,
        body: &Map<String, Value>,
        location_id: String,
        date_added: Timestamp,
    ) -> StoredMessage {
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        StoredMessage {
            id,
            conversation_id: text("conversationId").unwrap_or_default(),
            contact_id: text("contactId").unwrap_or_default(),
            location_id,
            kind: text("type").unwrap_or_default(),
            direction: text("direction").unwrap_or_else(|| "outbound".into()),
            body: text("message").or_else(|| text("html")).unwrap_or_default(),
            attachments: body
                .get("attachments")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            conversation_provider_id: text("conversationProviderId"),
            date_added,
            email_message_id: None,
            seq: 0,
        }
    }

    /// `GetMessageResponseDto`.
    pub fn to_json(&self) -> Value {
        let (message_type, number) = crate::readback::kinds::read_kind(&self.kind);
        let mut v = json!({
            "id": self.id,
            "type": number,
            "messageType": message_type,
            "locationId": self.location_id,
            "contactId": self.contact_id,
            "conversationId": self.conversation_id,
            "dateAdded": format!("{:.3}", self.date_added),
            "body": self.body,
            "direction": self.direction,
            "status": "delivered",
            "contentType": "text/plain",
            "attachments": self.attachments,
            "source": "api",
        });
        if let Some(p) = &self.conversation_provider_id {
            v["conversationProviderId"] = json!(p);
        }
        v
    }
}

/// What an export asks for (`GET /conversations/messages/export`).
#[derive(Clone, Debug, Default)]
pub struct ExportFilter {
    pub location_id: String,
    pub conversation_id: Option<String>,
    pub contact_id: Option<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    /// `channel=Email` lists e-mails; without a channel they are left out, as the spec says.
    pub email: bool,
    pub ascending: bool,
}

/// One page of a list.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    /// Messages after this page (export: the cursor's offset).
    pub more: bool,
    /// Everything that matched (export's `total`).
    pub total: usize,
}

#[derive(Default)]
struct Inner {
    all: Vec<StoredMessage>,
    by_id: HashMap<String, usize>,
    by_conversation: HashMap<String, Vec<usize>>,
}

/// Every stored message, in memory.
#[derive(Default)]
pub struct Messages {
    inner: Mutex<Inner>,
}

impl Messages {
    pub fn add(&self, mut message: StoredMessage) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let i = inner.all.len();
        message.seq = i as u64;
        inner.by_id.insert(message.id.clone(), i);
        inner
            .by_conversation
            .entry(message.conversation_id.clone())
            .or_default()
            .push(i);
        inner.all.push(message);
    }

    pub fn get(&self, id: &str) -> Option<StoredMessage> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_id.get(id).map(|&i| inner.all[i].clone())
    }

    /// `GET /conversations/{id}/messages`: newest first, `limit` after `last_message_id`.
    pub fn conversation(
        &self,
        conversation_id: &str,
        last_message_id: Option<&str>,
        limit: usize,
    ) -> Page {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<&StoredMessage> = inner
            .by_conversation
            .get(conversation_id)
            .map(|ids| ids.iter().map(|&i| &inner.all[i]).collect())
            .unwrap_or_default();
        list.sort_by_key(|m| std::cmp::Reverse((m.date_added, m.seq)));
        let start = match last_message_id {
            Some(last) => list
                .iter()
                .position(|m| m.id == last)
                .map_or(list.len(), |p| p + 1),
            None => 0,
        };
        let total = list.len();
        let end = (start + limit).min(total);
        Page {
            messages: list[start..end].iter().map(|m| (*m).clone()).collect(),
            more: end < total,
            total,
        }
    }

    /// `GET /conversations/messages/export`: the matching messages by date, `limit` from
    /// `offset` (the cursor).
    pub fn export(&self, filter: &ExportFilter, offset: usize, limit: usize) -> Page {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let candidates: Box<dyn Iterator<Item = &StoredMessage>> = match &filter.conversation_id {
            Some(c) => Box::new(
                inner
                    .by_conversation
                    .get(c)
                    .into_iter()
                    .flatten()
                    .map(|&i| &inner.all[i]),
            ),
            None => Box::new(inner.all.iter()),
        };
        let mut list: Vec<&StoredMessage> = candidates
            .filter(|m| m.location_id.is_empty() || m.location_id == filter.location_id)
            .filter(|m| {
                filter
                    .contact_id
                    .as_ref()
                    .is_none_or(|c| *c == m.contact_id)
            })
            .filter(|m| filter.start.is_none_or(|s| m.date_added >= s))
            .filter(|m| filter.end.is_none_or(|e| m.date_added <= e))
            .filter(|m| (m.kind == "Email") == filter.email)
            .collect();
        list.sort_by_key(|m| (m.date_added, m.seq));
        if !filter.ascending {
            list.reverse();
        }
        let total = list.len();
        let start = offset.min(total);
        let end = (start + limit).min(total);
        Page {
            messages: list[start..end].iter().map(|m| (*m).clone()).collect(),
            more: end < total,
            total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, conversation: &str, date: &str) -> StoredMessage {
        let body = json!({
            "type": "SMS", "conversationId": conversation, "contactId": "k",
            "message": format!("text {id}"), "direction": "inbound",
        });
        StoredMessage::new(
            id.into(),
            body.as_object().expect("object"),
            "L".into(),
            date.parse().expect("date"),
        )
    }

    #[test]
    fn a_conversation_pages_back_newest_first_and_export_filters_by_date() {
        let m = Messages::default();
        m.add(message("a", "c1", "2024-01-01T10:00:00Z"));
        m.add(message("b", "c1", "2024-01-03T10:00:00Z"));
        m.add(message("x", "c2", "2024-01-02T10:00:00Z"));
        m.add(message("c", "c1", "2024-01-02T10:00:00Z"));
        let ids = |p: &Page| p.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        let first = m.conversation("c1", None, 2);
        assert_eq!(
            (ids(&first), first.more),
            (vec!["b".into(), "c".into()], true)
        );
        let rest = m.conversation("c1", Some("c"), 2);
        assert_eq!((ids(&rest), rest.more), (vec!["a".into()], false));
        let filter = ExportFilter {
            location_id: "L".into(),
            conversation_id: Some("c1".into()),
            start: Some("2024-01-02T00:00:00Z".parse().expect("date")),
            ..Default::default()
        };
        let page = m.export(&filter, 0, 1);
        assert_eq!(
            (ids(&page), page.more, page.total),
            (vec!["b".into()], true, 2)
        );
        assert_eq!(ids(&m.export(&filter, 1, 10)), vec!["c".to_owned()]);
        let other = ExportFilter {
            location_id: "elsewhere".into(),
            ..filter.clone()
        };
        assert_eq!(m.export(&other, 0, 10).total, 0);
        let mut unknown_location = message("y", "c3", "2024-01-02T10:00:00Z");
        unknown_location.location_id.clear();
        m.add(unknown_location);
        let anywhere = ExportFilter {
            conversation_id: Some("c3".into()),
            start: None,
            ..other
        };
        assert_eq!(
            m.export(&anywhere, 0, 10).total,
            1,
            "listed for any location"
        );
        assert_eq!(m.get("x").map(|m| m.conversation_id), Some("c2".into()));
        let json = m.get("a").expect("stored").to_json();
        assert_eq!(json["messageType"], "TYPE_SMS");
        assert_eq!(json["dateAdded"], "2024-01-01T10:00:00.000Z");
    }
}
