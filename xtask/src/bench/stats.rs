//! Medians over rounds ([`median`], [`med`], [`med_opt`]) and their
//! formatting.

use super::run::Run;
use super::scenario::Sc;
use super::workload::Wl;

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub(super) fn med(runs: &[Run], w: Wl, sc: Sc, f: impl Fn(&Run) -> f64) -> Option<f64> {
    median(
        runs.iter()
            .filter(|r| r.wl == w && r.sc == sc && r.error.is_none())
            .map(f)
            .collect(),
    )
}

pub(super) fn med_opt(runs: &[Run], w: Wl, sc: Sc, f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    median(
        runs.iter()
            .filter(|r| r.wl == w && r.sc == sc && r.error.is_none())
            .filter_map(f)
            .collect(),
    )
}

pub(super) fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.prec$}"))
}
