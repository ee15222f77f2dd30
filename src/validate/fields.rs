//! The rules for one cell (IDs, e-mail addresses, attachment URLs, call phone numbers, list
//! cells) and the rules across the fields of one message ([`check_message`]). Each takes the
//! value as read and answers with it normalised, or with an [`Invalid`] that says what would be
//! accepted.

use super::{Invalid, Problem, quote};
use crate::message::{InboundMessage, MessageType, SpecEnum};

/// `conversationId`, `contactId`, `conversationProviderId`: HighLevel IDs are short ASCII
/// tokens such as `ve9EPM428h8vShlRW1KT`. A phone number or an e-mail address here is the most
/// common mistake of an export, and the API would answer it with a 400 or a 500 (pitfall 1).
pub fn check_id(field: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        return Ok(());
    }
    let hint = if value.contains('@') {
        " (it looks like an e-mail address, not an ID)"
    } else if value.starts_with('+') || value.bytes().filter(u8::is_ascii_digit).count() >= 7 {
        " (it looks like a phone number, not an ID)"
    } else {
        ""
    };
    Err(Invalid::new(
        Problem::Id,
        format!(
            "{field} {} is not a HighLevel ID{hint}: expected letters and digits such as ve9EPM428h8vShlRW1KT",
            quote(value)
        ),
    ))
}

/// An e-mail address: plain (`ann@example.com`), or with a display name as mail programs and
/// exports write it (`Ann Lee <ann@example.com>`, `"Lee, Ann" <ann@example.com>`,
/// `<ann@example.com>`). Answers with the bare address, which is what the API takes.
pub fn normalize_email(field: &str, value: &str) -> Result<String, Invalid> {
    let value = value.trim();
    if is_plain_address(value) {
        return Ok(value.to_owned());
    }
    if let Some(address) = named_address(value) {
        return Ok(address.to_owned());
    }
    let suggestion = match (value.find('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b && is_plain_address(value[a + 1..b].trim()) => format!(
            "; did you mean {}? (a display name goes before the <address>, in quotes when it holds < > or \")",
            value[a + 1..b].trim()
        ),
        _ => String::new(),
    };
    Err(Invalid::new(
        Problem::Email,
        format!(
            "{field} {} is not an e-mail address: expected one address such as ann@example.com or Ann Lee <ann@example.com>{suggestion}",
            quote(value)
        ),
    ))
}

/// The address of `Display Name <address>`: the name plain text (no `<`, `>` or `"`), or a
/// quoted string (`"Lee, Ann"`, with `\"` for a quote), or absent.
fn named_address(value: &str) -> Option<&str> {
    let inner = value.strip_suffix('>')?;
    let open = inner.rfind('<')?;
    let (name, address) = (inner[..open].trim(), inner[open + 1..].trim());
    if !is_plain_address(address) {
        return None;
    }
    let name_ok = match name.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .is_some_and(|quoted| !unescaped_quote(quoted)),
        None => !name.contains(['<', '>', '"']),
    };
    name_ok.then_some(address)
}

/// Whether `s` holds a `"` not escaped by a backslash.
fn unescaped_quote(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return true,
            _ => {}
        }
    }
    false
}

