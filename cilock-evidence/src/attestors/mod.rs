//! Attestors and the lifecycle that runs them around a command or a step.
//!
//! An attestor observes one aspect of a step (the command and its trace, the
//! environment, the git checkout, the files before and after, CI metadata,
//! leaked secrets) and yields JSON in the Witness shape of its type. They run
//! in [`Stage`] order; [`AttestationContext`] carries what earlier attestors
//! produced to later ones (products need materials, secretscan reads all).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::collection::{Collection, CollectionAttestation};
use crate::digest::{DigestSet, HashAlg};
use crate::timefmt;

pub mod command_run;

/// When an attestor runs, relative to the traced command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Before materials are recorded (environment, git, CI metadata).
    PreMaterial,
    /// Records the inputs (material).
    Material,
    /// The command itself (command-run).
    Execute,
    /// Records the outputs (product).
    Product,
    /// After products (secretscan).
    PostProduct,
}

/// An error from an attestor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The attestor's input was invalid.
    #[error("{0}")]
    Invalid(String),
    /// The attestor found something that must fail the step (e.g.
    /// secretscan with fail-on-detection).
    #[error("{0}")]
    Failed(String),
    /// What the attestor records is not there (no SBOM among the products,
    /// no lockfile in the working directory, …): it is not recorded, and
    /// the lifecycle lists it as skipped with this reason. Not an error.
    #[error("{0}")]
    Absent(String),
}

/// What attestors share while a step is attested.
#[derive(Debug)]
pub struct AttestationContext {
    /// The working directory the step ran in (materials/products root).
    pub workdir: PathBuf,
    /// The working directory opened once (by the daemon at step begin, or
    /// `O_PATH`/`O_DIRECTORY` by whoever builds the context). When set,
    /// material, product and secretscan reach the working directory only
    /// through it; when `None`, `workdir` is opened once at the start of
    /// each walk and that descriptor is used the same way.
    pub workdir_fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Files larger than this are not hashed by material and product (they
    /// are listed as skipped); default [`filetree::DEFAULT_MAX_HASH_FILE_SIZE`].
    pub max_hash_file_size: u64,
    /// Hash algorithms for materials, products and subjects.
    pub hashes: Vec<HashAlg>,
    /// The environment of the step (not the daemon's).
    pub env: Vec<(String, String)>,
    /// Attestations completed so far, in completion order.
    pub completed: Vec<CompletedAttestation>,
    /// What the traced step's processes wrote (set by the engine before
    /// the product stage): products are marked `writtenByStep` from it.
    /// `None`: no trace, products carry no mark.
    pub step_writes: Option<product::StepWrites>,
    /// The step's name (the collection's name; empty when unknown). The
    /// slsa attestor uses it as the invocation id outside CI.
    pub step: String,
}

impl AttestationContext {
    /// A context with sha256 only.
    pub fn new(workdir: PathBuf, env: Vec<(String, String)>) -> Self {
        AttestationContext {
            workdir,
            workdir_fd: None,
            max_hash_file_size: filetree::DEFAULT_MAX_HASH_FILE_SIZE,
            hashes: vec![HashAlg::Sha256],
            env,
            completed: Vec::new(),
            step_writes: None,
            step: String::new(),
        }
    }

    /// The JSON of the completed attestor named `name`, if any.
    pub fn completed_json(&self, name: &str) -> Option<&serde_json::Value> {
        self.completed
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.json)
    }
}

/// The output of one attestor.
#[derive(Clone, Debug)]
pub struct CompletedAttestation {
    /// Attestor name (`command-run`, `material`, …).
    pub name: String,
    /// Type URI.
    pub type_uri: String,
    /// The attestor's JSON.
    pub json: serde_json::Value,
    /// Subjects, by name without the type prefix (`file:app`).
    pub subjects: BTreeMap<String, DigestSet>,
    /// Back-references, by name without the type prefix.
    pub backrefs: BTreeMap<String, DigestSet>,
    /// Start time (RFC 3339).
    pub starttime: String,
    /// End time (RFC 3339).
    pub endtime: String,
}

/// One attestor.
pub trait Attestor: Send {
    /// The attestor's name (`environment`, `git`, …).
    fn name(&self) -> &'static str;
    /// The type URI it writes.
    fn type_uri(&self) -> String {
        crate::collection::witness_type(self.name())
    }
    /// When it runs.
    fn stage(&self) -> Stage;
    /// Observes and returns its JSON.
    fn attest(&mut self, ctx: &AttestationContext) -> Result<serde_json::Value, AttestError>;
    /// Subjects (names without the type prefix), valid after `attest`.
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        BTreeMap::new()
    }
    /// Back-references (names without the type prefix), valid after `attest`.
    fn backrefs(&self) -> BTreeMap<String, DigestSet> {
        BTreeMap::new()
    }
}

/// Runs one attestor and records it in the context.
pub fn run_one(ctx: &mut AttestationContext, a: &mut dyn Attestor) -> Result<(), AttestError> {
    let starttime = timefmt::now();
    let json = a.attest(ctx)?;
    let endtime = timefmt::now();
    ctx.completed.push(CompletedAttestation {
        name: a.name().to_string(),
        type_uri: a.type_uri(),
        json,
        subjects: a.subjects(),
        backrefs: a.backrefs(),
        starttime,
        endtime,
    });
    Ok(())
}

/// Builds the collection and its statement subjects from a context.
pub fn into_collection(
    step: &str,
    ctx: &AttestationContext,
) -> (Collection, Vec<crate::intoto::Subject>) {
    let mut subjects = Vec::new();
    let mut attestations = Vec::new();
    for c in &ctx.completed {
        for (name, d) in &c.subjects {
            subjects.push(crate::intoto::Subject::new(
                format!("{}/{}", c.type_uri, name),
                d,
            ));
        }
        attestations.push(CollectionAttestation {
            type_: c.type_uri.clone(),
            attestation: c.json.clone(),
            starttime: c.starttime.clone(),
            endtime: c.endtime.clone(),
        });
    }
    (
        Collection {
            name: step.to_string(),
            attestations,
            backrefs: None,
        },
        subjects,
    )
}
pub mod bounds;
pub mod environment;
pub mod filetree;
pub mod git;
pub mod github;
pub mod github_action;
pub mod gitlab;
pub mod lifecycle;
pub mod link;
pub mod lockfiles;
pub mod material;
pub mod oci;
pub mod product;
pub mod product_files;
pub mod safeio;
pub mod sarif;
pub mod sbom;
pub mod scanners;
pub mod secretscan;
pub mod selection;
pub mod slsa;
pub mod system_packages;
