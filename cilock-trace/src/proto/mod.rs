//! Parsers of the payloads the backends capture from the job's sockets, and
//! the one stream-capture policy both backends share. Every function here
//! takes untrusted bytes from the traced job and never panics on them.

pub mod dns;
pub mod http_connect;
pub mod stream;
pub mod tls;

#[cfg(test)]
mod tests;
