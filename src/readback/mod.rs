//! Read-back (issue 13).

pub mod kinds;
