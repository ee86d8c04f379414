//! The cilock daemon (being written: daemon service work).
fn main() {}
