//! The PyPI tools environment is made and its tools run.

#[test]
fn the_venv_has_working_tools() {
    let py = cilock_testkit::pytools::tool("python");
    let out = std::process::Command::new(py)
        .args([
            "-c",
            "import in_toto_attestation.v1.statement as s; print(s.Statement)",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new(cilock_testkit::pytools::tool("ruff"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0.17.6"),
        "{out:?}"
    );
}
