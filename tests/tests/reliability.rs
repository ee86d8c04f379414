//! Issue #13: no typo, signal, kill, restart or second daemon loses a
//! step's evidence; no silent verdict. One module per concern, run as one
//! test binary.

mod daemon;
mod keep;
mod kill;
mod run;
mod verify;
