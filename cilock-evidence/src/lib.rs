//! The evidence cilock produces and checks, shared by the daemon and the CLI
//! so that a verifier never links eBPF code.
//!
//! - [`digest`]: digest sets (`{"sha256": …}`) as Witness defines them.
//! - [`intoto`]: the in-toto Statement v0.1 wrapper.
//! - [`collection`]: the Witness attestation collection (the predicate) and
//!   the type URIs of Witness and CI/lock, which are aliases of each other.
//! - [`attestors`]: the attestors (command-run, environment, git, material,
//!   product, CI metadata, secretscan) and the lifecycle that runs them.
//! - [`dsse`]: DSSE envelopes, PAE, signing and verification.
//! - [`keys`]: key files, key ids as Witness computes them, key generation.
//! - [`policy`]: Witness/CI-lock policies, Rego evaluation and verification.
//!
//! What this crate does not do: trace processes (that is `cilock-daemon`).

#![deny(missing_docs)]

pub mod attestors;
pub mod collection;
pub mod digest;
pub mod dsse;
pub mod intoto;
pub mod keys;
pub mod limits;
pub mod policy;
pub mod timefmt;

pub use collection::{Collection, CollectionAttestation};
pub use digest::{DigestSet, HashAlg};
pub use intoto::{Statement, Subject};
