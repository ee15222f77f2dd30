//! `lc-import report` on results files written by the real binary.

use crate::support::WorkDir;

#[test]
fn report_counts_statuses_and_groups_errors() {
    let w = WorkDir::new();
    w.copy("samples/bad.csv");
    w.run(&["validate", "bad.csv", "--results", "bad.results.csv"])
        .expect_code(1);
    let out = w.run(&["report", "bad.results.csv"]);
    out.expect_code(1);
    assert!(
        out.stdout
            .starts_with("bad.results.csv: 25 rows\n  invalid           25\n"),
        "{out:?}"
    );
    // Two rows with an unknown type count as one kind of error.
    assert!(out.stdout.contains("most frequent errors:"), "{out:?}");
    assert!(
        out.stdout.contains("        2  type … is not one of SMS"),
        "{out:?}"
    );

    w.copy("samples/messages.csv");
    w.run(&["validate", "messages.csv"]).expect_code(0);
    let out = w.run(&["report", "messages.validation.csv"]);
    out.expect_code(0);
    assert_eq!(
        out.stdout,
        "messages.validation.csv: 200 rows\n  valid            200\n"
    );
}

#[test]
fn report_reads_an_uncompacted_journal_last_line_wins() {
    let w = WorkDir::new();
    w.write(
        "journal.csv",
        "row,key,status,message_id,conversation_id,contact_id,http_status,attempts,error,trace_id,finished_at\n\
         1,a,sending,,,,,,,,\n\
         2,b,sending,,,,,,,,\n\
         1,a,sent,m1,c1,k1,200,1,,t1,2024-01-01T00:00:00Z\n\
         3,c,invalid,,,,,,\"line 4: the message is empty\",,\n",
    );
    let out = w.run(&["report", "journal.csv"]);
    out.expect_code(1);
    assert!(out.stdout.contains("journal.csv: 3 rows"), "{out:?}");
    assert!(out.stdout.contains("  sent               1"), "{out:?}");
    assert!(out.stdout.contains("  invalid            1"), "{out:?}");
    assert!(
        out.stdout
            .contains("  sending            1   (the run stopped while these were in flight"),
        "{out:?}"
    );
    let out = w.run(&["report", "missing.csv"]);
    out.expect_code(2);
    w.write("other.csv", "a,b\n1,2\n");
    let out = w.run(&["report", "other.csv"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("is not a results file of lc-import"),
        "{out:?}"
    );
}
