//! The offline checks of attachment files, on disk (`validate` and the pass before a run): each
//! local file a row names exists, is a regular file, and is under the size limit
//! (`--attachment-max-size`). Its type (by extension) is checked by the mapping itself
//! (`validate::check_attachment`). A relative path is read from the input's folder; the row's
//! attachment is rewritten to the absolute path, so the upload reads the same file wherever
//! the run was started.

use std::path::{Path, PathBuf};

use crate::mapping::{Field, MappedRow, Mapping};
use crate::reader::RowError;
use crate::validate::{AttachmentSource, Invalid, Problem, check_attachment, quote};

/// The default `--attachment-max-size`: 5 MB. The upload endpoint's spec states no limit; the
/// only one the spec gives is for the large-file flow (`upload/initiate`: "WHATSAPP for 100MB
/// limit, others for 5MB", `InitiateFileUploadDto.channel`), taken here as the endpoint's,
/// in decimal megabytes (the smaller reading).
pub const DEFAULT_MAX_SIZE: u64 = 5_000_000;

/// Where relative attachment paths are read from, and the size limit.
#[derive(Clone, Debug)]
pub struct Files {
    /// The input's folder (the current folder for a stream).
    base: PathBuf,
    /// `--attachment-max-size`, bytes.
    pub max_size: u64,
}

impl Files {
    /// For rows of `input`: relative paths are read from its folder.
    pub fn new(input: &Path, max_size: u64) -> Files {
        // `in.csv` has the folder "", which `absolute` refuses: it is the current folder.
        let folder = match crate::source::is_stream(input) {
            true => Path::new("."),
            false => input
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        };
        let base = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
        Files { base, max_size }
    }

    /// Checks every local file `row` attaches, rewriting each to its absolute path. The errors
    /// name the line, the attachments column and the file.
    pub fn check(
        &self,
        mapping: &Mapping,
        row: &mut MappedRow,
        line: u64,
    ) -> Result<(), Vec<RowError>> {
        let mut errors = Vec::new();
        for item in &mut row.message.attachments {
            let Ok(AttachmentSource::File(path)) = check_attachment(item) else {
                continue;
            };
            // `./a.pdf` and `a.pdf` are one file (and one upload): `.` components go.
            let joined = self.base.join(path);
            let path = std::path::absolute(&joined).unwrap_or(joined);
            match self.check_file(item, &path) {
                Ok(()) => *item = path.to_string_lossy().into_owned(),
                Err(invalid) => errors.push(RowError {
                    line,
                    column: mapping.column(Field::Attachments),
                    invalid,
                }),
            }
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(errors),
        }
    }

    fn check_file(&self, item: &str, path: &Path) -> Result<(), Invalid> {
        let bad = |why: String| {
            Err(Invalid::new(
                Problem::File,
                format!("attachment file {} {why}", quote(item)),
            ))
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return bad(format!(
                    "does not exist (looked for {}; a relative path is read from the input's folder)",
                    path.display()
                ));
            }
            Err(e) => return bad(format!("cannot be read ({}: {e})", path.display())),
        };
        if !meta.is_file() {
            return bad(format!("is not a file ({})", path.display()));
        }
        if meta.len() == 0 {
            return bad("is empty".to_owned());
        }
        if meta.len() > self.max_size {
            return bad(format!(
                "is {} bytes, over the upload limit of {} bytes (--attachment-max-size)",
                meta.len(),
                self.max_size
            ));
        }
        Ok(())
    }
}

/// A size as a user writes it: `5000000`, `5MB`, `5 MiB`, `200M` (mega: 10^6; MiB: 2^20), `1.5GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        format!(
            "'{s}' is not a size: expected bytes, or a number with kB, MB, GB, KiB, MiB or GiB (such as 5MB or 200MiB)"
        )
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = (n * factor).round();
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("200 MiB"), Ok(200 * 1024 * 1024));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn files_are_found_beside_the_input_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pdf"), b"%PDF-1.4 tiny").unwrap();
        std::fs::write(dir.path().join("big.png"), vec![0u8; 2000]).unwrap();
        let header: Vec<String> = [
            "conversationId",
            "contactId",
            "type",
            "direction",
            "attachments",
        ]
        .map(String::from)
        .to_vec();
        let options = crate::mapping::MappingOptions {
            sets: vec![("locationId".into(), "L1".into())],
            ..Default::default()
        };
        let mapping = Mapping::new(&header, &options).unwrap();
        let files = Files::new(&dir.path().join("in.csv"), 1000);
        let row = |cell: &str| {
            let record = csv::ByteRecord::from(vec!["c1", "k1", "SMS", "inbound", cell]);
            mapping.map_row(&record, 3).unwrap()
        };
        let mut ok = row("./a.pdf;https://x.example/b.png");
        files.check(&mapping, &mut ok, 3).unwrap();
        assert_eq!(
            ok.message.attachments,
            [
                dir.path().join("a.pdf").to_string_lossy().into_owned(),
                "https://x.example/b.png".to_owned()
            ]
        );
        let mut bad = row("missing.pdf;big.png");
        let errors: Vec<String> = files
            .check(&mapping, &mut bad, 3)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "line 3, column 5 (attachments): attachment file 'missing.pdf' does not exist"
            ),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("'big.png' is 2000 bytes, over the upload limit of 1000 bytes"),
            "{errors:?}"
        );
    }
}
