//! Reliability: keep.
