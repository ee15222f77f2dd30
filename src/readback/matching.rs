//! Which messages read back can be a row's (pure; tested below). A message matches when what
//! the API returns agrees with what the row sent: direction, type (`kinds`), body (`message`,
//! or an e-mail's `html`), attachments, and `dateAdded` equal to the row's `date` (the API kept
//! it) or within the time the row's request was out (the API stamped its arrival), give or take
//! [`CLOCK_MARGIN`]. A field the answer leaves out is not held against a message.

use std::collections::HashSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::Found;
use super::kinds::kind_matches;
use crate::message::{InboundMessage, SpecEnum};

/// How far this machine's clock and the API's may disagree, and how long the API may take to
/// stamp a message it received.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// A `dateAdded` within this of the row's `date` is that date (the API may drop the
/// milliseconds).
const SAME_DATE: Duration = Duration::from_secs(1);

/// When a row's request was out: it left at `from` (unknown for lines of older versions) and
/// was given up on, or the run died, by `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Out {
    /// When it left (the `sending` line's time); `None` in files of older versions.
    pub from: Option<Timestamp>,
    /// When it was given up on (its `unknown` line), or answered 5xx.
    pub to: Timestamp,
}

impl Out {
    /// Whether `t` falls in the span, with the margin on both sides.
    pub fn covers(&self, t: Timestamp) -> bool {
        let margin = SignedDuration::try_from(CLOCK_MARGIN).expect("a small duration");
        self.from.is_none_or(|from| t >= from - margin) && t <= self.to + margin
    }
}

/// What a row sent, as read-back compares it.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    /// The body the row sent.
    pub message: &'a InboundMessage,
    /// The row's `date`, when it has one.
    pub date: Option<Timestamp>,
    /// When its request was out.
    pub out: Out,
}

impl<'a> Expected<'a> {
    /// What `message` sent, out as `out` says.
    pub fn new(message: &'a InboundMessage, out: Out) -> Expected<'a> {
        Expected {
            message,
            date: message.date.as_deref().and_then(|d| d.parse().ok()),
            out,
        }
    }

    /// The span of `dateAdded` a read must cover: the row's date and the time it was out (a
    /// week back when the time it left is not known).
    pub fn span(&self) -> super::Span {
        let margin = SignedDuration::try_from(CLOCK_MARGIN).expect("a small duration");
        let from = self
            .out
            .from
            .unwrap_or(self.out.to - SignedDuration::from_hours(24 * 7));
        let (mut low, mut high) = (from - margin, self.out.to + margin);
        if let Some(d) = self.date {
            low = low.min(d - SignedDuration::from_secs(1));
            high = high.max(d + SignedDuration::from_secs(1));
        }
        super::Span {
            from: low,
            to: high,
        }
    }

    /// Whether the message is an e-mail (the export lists e-mails only when asked).
    pub fn is_email(&self) -> bool {
        self.message.kind.as_str() == "Email"
    }

    /// Whether `found` can be this row's message.
    pub fn matches(&self, found: &Found) -> bool {
        let m = self.message;
        if let Some(d) = &found.direction
            && d != m.direction.as_str()
        {
            return false;
        }
        if let Some(t) = &found.message_type
            && !kind_matches(m.kind.as_str(), t)
        {
            return false;
        }
        if !same_body(m, found.body.as_deref().unwrap_or("")) {
            return false;
        }
        // A file or a signed link was uploaded first: the API holds it under a URL of its own,
        // so only the plain URLs are compared, and the number of the others (issue 15).
        let got = found.attachments.clone().unwrap_or_default();
        let plain = |a: &&String| !crate::validate::needs_upload(std::slice::from_ref(*a));
        if got.len() != m.attachments.len()
            || !m.attachments.iter().filter(plain).all(|a| got.contains(a))
        {
            return false;
        }
        match found.added() {
            None => true,
            Some(added) => self.date.is_some_and(|d| same_date(d, added)) || self.out.covers(added),
        }
    }

    /// The messages of `found` that can be this row's, but for those `taken` (recorded for
    /// other rows, or given to another row already).
    pub fn candidates<'f>(&self, found: &'f [Found], taken: &HashSet<String>) -> Vec<&'f Found> {
        found
            .iter()
            .filter(|f| !f.id.is_empty() && !taken.contains(&f.id) && self.matches(f))
            .collect()
    }
}

/// Whether a body read back is the text `m` sent (`message`, or an e-mail's `html`; empty for
/// a message of attachments or a call only), line breaks and outer white space aside.
pub fn same_body(m: &InboundMessage, body: &str) -> bool {
    let body = normalise(body);
    let texts = [m.message.as_deref(), m.html.as_deref()];
    if texts.iter().all(Option::is_none) {
        body.is_empty()
    } else {
        texts.iter().flatten().any(|t| normalise(t) == body)
    }
}

