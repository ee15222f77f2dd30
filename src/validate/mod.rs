//! The rules a value must meet before it may be sent, taken from `api/apps/conversations.json`
//! and the pitfalls in `api/FACTS.md`. Pure functions: each takes a cell and returns the value
//! to send or a [`Problem`] with a message that says what would be accepted.
//!
//! This module holds what every rule answers with ([`Problem`], [`Invalid`], [`quote`]); the
//! rules live in `fields` (one cell, or one message across its fields) and `date` (the
//! `date` cell, read with `--date-format` / `--timezone`).

mod date;
mod fields;

use std::fmt;

pub use date::{DateFormat, DateReader};
pub use fields::{
    AttachmentSource, UPLOAD_TYPES, check_attachment, check_id, check_message, needs_upload,
    normalize_email, normalize_phone, shown, split_addresses, split_list, upload_type,
};

/// The kind of a row error, for grouping in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Problem {
    /// The CSV record itself is broken: ragged, unterminated quote.
    Csv,
    /// A cell is not valid UTF-8.
    Encoding,
    /// A required field is empty or has no column.
    Missing,
    /// `type` is not in the spec's enum.
    Type,
    /// `direction` is not `inbound` or `outbound`.
    Direction,
    /// `date` does not parse, or lacks an offset.
    Date,
    /// An e-mail field is not an address.
    Email,
    /// An attachment is not an absolute http(s) URL or a local file path.
    Url,
    /// An attachment file is of a type the upload endpoint does not take, missing, or too big.
    File,
    /// A call phone number is not E.164.
    Phone,
    /// `conversationId`, `contactId` or `conversationProviderId` is not an ID.
    Id,
    /// A list cell (JSON array) does not parse.
    List,
    /// `call.status` is not in its enum.
    CallStatus,
    /// The message has nothing in it.
    Content,
    /// The type needs a `conversationProviderId`.
    Provider,
}

impl Problem {
    /// A short name for the summary's "most frequent errors".
    pub fn label(self) -> &'static str {
        match self {
            Problem::Csv => "malformed CSV",
            Problem::Encoding => "invalid UTF-8",
            Problem::Missing => "required field missing",
            Problem::Type => "unknown type",
            Problem::Direction => "unknown direction",
            Problem::Date => "bad date",
            Problem::Email => "bad e-mail address",
            Problem::Url => "bad attachment URL",
            Problem::File => "attachment file not accepted",
            Problem::Phone => "bad phone number",
            Problem::Id => "bad ID",
            Problem::List => "bad list cell",
            Problem::CallStatus => "unknown call status",
            Problem::Content => "no content",
            Problem::Provider => "conversationProviderId needed",
        }
    }
}

/// What is wrong with one value, and what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The kind, for the summary's grouping.
    pub problem: Problem,
    /// The sentence shown to the user: the value, what is wrong, what would be accepted.
    pub message: String,
}

impl Invalid {
    /// An `Invalid` of kind `problem` saying `message`.
    pub fn new(problem: Problem, message: impl Into<String>) -> Self {
        Invalid {
            problem,
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Shortens a user value for quoting in a message, so a 1 MB cell does not make a 1 MB error.
pub fn quote(value: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::with_capacity(value.len().min(MAX) + 8);
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    format!("'{out}'")
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_bounds_long_values() {
        let long = "x".repeat(1_000_000);
        assert!(quote(&long).len() < 80);
        assert_eq!(quote("a\nb"), "'a\\nb'");
    }
}
