//! `--record FILE`: every stored message as one JSON line, appended and handed to the OS before the
//! answer leaves, so whoever holds an answer (or a dropped connection) can find its line.
//!
//! One `write` per line under a short lock (never held across an await): the line is built
//! outside the lock, so the lock covers only the system call.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use jiff::Timestamp;

/// The open record file. Dropping it closes the file; every line is already written by then.
#[derive(Debug)]
pub struct Recorder {
    file: Mutex<File>,
}

impl Recorder {
    /// Opens `path` for appending, creating it if needed (a rehearsal can be recorded in parts).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening record file {}", path.display()))?;
        Ok(Recorder {
            file: Mutex::new(file),
        })
    }

    /// Appends `{"messageId":…,"conversationId":…,"receivedAt":…,"body":…}`, for an e-mail with
    /// `"emailMessageId":…,"thread":…,"locationId":…` after the conversation (the id it was
    /// given, its thread's root, its location: see `threads`). `body` is the request body as
    /// received; it must be valid JSON (the caller parsed it).
    pub fn append(
        &self,
        message_id: &str,
        conversation_id: &str,
        email: Option<Email<'_>>,
        received_at: Timestamp,
        body: &[u8],
    ) -> io::Result<()> {
        let line = record_line(message_id, conversation_id, email, received_at, body)?;
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&line)
    }

    /// Appends one JSON value as a line (the contacts record).
    pub fn append_line(&self, value: &serde_json::Value) -> io::Result<()> {
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&line)
    }

    /// Asks the OS to put the lines on disk (at shutdown).
    pub fn sync(&self) -> io::Result<()> {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.sync_data()
    }
}

/// What the record says of a stored e-mail's thread.
#[derive(Clone, Copy, Debug)]
pub struct Email<'a> {
    /// The `emailMessageId` its answer gave it.
    pub email_message_id: &'a str,
    /// Its thread's root: the `emailMessageId` of the thread's first message.
    pub thread: &'a str,
    /// The location it was stored in; empty when its conversation is not in the book.
    pub location_id: &'a str,
}

fn record_line(
    message_id: &str,
    conversation_id: &str,
    email: Option<Email<'_>>,
    received_at: Timestamp,
    body: &[u8],
) -> io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(body.len() + 128);
    line.extend_from_slice(b"{\"messageId\":");
    serde_json::to_writer(&mut line, message_id)?;
    line.extend_from_slice(b",\"conversationId\":");
    serde_json::to_writer(&mut line, conversation_id)?;
    if let Some(email) = email {
        line.extend_from_slice(b",\"emailMessageId\":");
        serde_json::to_writer(&mut line, email.email_message_id)?;
        line.extend_from_slice(b",\"thread\":");
        serde_json::to_writer(&mut line, email.thread)?;
        line.extend_from_slice(b",\"locationId\":");
        serde_json::to_writer(&mut line, email.location_id)?;
    }
    write!(line, ",\"receivedAt\":\"{received_at:.3}\",\"body\":")?;
    // The body byte for byte, except line breaks: in valid JSON they can only be whitespace
    // between tokens (inside strings they must be escaped), so a space keeps the meaning and the
    // record one line per message.
    line.extend(body.trim_ascii().iter().map(|&b| match b {
        b'\n' | b'\r' => b' ',
        b => b,
    }));
    line.extend_from_slice(b"}\n");
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_pretty_body_becomes_one_line_with_the_same_value() {
        let body = b"{\n  \"type\": \"SMS\",\r\n  \"message\": \"two\\nlines\"\n}\n";
        let at: Timestamp = "2024-05-01T10:00:00.123456Z".parse().expect("timestamp");
        let line = record_line("m1", "c\"1", None, at, body).expect("line");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let parsed: Value = serde_json::from_slice(&line).expect("one JSON value");
        assert_eq!(
            parsed,
            json!({
                "messageId": "m1",
                "conversationId": "c\"1",
                "receivedAt": "2024-05-01T10:00:00.123Z",
                "body": {"type": "SMS", "message": "two\nlines"},
            })
        );
    }
}
