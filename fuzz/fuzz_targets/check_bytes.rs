//! Any bytes as a CSV export: the reader, mapping and validation must answer with counts or a
//! usage error, never panic. The first byte picks the options (see `check_fuzz_case`), so the
//! delimiters, list separators and `--date-format` / `--timezone` paths are fuzzed too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lc_import::commands::validate::check_fuzz_case(data);
});
