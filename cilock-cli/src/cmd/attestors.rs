//! `cilock attestors`: the attestors `-a` accepts, and the built-in
//! catalogue that selects attestors by what the trace saw run
//! (`cilock_evidence::attestors::selection`).

use std::io::Write as _;

use cilock_evidence::attestors::lifecycle::{ALWAYS_RUN, VALID_ATTESTORS};
use cilock_evidence::attestors::selection;

use crate::cli::AttestorsArgs;

/// Prints the attestors and the catalogue.
pub fn attestors(a: AttestorsArgs) -> anyhow::Result<u8> {
    let cat = selection::catalogue().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, cat)?;
        writeln!(out)?;
        return Ok(0);
    }
    writeln!(out, "Attestors (-a NAME):")?;
    for n in VALID_ATTESTORS {
        let always = if ALWAYS_RUN.contains(n) {
            " (always runs)"
        } else {
            ""
        };
        writeln!(out, "  {n}{always}")?;
    }
    writeln!(
        out,
        "\nRun when the trace sees the tool run (catalogue; off with --no-auto-attestors):"
    )?;
    for e in &cat.entries {
        let mut cond = String::new();
        if let Some(m) = &e.module {
            cond.push_str(&format!(" with -m {m}"));
        }
        if !e.args.is_empty() {
            cond.push_str(&format!(" with argument(s) {}", e.args.join(" ")));
        }
        if let Some(t) = &e.arg_contains {
            cond.push_str(&format!(" with an argument containing {t:?}"));
        }
        writeln!(
            out,
            "  {}{cond} → {}: {}",
            e.tools.join(", "),
            e.attestors.join(", "),
            e.description
        )?;
    }
    Ok(0)
}
