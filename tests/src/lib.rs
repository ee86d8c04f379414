//! End-to-end tests live in tests/tests/*.rs; helpers in tests/src (being written).
