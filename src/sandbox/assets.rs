//! The files the sandbox's upload route took (`uploads`): where they are on disk, and which
//! URLs it handed out, so the inbound route can tell a message that attaches a sandbox URL it
//! never gave ([`Store::not_uploaded`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::Value;

use super::config::UploadRules;

/// Where uploaded files are served from, below the sandbox's address.
pub const ASSETS_PATH: &str = "/conversations-assets";

/// The uploaded files: on disk, and which URLs were handed out.
pub struct Store {
    pub(super) dir: PathBuf,
    /// Holds the temp folder when no `--upload-dir` was given; dropping it removes the folder.
    _temp: Option<tempfile::TempDir>,
    pub(super) max_size: u64,
    pub(super) types: Vec<String>,
    /// `id/name` of every file served.
    pub(super) served: Mutex<HashSet<String>>,
}

impl Store {
    /// Opens the folder (made if missing); the files already in it (an earlier sandbox on the
    /// same folder) are served too.
    pub fn open(rules: &UploadRules) -> std::io::Result<Store> {
        let (dir, temp) = match &rules.dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("lc-import-sandbox-uploads")
                    .tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        std::fs::create_dir_all(&dir)?;
        let mut served = HashSet::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(entry.path())? {
                let file = file?;
                served.insert(format!(
                    "{}/{}",
                    entry.file_name().to_string_lossy(),
                    file.file_name().to_string_lossy()
                ));
            }
        }
        Ok(Store {
            dir,
            _temp: temp,
            max_size: rules.max_size,
            types: rules.types.clone(),
            served: Mutex::new(served),
        })
    }

    /// How many of `body`'s attachments are URLs of this sandbox's assets that it never
    /// handed out.
    pub fn not_uploaded(&self, body: &serde_json::Map<String, Value>) -> u64 {
        let Some(Value::Array(items)) = body.get("attachments") else {
            return 0;
        };
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| url::Url::parse(s).ok())
            .filter_map(|u| {
                let rest = u.path().strip_prefix(ASSETS_PATH)?.strip_prefix('/')?;
                Some(percent_decode(rest))
            })
            .filter(|id_name| !served.contains(id_name))
            .count() as u64
    }
}

/// A URL path's `%xx` escapes decoded (lossy for bytes that are not UTF-8).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attachments_the_sandbox_never_handed_out_are_counted() {
        let store = Store::open(&UploadRules::default()).unwrap();
        store
            .served
            .lock()
            .unwrap()
            .insert("abc/Invoice 7.pdf".into());
        let body = json!({"attachments": [
            "http://127.0.0.1:9/conversations-assets/abc/Invoice%207.pdf",
            "http://127.0.0.1:9/conversations-assets/zzz/forged.pdf",
            "https://cdn.example/elsewhere.png",
        ]});
        assert_eq!(store.not_uploaded(body.as_object().unwrap()), 1);
        assert_eq!(percent_decode("a%2Fb%zz"), "a/b%zz");
    }
}