/// An address list cell (`emailCc`, `emailBcc`): a JSON array, or addresses separated by `sep`,
/// where a separator inside a quoted display name or inside `<…>` does not count
/// (`"Lee, Ann" <ann@example.com>, Bob <bob@example.com>` with `--list-sep ,`).
pub fn split_addresses(field: &str, value: &str, sep: char) -> Result<Vec<String>, Invalid> {
    if value.trim().starts_with('[') {
        return split_list(field, value, sep);
    }
    let mut items = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !angle => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            c if c == sep && !quoted && !angle => {
                items.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return Err(Invalid::new(
            Problem::List,
            format!(
                "{field} {} has a quote that is not closed: expected addresses separated by '{sep}', a display name in quotes such as \"Lee, Ann\" <ann@example.com>",
                quote(value)
            ),
        ));
    }
    items.push(&value[start..]);
    Ok(items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

fn is_plain_address(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || "<>()[],;:\"@".contains(c);
    !local.is_empty()
        && !domain.is_empty()
        && !local.chars().any(bad_char)
        && !domain.chars().any(bad_char)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// The file types `POST /conversations/messages/upload` takes, by extension, lower case
/// (`api/apps/conversations.json`: JPG JPEG PNG MP4 MPEG ZIP RAR PDF DOC DOCX TXT MP3 WAV).
pub const UPLOAD_TYPES: &[&str] = &[
    "jpg", "jpeg", "png", "mp4", "mpeg", "zip", "rar", "pdf", "doc", "docx", "txt", "mp3", "wav",
];

/// Where an attachment comes from, as its cell names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentSource {
    /// An absolute http(s) URL without a query string: sent to the API as it is.
    Url,
    /// An http(s) URL with a query string (a signed or expiring link, `?alt=media`): the API has
    /// been seen to refuse it (FACTS pitfall 8), so the file is downloaded and uploaded first.
    Fetch,
    /// A local file (a path, relative to the input's folder, or a `file://` URL): uploaded first.
    File(std::path::PathBuf),
}

impl AttachmentSource {
    /// Whether the attachment must go through `POST /conversations/messages/upload` first.
    pub fn needs_upload(&self) -> bool {
        !matches!(self, AttachmentSource::Url)
    }
}

/// Whether any of a message's attachments must be uploaded before the message is sent.
pub fn needs_upload(attachments: &[String]) -> bool {
    attachments
        .iter()
        .any(|a| check_attachment(a).is_ok_and(|s| s.needs_upload()))
}

/// The extension of a file name, lower case, if it is one the upload endpoint takes.
pub fn upload_type(name: &str) -> Option<&'static str> {
    let ext = std::path::Path::new(name).extension()?.to_str()?;
    UPLOAD_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(ext))
        .copied()
}

/// An attachment: an absolute `http(s)` URL with a host (sent as it is when it has no query
/// string; with one, the API has been seen to answer 422 "attachments must contain at least 1
/// elements", FACTS pitfall 8, so it is downloaded and uploaded first), or a local file of a type
/// the upload endpoint takes (a path, or a `file://` URL). Whether the file exists and is under
/// the size limit is checked on disk, not here (`upload::files`).
pub fn check_attachment(value: &str) -> Result<AttachmentSource, Invalid> {
    let bad = |why: &str| {
        Err(Invalid::new(
            Problem::Url,
            format!(
                "attachment {} {why}: expected an absolute http(s) URL such as https://files.example.com/photo.jpg, or a local file (a path relative to the input's folder, or absolute) of type {}",
                // A signed link's query string (its signature) is never printed.
                quote(&shown(value)),
                UPLOAD_TYPES.join(", ")
            ),
        ))
    };
    let path = match url::Url::parse(value) {
        // `C:\\files\\a.pdf` parses with a one-letter scheme: a Windows path.
        Ok(url) if url.scheme().len() > 1 => match url.scheme() {
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return bad("has no host");
                }
                return match url.query() {
                    // This tool downloads it: a signature sent in clear could be replayed by
                    // anyone on the way (plain http only to this machine, like --base-url).
                    Some(_) if url.scheme() == "http" && !crate::sender::is_loopback(&url) => bad(
                        "is a signed link over plain http (this tool downloads it, and its signature would cross the network in clear): give its https:// form",
                    ),
                    Some(_) => Ok(AttachmentSource::Fetch),
                    None => Ok(AttachmentSource::Url),
                };
            }
            "file" => match url.to_file_path() {
                Ok(path) => path,
                Err(()) => return bad("is a file:// URL that names no local file"),
            },
            other => return bad(&format!("has scheme '{other}'")),
        },
        Ok(_) | Err(url::ParseError::RelativeUrlWithoutBase) => std::path::PathBuf::from(value),
        Err(e) => return bad(&format!("is not a URL ({e})")),
    };
    if value.chars().any(char::is_control) {
        return bad("has control characters");
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(name) = name else {
        return bad("names no file");
    };
    if upload_type(&name).is_none() {
        let what = match std::path::Path::new(&name).extension() {
            Some(ext) => format!("is a .{} file", ext.to_string_lossy()),
            None => "has no file extension".to_owned(),
        };
        return Err(Invalid::new(
            Problem::File,
            format!(
                "attachment {} {what}, a type the upload endpoint does not take: expected one of {}",
                quote(value),
                UPLOAD_TYPES.join(", ")
            ),
        ));
    }
    Ok(AttachmentSource::File(path))
}

