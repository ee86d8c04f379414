//! (being written: daemon service work)
