//! Which API a results file was written against. A results file says which rows are `sent`; read
//! against another API (a rehearsal's file in the real import, another location) it would skip
//! rows that API never got. So a run records its target beside the results file, in
//! `<results>.target.json` (the CSV stays a plain table that opens in a spreadsheet), before its
//! first request, and a later run against another target refuses to start.
//!
//! A results file written before targets were recorded is taken as written for the target of
//! the first run that reads it (with a note in the log).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tracing::info;

/// The API a run sends to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `sandbox` for `run --sandbox`, else the API root with any user info removed.
    pub api: String,
    /// The location (sub-account) the rows go to, when the run knows it (`--location-id`, or
    /// one `locationId` shared by every row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// What `run --sandbox` writes as its API.
pub const SANDBOX: &str = "sandbox";

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.api == SANDBOX {
            f.write_str("the sandbox of run --sandbox")?;
        } else {
            f.write_str(&self.api)?;
        }
        match &self.location {
            Some(location) => write!(f, ", location {location}"),
            None => Ok(()),
        }
    }
}

/// `<results file name>.target.json` beside the results file.
pub fn path_for(results: &Path) -> PathBuf {
    crate::results::line::beside(results, ".target.json")
}

/// Checks that `results` (locked by this run) was written against `now`, and records `now` when
/// it records nothing yet (or no location yet). `has_lines`: the results file holds lines of an
/// earlier run or `validate`.
pub fn check_and_record(results: &Path, now: &Target, has_lines: bool) -> Result<()> {
    let path = path_for(results);
    let recorded = match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice::<Target>(&bytes).with_context(|| {
            format!(
                "{} does not read as the target of {} (delete it to take the results file as written for this run)",
                path.display(),
                results.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let write = match recorded {
        None => {
            if has_lines {
                info!(
                    "{} records no target (written by an older lc-import): taken as written for {now}",
                    results.display()
                );
            }
            true
        }
        Some(was) => {
            let other_location =
                matches!((&was.location, &now.location), (Some(a), Some(b)) if a != b);
            if was.api != now.api || other_location {
                bail!(
                    "{} was written against {was}, and this run sends to {now}: the rows it records as sent were not sent here, and this run would skip them. Give this run its own results file with --results (for example {})",
                    results.display(),
                    suggest(results, now).display()
                );
            }
            was.location.is_none() && now.location.is_some()
        }
    };
    if write {
        write_atomically(&path, now)?;
    }
    Ok(())
}

/// A results file name for `target` beside `results`.
fn suggest(results: &Path, target: &Target) -> PathBuf {
    let stem = results
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "results".into());
    let stem = stem.strip_suffix(".results").unwrap_or(&stem).to_owned();
    let what = if target.api == SANDBOX {
        "sandbox"
    } else {
        "live"
    };
    results.with_file_name(format!("{stem}.{what}.results.csv"))
}

/// Temp file, sync, rename, folder sync: the record is whole or absent.
fn write_atomically(path: &Path, target: &Target) -> Result<()> {
    let body = serde_json::to_vec_pretty(target).expect("a target serialises");
    super::line::write_atomically(path, ".lc-import-target.", &body)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(api: &str, location: Option<&str>) -> Target {
        Target {
            api: api.into(),
            location: location.map(Into::into),
        }
    }

    #[test]
    fn a_results_file_refuses_another_target_and_learns_its_location() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("in.results.csv");
        let live = target("https://services.leadconnectorhq.com/", None);
        check_and_record(&results, &target(SANDBOX, None), false).unwrap();
        let e = check_and_record(&results, &live, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("was written against the sandbox of run --sandbox, and this run sends to https://services.leadconnectorhq.com/"),
            "{e}"
        );
        assert!(e.contains("in.live.results.csv"), "{e}");

        let other = dir.path().join("other.results.csv");
        check_and_record(&other, &live, false).unwrap();
        let located = target(&live.api, Some("loc1"));
        check_and_record(&other, &located, true).unwrap();
        let read: Target =
            serde_json::from_slice(&std::fs::read(path_for(&other)).unwrap()).unwrap();
        assert_eq!(read, located, "the location is learnt");
        let e = check_and_record(&other, &target(&live.api, Some("loc2")), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("location loc1") && e.contains("location loc2"),
            "{e}"
        );
        check_and_record(&other, &live, true).expect("no location named: the same API is enough");
    }
}
