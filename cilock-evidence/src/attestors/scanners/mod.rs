//! Attestors that turn a security scanner's report (a product of the step)
//! into a typed attestation Rego can gate on: Falco events, kube-bench CIS
//! results, Prowler findings, testssl.sh findings. They parse the tools'
//! documented JSON outputs; they do not run the tools.

pub mod falco;
pub mod kube_bench;
pub mod prowler;
pub mod testssl;
