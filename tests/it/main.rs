//! The one integration test binary: every test drives `lc-import` from outside, through the
//! real binary or over real loopback sockets.

mod attachments;
mod changed;
mod crash;
mod exits;
mod exports;
mod faults;
mod fixture;
mod hostile;
mod monitor;
mod oauth;
mod power_cut;
mod progress;
mod readback;
mod report;
mod resolve;
mod results_file;
mod run;
mod sandbox;
mod scenario;
mod security;
mod streams;
mod support;
mod threads;
mod trust;
mod validate;
mod wait;
