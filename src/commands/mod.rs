//! One module per subcommand; each turns its arguments into work and says how it ended.

pub mod preset;
pub mod report;
pub mod run;
pub mod survey;
pub mod validate;
pub mod verify;
