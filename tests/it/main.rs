//! The one integration test binary: every test runs the real `lc-import` binary or talks to
//! a real server over loopback sockets.

mod support;
mod validate;
