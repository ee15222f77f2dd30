//! The uploads journal, `<results>.uploads.csv` beside the results file (`in.results.csv.uploads.csv`): one line per file the
//! API took (`key,url,name,size,uploaded_at`), appended and synced (`fdatasync`) as soon as its
//! answer is read and before the message that attaches it is sent. A resume, a rerun or the
//! next night's run reads it back and never uploads the same file twice: the key says which
//! file it was (the location, then the absolute path with its size and modification time, or
//! the URL it was downloaded from, its query string kept only as a hash), so an edited file is a new file and is uploaded again.
//!
//! It is opened under the results file's lock (a second run on the same results file refuses
//! to start before it gets here). A last line cut short by a crash is ignored: that file is
//! uploaded again (its answer was never safely kept).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

/// The header of the uploads journal.
const HEADER: &[&str] = &["key", "url", "name", "size", "uploaded_at"];

/// `<results>.uploads.csv`, named as the other files beside the results file are.
pub fn path_for(results: &Path) -> PathBuf {
    crate::results::line::beside(results, ".uploads.csv")
}

/// One file the API took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    /// The URL the API answered with: what messages attach.
    pub url: String,
    /// The file name it was uploaded under.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The journal, open for appending; what it held when opened.
pub struct UploadLog {
    path: PathBuf,
    /// Appended one line at a time, each synced before it is used.
    file: Mutex<File>,
}

impl UploadLog {
    /// Opens (or creates) the journal at `path`; returns it with every upload it records, by
    /// key.
    pub fn open(path: &Path) -> Result<(UploadLog, HashMap<String, Uploaded>)> {
        let mut known = HashMap::new();
        let exists = path.exists();
        if exists {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .from_path(path)
                .with_context(|| format!("cannot read the uploads journal {}", path.display()))?;
            for record in reader.records() {
                // A line cut short by a crash (or not CSV at all): that upload is made again.
                let Ok(record) = record else { continue };
                if record.len() != HEADER.len() {
                    continue;
                }
                let (Some(key), Some(url), Some(name), Some(size)) =
                    (record.get(0), record.get(1), record.get(2), record.get(3))
                else {
                    continue;
                };
                let Ok(size) = size.parse() else { continue };
                known.insert(
                    key.to_owned(),
                    Uploaded {
                        url: url.to_owned(),
                        name: name.to_owned(),
                        size,
                    },
                );
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the uploads journal {}", path.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > 0 && !ends_in_newline(path, len) {
            // A line cut short by a crash: ended here, so the next line is a line of its own.
            file.write_all(b"\n")
                .and_then(|()| file.sync_data())
                .with_context(|| format!("cannot write the uploads journal {}", path.display()))?;
        }
        if len == 0 {
            let mut line = csv::Writer::from_writer(Vec::new());
            line.write_record(HEADER).expect("writing to memory");
            let line = line.into_inner().expect("writing to memory");
            file.write_all(&line)
                .and_then(|()| file.sync_data())
                .with_context(|| format!("cannot write the uploads journal {}", path.display()))?;
        }
        if !exists {
            // A new file's name is on disk before anything it records is relied on.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
        }
        Ok((
            UploadLog {
                path: path.to_owned(),
                file: Mutex::new(file),
            },
            known,
        ))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `key`'s upload and puts it on disk (`fdatasync`) before returning: only then may
    /// a message attach its URL. Blocking: call it off the async threads.
    pub fn record(&self, key: &str, up: &Uploaded) -> std::io::Result<()> {
        let mut line = csv::Writer::from_writer(Vec::new());
        line.write_record([
            key,
            &up.url,
            &up.name,
            &up.size.to_string(),
            &crate::results::line::now_rfc3339(),
        ])?;
        let line = line.into_inner().map_err(|e| e.into_error())?;
        // A poisoned lock only means another upload panicked between two whole writes.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write of the whole line, so a crash leaves it whole or cut at its end.
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// Whether the file's last byte (of `len`) is a line end.
fn ends_in_newline(path: &Path, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut last, len - 1))
        .is_ok_and(|()| last[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_recorded_is_read_back_and_a_cut_line_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("in.results.csv"));
        assert_eq!(path, dir.path().join("in.results.csv.uploads.csv"));
        let up = Uploaded {
            url: "https://cdn.example/a.pdf".into(),
            name: "a, b.pdf".into(),
            size: 12,
        };
        {
            let (log, known) = UploadLog::open(&path).unwrap();
            assert!(known.is_empty());
            log.record("L1|file:/x/a, b.pdf:12:1", &up).unwrap();
        }
        // A crash in the middle of the next line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"L1|file:/x/c.pdf:5:1,https://cdn.exa")
            .unwrap();
        drop(f);
        let (log, known) = UploadLog::open(&path).unwrap();
        assert_eq!(known.len(), 1, "{known:?}");
        assert_eq!(known["L1|file:/x/a, b.pdf:12:1"], up);
        // The line after the cut one is whole.
        log.record("L1|file:/x/d.pdf:5:1", &up).unwrap();
        drop(log);
        let (_, known) = UploadLog::open(&path).unwrap();
        assert_eq!(known.len(), 2, "{known:?}");
    }
}
