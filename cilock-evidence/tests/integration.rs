//! cilock-evidence's integration tests, as ONE test binary: the library
//! against real files, real repositories, real fixtures and independent
//! implementations (OpenSSL CLI, Python `cryptography`, the git binary).
//! Shared helpers (the PKI and TSA) live in `cilock-testkit`.

/// Material, product, environment, the CI attestors and the lifecycle.
mod attestors_files;
/// The git attestor against real repositories made with the git binary.
mod attestors_git;
/// sbom and sarif over real cyclonedx-py and ruff outputs; oci and link.
mod attestors_products;
/// lockfiles, system-packages and the scanner reports (falco, kube-bench, prowler, testssl).
mod attestors_scanners;
/// secretscan: findings never appear in clear in the collection.
mod attestors_secretscan;
/// The example policy against a step reaching the container engine's own socket.
mod engine_socket_policy;
/// Keys and DSSE against Witness fixtures and independent implementations.
mod keys_dsse;
/// The example policies gate on what the tracer observed, not what was claimed.
mod observed_policy;
/// Policy verification end to end.
mod policy_verify;
/// Certificate functionaries and RFC 3161 timestamps with a real PKI and TSA.
mod x509_timestamp;
