//! Reliability: run.
