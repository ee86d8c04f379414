//! What every family's probes share: the maps and load-time constants
//! (`maps`), fault-safe reads (`read`), the in-kernel path walk (`path`),
//! and building and sending records (`record`).

pub mod maps;
pub mod path;
pub mod read;
pub mod record;
