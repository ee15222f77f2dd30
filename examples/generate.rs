//! Writes a synthetic export of N rows for benchmarks and load tests:
//!
//! ```text
//! cargo run --release --example generate -- ROWS [CONVERSATIONS] [HOT_SHARE] > export.csv
//! ```
//!
//! Rows are spread round-robin over CONVERSATIONS conversations (default ROWS / 20), dates
//! rising, so every conversation's rows are in date order. With HOT_SHARE (0..1) that share of
//! all rows belongs to one conversation, interleaved with the rest: the worst case for
//! per-conversation ordering.
//!
//! ```text
//! cargo run --release --example generate -- ROWS --contacts N > migration.csv
//! ```
//!
//! With `--contacts N`, the rows are a migration's (resolving mode): no HighLevel IDs, the
//! contact named by `contactPhone` and/or `contactEmail` (contact `c` by phone only, e-mail only
//! or both, by `c % 3`, as `tests/it/resolve.rs` does), N contacts round-robin, so each contact's
//! rows are as far apart as the file allows (the worst case for a cache of recent contacts).

use std::io::{BufWriter, Write};

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--contacts") {
        let contacts: u64 = args
            .get(at + 1)
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| {
                eprintln!("usage: generate ROWS --contacts N");
                std::process::exit(2)
            });
        args.drain(at..at + 2);
        let rows: u64 = args
            .first()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("usage: generate ROWS --contacts N");
                std::process::exit(2)
            });
        return migration(rows, contacts);
    }
    let rows: u64 = args
        .first()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: generate ROWS [CONVERSATIONS] [HOT_SHARE]");
            std::process::exit(2)
        });
    let conversations: u64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or((rows / 20).max(1));
    let hot_share: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let hot_every = if hot_share > 0.0 {
        (1.0 / hot_share).round() as u64
    } else {
        0
    };

    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    writeln!(
        out,
        "altId,conversationId,contactId,type,direction,date,message,notes"
    )?;
    let start = 1_600_000_000u64; // 2020-09-13
    let texts = [
        "Hi, is my appointment still on for Thursday?",
        "Sure, the invoice is on its way to your inbox.",
        "Running 10 min late, sorry",
        "Booked! You'll get a reminder the day before.",
        "Can we move it to next week?",
    ];
    let mut other = 0u64;
    for i in 0..rows {
        let conv = if hot_every == 0 {
            i % conversations
        } else if i % hot_every == 0 {
            0
        } else {
            other += 1;
            1 + other % conversations.saturating_sub(1).max(1)
        };
        let secs = start + i;
        let (days, rem) = (secs / 86400, secs % 86400);
        let (y, m, d) = civil_from_days(days as i64);
        writeln!(
            out,
            "gen-{i:09},C{conv:019},K{conv:019},{},{},{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z,\"{}\",row {i}",
            if i % 7 == 0 { "Email" } else { "SMS" },
            if i % 2 == 0 { "inbound" } else { "outbound" },
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            texts[(i % texts.len() as u64) as usize],
        )?;
    }
    out.flush()
}

/// A migration's rows: contacts by phone and e-mail, round-robin, dates rising.
fn migration(rows: u64, contacts: u64) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    writeln!(
        out,
        "altId,contactPhone,contactEmail,firstName,type,direction,date,message"
    )?;
    let start = 1_600_000_000u64;
    for i in 0..rows {
        let c = i % contacts;
        let (phone, email) = match c % 3 {
            0 => (format!("+1{:010}", 2_000_000_000 + c), String::new()),
            1 => (String::new(), format!("person{c}@example.com")),
            _ => (
                format!("+1{:010}", 2_000_000_000 + c),
                format!("person{c}@example.com"),
            ),
        };
        let secs = start + i;
        let (days, rem) = (secs / 86400, secs % 86400);
        let (y, m, d) = civil_from_days(days as i64);
        writeln!(
            out,
            "mig-{i:09},{phone},{email},P{c},SMS,{},{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z,message {i}",
            if i % 2 == 0 { "inbound" } else { "outbound" },
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
        )?;
    }
    out.flush()
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
