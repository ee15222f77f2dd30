//! `lc-import preset [NAME]`: prints a mapping shipped in the binary (the TOML of `--preset
//! NAME`, in the `--config` format, to copy and adapt), or lists them.

use anyhow::Result;

use crate::cli::PresetArgs;
use crate::config::{PRESETS, preset};
use crate::summary::{Ending, say};

/// Prints the preset, or the list; an unknown name is a usage error listing the presets.
pub fn run(args: PresetArgs) -> Result<Ending> {
    match args.name {
        Some(name) => say(preset(&name)?),
        None => {
            let mut out = String::from(
                "presets (lc-import preset NAME prints one; use it with --preset NAME):\n",
            );
            for (name, about, _) in PRESETS {
                out.push_str(&format!("  {name:<10} {about}\n"));
            }
            say(&out);
        }
    }
    Ok(Ending {
        stopped: None,
        attention: 0,
        summary: None,
    })
}