/// `call.to` / `call.from`: E.164 (`+15037081210`). Spaces, dashes, dots and parentheses are
/// dropped first, as exports often write `+1 (503) 708-1210`.
pub fn normalize_phone(field: &str, value: &str) -> Result<String, Invalid> {
    let kept: String = value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}'))
        .collect();
    let digits = kept.strip_prefix('+').unwrap_or("");
    if (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
    {
        return Ok(kept);
    }
    let hint = if !kept.starts_with('+') && kept.bytes().all(|b| b.is_ascii_digit()) {
        " (the country code with a leading + is missing)"
    } else {
        ""
    };
    Err(Invalid::new(
        Problem::Phone,
        format!(
            "{field} {} is not an E.164 phone number{hint}: expected + and 8 to 15 digits such as +15037081210",
            quote(value)
        ),
    ))
}

/// Splits a list cell (`attachments`, `emailCc`, `emailBcc`): a JSON array of strings if it
/// starts with `[`, else by `sep`; items trimmed, empty items dropped.
pub fn split_list(field: &str, value: &str, sep: char) -> Result<Vec<String>, Invalid> {
    let trimmed = value.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(trimmed)
            .map(|items| {
                items
                    .into_iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .map_err(|e| {
                Invalid::new(
                    Problem::List,
                    format!(
                        "{field} {} starts with '[' but is not a JSON array of strings ({e}): expected [\"a\",\"b\"] or items separated by '{sep}'",
                        quote(value)
                    ),
                )
            });
    }
    Ok(trimmed
        .split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Rules across fields of one message, after each field is valid on its own.
pub fn check_message(m: &InboundMessage) -> Vec<Invalid> {
    let mut problems = Vec::new();
    if m.kind.needs_provider() && m.conversation_provider_id.is_none() {
        let why = if m.kind == MessageType::Custom {
            "the API answers a Custom message without one with 201 and an empty body, and stores nothing"
        } else {
            "the API needs the call provider's ID for calls"
        };
        problems.push(Invalid::new(
            Problem::Provider,
            format!(
                "type {} needs a conversationProviderId ({why}): add a column or --set conversationProviderId=ID",
                m.kind.as_str()
            ),
        ));
    }
    let has_content =
        m.message.is_some() || m.html.is_some() || !m.attachments.is_empty() || m.call.is_some();
    if !has_content {
        problems.push(Invalid::new(
            Problem::Content,
            "the message is empty: a row needs at least one of message, html, attachments or call.*",
        ));
    }
    problems
}

/// An attachment as the tool names it in errors and logs: a URL without its query string
/// (a signed link's signature is a credential of sorts).
pub fn shown(item: &str) -> String {
    match url::Url::parse(item) {
        Ok(mut url) if matches!(url.scheme(), "http" | "https") => {
            let had_query = url.query().is_some();
            url.set_query(None);
            let _ = url.set_password(None);
            match had_query {
                true => format!("{url}?…"),
                false => url.to_string(),
            }
        }
        _ => item.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let cases: &[(&str, bool, &str)] = &[
            ("ve9EPM428h8vShlRW1KT", true, ""),
            ("abc_123-XYZ", true, ""),
            ("", false, ""),
            ("has space", false, ""),
            ("ann@example.com", false, "e-mail address"),
            ("+15037081210", false, "phone number"),
            ("(503) 708-1210", false, "phone number"),
            (&"x".repeat(65), false, ""),
        ];
        for (input, ok, hint) in cases {
            let r = check_id("contactId", input);
            assert_eq!(r.is_ok(), *ok, "{input}");
            if let Err(e) = r {
                assert_eq!(e.problem, Problem::Id);
                assert!(e.message.contains(hint), "{input}: {}", e.message);
            }
        }
    }

    #[test]
    fn emails() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("ann@example.com", Ok("ann@example.com")),
            (
                " ann.lee+tag@mail.example.co.uk ",
                Ok("ann.lee+tag@mail.example.co.uk"),
            ),
            ("Ann Lee <ann@example.com>", Ok("ann@example.com")),
            ("\"Lee, Ann\" <ann@example.com>", Ok("ann@example.com")),
            (
                "\"Ann \\\"the\\\" Lee\" <ann@example.com>",
                Ok("ann@example.com"),
            ),
            ("<ann@example.com>", Ok("ann@example.com")),
            ("Zoë Ñandú < zoe@example.com >", Ok("zoe@example.com")),
            ("ann@localhost", Err("not an e-mail address")),
            ("ann.example.com", Err("not an e-mail address")),
            ("ann @example.com", Err("not an e-mail address")),
            ("@example.com", Err("not an e-mail address")),
            ("ann@@example.com", Err("not an e-mail address")),
            ("ann@example..com", Err("not an e-mail address")),
            ("Ann <ann@localhost>", Err("not an e-mail address")),
            (
                "Ann \"Lee <ann@example.com>",
                Err("did you mean ann@example.com?"),
            ),
            (
                "Ann <ann@example.com> trailing",
                Err("did you mean ann@example.com?"),
            ),
        ];
        for (input, want) in cases {
            match (normalize_email("emailTo", input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
                (Err(e), Err(text)) => {
                    assert_eq!(e.problem, Problem::Email);
                    assert!(e.message.contains(text), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn address_lists() {
        type Case<'a> = (&'a str, char, Result<Vec<&'a str>, Problem>);
        let cases: &[Case] = &[
            ("a@x.com; b@x.com", ';', Ok(vec!["a@x.com", "b@x.com"])),
            (
                "\"Lee, Ann\" <ann@x.com>, Bob <bob@x.com>",
                ',',
                Ok(vec!["\"Lee, Ann\" <ann@x.com>", "Bob <bob@x.com>"]),
            ),
            (
                "\"Lee; Ann\" <ann@x.com>;bob@x.com;",
                ';',
                Ok(vec!["\"Lee; Ann\" <ann@x.com>", "bob@x.com"]),
            ),
            (
                r#"["Ann <a@x.com>","b@x.com"]"#,
                ';',
                Ok(vec!["Ann <a@x.com>", "b@x.com"]),
            ),
            ("\"Lee, Ann <ann@x.com>", ',', Err(Problem::List)),
        ];
        for (input, sep, want) in cases {
            match (split_addresses("emailCc", input, *sep), want) {
                (Ok(items), Ok(w)) => assert_eq!(items, *w, "{input}"),
                (Err(e), Err(p)) => assert_eq!(e.problem, *p, "{input}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn attachments() {
        use AttachmentSource::{Fetch, File, Url};
        let file = |p: &str| Ok(File(std::path::PathBuf::from(p)));
        let cases: &[(&str, Result<AttachmentSource, &str>)] = &[
            ("https://files.example.com/a.jpg", Ok(Url)),
            ("http://files.example.com/path/to/b.pdf", Ok(Url)),
            ("https://files.example.com/a.jpg?alt=media", Ok(Fetch)),
            // A signed link is downloaded by this tool: over plain http only from this machine.
            ("http://127.0.0.1:8080/a.jpg?sig=1", Ok(Fetch)),
            (
                "http://files.example.com/a.jpg?sig=1",
                Err("is a signed link over plain http"),
            ),
            ("files.example.com/a.jpg", file("files.example.com/a.jpg")),
            ("scans/Invoice 7.PDF", file("scans/Invoice 7.PDF")),
            ("/srv/export/a.png", file("/srv/export/a.png")),
            ("file:///srv/export/a.png", file("/srv/export/a.png")),
            ("ftp://files.example.com/a.jpg", Err("has scheme 'ftp'")),
            ("https://", Err("is not a URL")),
            (
                "setup.exe",
                Err("is a .exe file, a type the upload endpoint does not take"),
            ),
            ("not a url", Err("has no file extension")),
            ("file:///etc/passwd", Err("has no file extension")),
        ];
        for (input, want) in cases {
            match (check_attachment(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{input}"),
                (Err(e), Err(text)) => {
                    assert!(matches!(e.problem, Problem::Url | Problem::File));
                    assert!(e.message.contains(text), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        assert!(needs_upload(&[
            "https://x.example/a.png".into(),
            "a.pdf".into()
        ]));
        assert!(!needs_upload(&["https://x.example/a.png".into()]));
    }

    #[test]
    fn phones() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("+15037081210", Ok("+15037081210")),
            ("+1 (503) 708-1210", Ok("+15037081210")),
            ("+44 20 7946 0958", Ok("+442079460958")),
            ("+49.30.1234567", Ok("+49301234567")),
            ("5037081210", Err("country code")),
            ("+1503708121099999", Err("E.164")),
            ("+1234", Err("E.164")),
            ("+0123456789", Err("E.164")),
            ("call me", Err("E.164")),
        ];
        for (input, want) in cases {
            match (normalize_phone("call.to", input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
                (Err(e), Err(text)) => {
                    assert_eq!(e.problem, Problem::Phone);
                    assert!(e.message.contains(text), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn lists() {
        let cases: &[(&str, Result<Vec<&str>, Problem>)] = &[
            ("a;b", Ok(vec!["a", "b"])),
            (" a ; ; b ;", Ok(vec!["a", "b"])),
            ("", Ok(vec![])),
            ("single", Ok(vec!["single"])),
            (r#"["a","b; c"]"#, Ok(vec!["a", "b; c"])),
            (r#"[" a ", ""]"#, Ok(vec!["a"])),
            ("[1,2]", Err(Problem::List)),
            ("[unclosed", Err(Problem::List)),
            (
                &format!("{}{}", "[".repeat(200), "]".repeat(200)),
                Err(Problem::List),
            ),
        ];
        for (input, want) in cases {
            let got = split_list("attachments", input, ';');
            match (got, want) {
                (Ok(items), Ok(w)) => assert_eq!(items, *w, "{input}"),
                (Err(e), Err(p)) => assert_eq!(e.problem, *p, "{input}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cross_field_rules() {
        let base = InboundMessage {
            message: Some("hi".into()),
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut InboundMessage)| {
            let mut m = base.clone();
            f(&mut m);
            check_message(&m)
                .iter()
                .map(|p| p.problem)
                .collect::<Vec<_>>()
        };
        assert_eq!(with(&|_| {}), vec![]);
        assert_eq!(
            with(&|m| m.kind = MessageType::Custom),
            vec![Problem::Provider]
        );
        assert_eq!(
            with(&|m| m.kind = MessageType::Call),
            vec![Problem::Provider]
        );
        assert_eq!(
            with(&|m| {
                m.kind = MessageType::Custom;
                m.conversation_provider_id = Some("p".into())
            }),
            vec![]
        );
        assert_eq!(with(&|m| m.message = None), vec![Problem::Content]);
        assert_eq!(
            with(&|m| {
                m.message = None;
                m.attachments = vec!["https://x.example/a.png".into()]
            }),
            vec![]
        );
        assert_eq!(
            with(&|m| {
                m.message = None;
                m.call = Some(Default::default())
            }),
            vec![]
        );
    }
}
