//! The results file: one CSV line per input row saying what became of it (DESIGN "Results
//! journal and resume"). `validate` writes it once; `run` keeps it as a write-ahead journal:
//!
//! - [`line`] is the line codec: the header, where each column is ([`line::col`], the one place
//!   that knows), the statuses, and writing a [`ResultLine`].
//! - [`Journal::open`] locks the file for the run and reads what earlier runs recorded into a
//!   [`Prior`] ([`prior`]): per row key, the last status and where its line is. A `sending`
//!   line with no outcome after it (a crash or `kill -9` mid-request) becomes `unknown` at once.
//! - [`Journal::write_ahead`] writes a row's `sending` line with one `write(2)` before its
//!   request leaves, and [`Journal::on_disk`] waits until a `fdatasync` covers it (one sync for
//!   every line written before it: group commit, on the syncer thread of [`sync`]);
//!   [`Journal::record`] keeps an outcome line in memory until it can go out in that same
//!   `write` with the next `sending` line (or a flush within 10 ms): outcomes always reach the
//!   file ahead of the next request, and the disk with the next sync ([`journal`]).
//! - [`Journal::compact`] rewrites the file atomically (temp file in the same folder, fsync,
//!   rename, fsync of the folder) to one line per row in input order, keeping lines of earlier
//!   runs whose rows are no longer in the input after them, so no record of a sent message is
//!   ever dropped (`compact`).
//! - [`content`] keeps, for rows keyed by content, what each row sent looked like apart from its
//!   text, so that an edited row is recorded `changed` instead of being sent again.
//! - [`threads`] keeps, for e-mails with a thread column, the `emailMessageId` of each thread's
//!   first message, on disk before that message's `sent` line.

mod compact;
pub mod content;
pub mod journal;
pub mod line;
pub mod prior;
mod sync;
pub mod target;
pub mod threads;

pub use journal::Journal;
pub use line::{ResultLine, Status};
pub use prior::Prior;
