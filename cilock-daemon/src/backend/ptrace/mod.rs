//! (being written: ptrace fallback work)