/// Whether `added` is `date`, to the second.
pub fn same_date(date: Timestamp, added: Timestamp) -> bool {
    date.duration_until(added).unsigned_abs() < SAME_DATE
}

/// Line breaks as `\n`, outer white space trimmed: how a body may come back changed.
fn normalise(text: &str) -> String {
    text.replace("\r\n", "\n").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Direction, MessageType};

    fn t(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn found(id: &str, body: &str, added: &str) -> Found {
        Found {
            id: id.into(),
            message_type: Some("TYPE_SMS".into()),
            direction: Some("inbound".into()),
            body: Some(body.into()),
            attachments: Some(vec![]),
            date_added: Some(added.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_message_matches_on_content_and_either_date() {
        let message = InboundMessage {
            kind: MessageType::Sms,
            direction: Direction::Inbound,
            message: Some("hello\r\nthere".into()),
            date: Some("2024-01-01T10:00:00Z".into()),
            ..Default::default()
        };
        let out = Out {
            from: Some(t("2026-12-01T15:00:00Z")),
            to: t("2026-12-01T15:00:30Z"),
        };
        let e = Expected::new(&message, out);
        // dateAdded kept as the row's date, to the second; or the arrival within the span.
        assert!(e.matches(&found("a", "hello\nthere", "2024-01-01T10:00:00.400Z")));
        assert!(e.matches(&found("b", "hello\nthere ", "2026-12-01T15:00:10Z")));
        assert!(
            e.matches(&found("c", "hello\nthere", "2026-12-01T15:01:20Z")),
            "margin"
        );
        assert!(!e.matches(&found("d", "hello\nthere", "2026-12-01T15:05:00Z")));
        assert!(!e.matches(&found("e", "hello\nthere", "2024-01-01T10:00:02Z")));
        assert!(
            !e.matches(&found("f", "hello", "2024-01-01T10:00:00Z")),
            "body"
        );
        let mut outbound = found("g", "hello\nthere", "2024-01-01T10:00:00Z");
        outbound.direction = Some("outbound".into());
        assert!(!e.matches(&outbound), "direction");
        let mut email = found("h", "hello\nthere", "2024-01-01T10:00:00Z");
        email.message_type = Some("TYPE_EMAIL".into());
        assert!(!e.matches(&email), "type");
        let mut attached = found("i", "hello\nthere", "2024-01-01T10:00:00Z");
        attached.attachments = Some(vec!["https://x.test/a.png".into()]);
        assert!(!e.matches(&attached), "attachments");
        // A file uploaded first comes back under the API's URL: its number is what counts.
        let with_files = InboundMessage {
            attachments: vec!["/srv/scan.pdf".into(), "https://x.test/logo.png".into()],
            ..message.clone()
        };
        let e2 = Expected::new(&with_files, out);
        let mut uploaded = found("j", "hello\nthere", "2024-01-01T10:00:00Z");
        uploaded.attachments = Some(vec![
            "https://cdn.test/u1/scan.pdf".into(),
            "https://x.test/logo.png".into(),
        ]);
        assert!(e2.matches(&uploaded), "an uploaded file");
        uploaded.attachments = Some(vec!["https://x.test/logo.png".into()]);
        assert!(!e2.matches(&uploaded), "one attachment short");
        let all = [
            found("a", "hello\nthere", "2024-01-01T10:00:00Z"),
            found("b", "hello\nthere", "2026-12-01T15:00:10Z"),
        ];
        let taken: HashSet<String> = ["a".to_owned()].into();
        let ids: Vec<&str> = e
            .candidates(&all, &taken)
            .iter()
            .map(|f| f.id.as_str())
            .collect();
        assert_eq!(ids, ["b"], "a message another row owns is not a candidate");
        let span = e.span();
        assert!(span.from <= t("2024-01-01T10:00:00Z") && span.to >= t("2026-12-01T15:00:30Z"));
    }

    #[test]
    fn a_row_without_a_date_or_a_departure_is_bounded_by_when_it_was_given_up_on() {
        let message = InboundMessage {
            message: Some("x".into()),
            ..Default::default()
        };
        let e = Expected::new(
            &message,
            Out {
                from: None,
                to: t("2026-12-01T15:00:00Z"),
            },
        );
        assert!(e.matches(&found("a", "x", "2026-11-01T00:00:00Z")));
        assert!(!e.matches(&found("b", "x", "2026-12-01T16:00:00Z")));
    }
}
