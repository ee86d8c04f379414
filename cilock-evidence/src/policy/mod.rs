//! (being written: see the verify work)
