//! Issue #13: no typo, signal, kill, restart or second daemon loses a
//! step's evidence; no silent verdict. One module per concern, run as one
//! test binary.

mod common;

#[path = "reliability/daemon.rs"]
mod daemon;
#[path = "reliability/keep.rs"]
mod keep;
#[path = "reliability/kill.rs"]
mod kill;
#[path = "reliability/run.rs"]
mod run;
#[path = "reliability/verify.rs"]
mod verify;
