//! The doctor's findings as values, and their two renderings: the table
//! (`CHECK  STATUS  DETAIL`, with the cost of each missing piece under it)
//! and `--json`.

use serde_json::json;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Present and working.
    Ok,
    /// Works, with less than the best (the cost says what is lost).
    Warn,
    /// Absent or refused (the cost says what it takes away).
    Missing,
    /// Could not be checked from here (the detail says why).
    NotChecked,
}

impl Status {
    /// The name in the table and in `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
            Status::NotChecked => "not-checked",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Stable kebab-case name (`kernel`, `hook-fexit`, …).
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What the missing piece costs (empty when nothing is lost).
    pub cost: String,
}

impl Check {
    /// A check that passed.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            cost: String::new(),
        }
    }

    /// A check with `status` and what it costs.
    pub fn costs(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        cost: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            cost: cost.into(),
        }
    }
}

/// Everything the doctor found, and the verdict.
#[derive(Clone, Debug)]
pub struct Report {
    /// A traced step can run.
    pub ready: bool,
    /// One sentence: why (not) ready.
    pub summary: String,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// The `--json` document.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "ready": self.ready,
            "summary": self.summary,
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name,
                "status": c.status.name(),
                "detail": c.detail,
                "cost": c.cost,
            })).collect::<Vec<_>>(),
        })
    }

    /// The table, then the summary.
    pub fn table(&self) -> String {
        let name_w = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let name_w = name_w.max("CHECK".len());
        let status_w = "not-checked".len();
        let mut out = format!("{:name_w$}  {:status_w$}  DETAIL\n", "CHECK", "STATUS");
        for c in &self.checks {
            out.push_str(&format!(
                "{:name_w$}  {:status_w$}  {}\n",
                c.name,
                c.status.name(),
                c.detail
            ));
            if !c.cost.is_empty() {
                out.push_str(&format!(
                    "{:name_w$}  {:status_w$}  cost: {}\n",
                    "", "", c.cost
                ));
            }
        }
        out.push('\n');
        out.push_str(&self.summary);
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            ready: false,
            summary: "no traced step can run here".into(),
            checks: vec![
                Check::ok("kernel", "6.18.44"),
                Check::costs(
                    "hook-fexit",
                    Status::Warn,
                    "refused",
                    "io_uring opens unseen",
                ),
            ],
        }
    }

    #[test]
    fn the_table_aligns_columns_and_puts_the_cost_under_its_check() {
        assert_eq!(
            report().table(),
            "CHECK       STATUS       DETAIL\n\
             kernel      ok           6.18.44\n\
             hook-fexit  warn         refused\n\
             \x20                        cost: io_uring opens unseen\n\
             \n\
             no traced step can run here\n"
        );
    }

    #[test]
    fn json_has_the_contract_fields() {
        assert_eq!(
            report().json(),
            json!({
                "ready": false,
                "summary": "no traced step can run here",
                "checks": [
                    {"name": "kernel", "status": "ok", "detail": "6.18.44", "cost": ""},
                    {"name": "hook-fexit", "status": "warn", "detail": "refused", "cost": "io_uring opens unseen"},
                ]
            })
        );
    }
}
