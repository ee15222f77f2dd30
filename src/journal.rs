//! The results file: one CSV line per input row saying what became of it (DESIGN "Results
//! journal and resume"). `validate` writes it once; `run` keeps it as a write-ahead journal.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The header every results file starts with.
pub const HEADER: [&str; 11] = [
    "row",
    "key",
    "status",
    "message_id",
    "conversation_id",
    "contact_id",
    "http_status",
    "attempts",
    "error",
    "trace_id",
    "finished_at",
];

/// What became of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `validate` only: the row would be sent.
    Valid,
    /// The row breaks a rule and was not sent.
    Invalid,
    /// Write-ahead mark: the request is about to leave. Read back as `unknown`.
    Sending,
    /// The API answered with a message ID.
    Sent,
    /// The API refused it, or retries ran out. Tried again on the next run.
    Failed,
    /// The request was written but no answer came: it may be stored. Not resent unless asked.
    Unknown,
    /// Its key was seen earlier in the same input; not sent.
    Duplicate,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Invalid => "invalid",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
            Status::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "valid" => Status::Valid,
            "invalid" => Status::Invalid,
            "sending" => Status::Sending,
            "sent" => Status::Sent,
            "failed" => Status::Failed,
            "unknown" => Status::Unknown,
            "duplicate" => Status::Duplicate,
            other => return Err(format!("'{other}' is not a status")),
        })
    }
}

/// One line of the results file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultLine {
    pub row: u64,
    pub key: String,
    pub status: Option<Status>,
    pub message_id: String,
    pub conversation_id: String,
    pub contact_id: String,
    pub http_status: Option<u16>,
    pub attempts: u32,
    pub error: String,
    pub trace_id: String,
    pub finished_at: String,
}

/// Writes results lines as CSV into any writer.
pub struct ResultsWriter<W: Write> {
    csv: csv::Writer<W>,
    itoa: [String; 3],
}

impl<W: Write> ResultsWriter<W> {
    /// Wraps `inner`, writing the header first.
    pub fn new(inner: W) -> csv::Result<Self> {
        let mut csv = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(inner);
        csv.write_record(HEADER)?;
        Ok(ResultsWriter {
            csv,
            itoa: Default::default(),
        })
    }

    pub fn write(&mut self, line: &ResultLine) -> csv::Result<()> {
        use std::fmt::Write as _;
        for s in &mut self.itoa {
            s.clear();
        }
        let [row, http, attempts] = &mut self.itoa;
        let _ = write!(row, "{}", line.row);
        if let Some(h) = line.http_status {
            let _ = write!(http, "{h}");
        }
        if line.attempts > 0 {
            let _ = write!(attempts, "{}", line.attempts);
        }
        self.csv.write_record([
            row.as_str(),
            &line.key,
            line.status.map_or("", Status::as_str),
            &line.message_id,
            &line.conversation_id,
            &line.contact_id,
            http.as_str(),
            attempts.as_str(),
            &line.error,
            &line.trace_id,
            &line.finished_at,
        ])
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.csv.flush()
    }

    pub fn into_inner(self) -> Result<W, std::io::Error> {
        self.csv.into_inner().map_err(|e| e.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in [
            Status::Valid,
            Status::Invalid,
            Status::Sending,
            Status::Sent,
            Status::Failed,
            Status::Unknown,
            Status::Duplicate,
        ] {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn lines_are_quoted_csv() {
        let mut w = ResultsWriter::new(Vec::new()).unwrap();
        w.write(&ResultLine {
            row: 7,
            key: "h:ab".into(),
            status: Some(Status::Invalid),
            error: "line 8, column 3 (type): type 'a,b' is not one of SMS".into(),
            ..Default::default()
        })
        .unwrap();
        let out = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(
            out,
            "row,key,status,message_id,conversation_id,contact_id,http_status,attempts,error,trace_id,finished_at\n\
             7,h:ab,invalid,,,,,,\"line 8, column 3 (type): type 'a,b' is not one of SMS\",,\n"
        );
    }
}
