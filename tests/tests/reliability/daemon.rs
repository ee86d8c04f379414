//! Reliability: daemon.
