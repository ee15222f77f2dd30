//! The one integration test binary: each module drives a part of `lc-import` from outside, over
//! real sockets and through the real binary.

mod sandbox;
