//! Counting what happened to rows and saying it at the end: counts per status and the most
//! frequent errors grouped by kind, each with its first example.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::reader::RowError;
use crate::validate::Problem;

/// Row errors grouped by kind, with the first one of each kind as the example.
#[derive(Debug, Default)]
pub struct ErrorTally {
    kinds: HashMap<Problem, (u64, String)>,
}

impl ErrorTally {
    pub fn add(&mut self, error: &RowError) {
        let entry = self
            .kinds
            .entry(error.invalid.problem)
            .or_insert_with(|| (0, error.to_string()));
        entry.0 += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// The `top` most frequent kinds, most frequent first, one per line.
    pub fn render(&self, top: usize) -> String {
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        let width = kinds.first().map_or(1, |k| k.1.0.to_string().len());
        let mut out = String::new();
        for (problem, (count, example)) in kinds.into_iter().take(top) {
            let _ = writeln!(out, "  {count:>width$}  {}", problem.label());
            let _ = writeln!(out, "  {:>width$}  e.g. {example}", "");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Invalid;

    fn err(line: u64, problem: Problem) -> RowError {
        RowError {
            line,
            column: None,
            invalid: Invalid::new(problem, format!("problem at {line}")),
        }
    }

    #[test]
    fn most_frequent_first_with_first_example() {
        let mut t = ErrorTally::default();
        for (line, p) in [
            (2, Problem::Date),
            (3, Problem::Type),
            (4, Problem::Date),
            (5, Problem::Url),
        ] {
            t.add(&err(line, p));
        }
        let out = t.render(2);
        assert_eq!(
            out,
            "  2  bad date\n     e.g. line 2: problem at 2\n  1  unknown type\n     e.g. line 3: problem at 3\n"
        );
    }
}
