//! (being written: see the verify/sign work)
