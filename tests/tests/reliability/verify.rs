//! Reliability: verify.
