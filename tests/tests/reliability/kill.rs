//! Reliability: kill.
