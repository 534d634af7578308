//! The evaluation as text: the table printed by default, and the CSV files.

use super::{Evaluation, PairSummary, PatientRow};

/// `mean ± sd` with `decimals`, `-` for what is undefined; the metric's count in brackets when
/// it is not the pair's.
fn cell(mean: Option<f64>, sd: Option<f64>, n: usize, of: usize, decimals: usize) -> String {
    let number = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"));
    let mut s = format!("{} ± {}", number(mean), number(sd));
    if n != of {
        s.push_str(&format!(" [n={n}]"));
    }
    s
}

/// The summary as an aligned table, with the unmatched folders and warnings before it.
pub fn table(e: &Evaluation) -> String {
    let mut out = format!(
        "{} patient(s) evaluated, {}-connectivity; Mean ± SD (sample) over patients, [n=] where a metric is \
         defined for fewer\n",
        e.matched.len(),
        u8::from(e.connectivity)
    );
    for p in &e.unmatched.pred_only {
        out.push_str(&format!("warning: patient folder {p} is only in PRED, not evaluated\n"));
    }
    for p in &e.unmatched.ref_only {
        out.push_str(&format!("warning: patient folder {p} is only in REF, not evaluated\n"));
    }
    for w in &e.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let header = ["PRED", "REF", "N", "DICE", "FPV (mL)", "FNV (mL)", "SENSITIVITY", "PRECISION"];
    let rows: Vec<[String; 8]> = e
        .summary
        .iter()
        .map(|s: &PairSummary| {
            [
                s.pred.clone(),
                s.reference.clone(),
                s.n.to_string(),
                cell(s.dice_mean, s.dice_sd, s.n_dice, s.n, 3),
                cell(s.fpv_ml_mean, s.fpv_ml_sd, s.n_fpv, s.n, 2),
                cell(s.fnv_ml_mean, s.fnv_ml_sd, s.n_fnv, s.n, 2),
                cell(s.sensitivity_mean, s.sensitivity_sd, s.n_sensitivity, s.n, 3),
                cell(s.precision_mean, s.precision_sd, s.n_precision, s.n, 3),
            ]
        })
        .collect();
    let width: Vec<usize> =
        (0..8).map(|c| rows.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[&str]| {
        let padded: Vec<String> =
            cells.iter().zip(&width).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    out.push_str(&line(&header));
    for r in &rows {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    out
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn number(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn count(n: usize) -> String {
    n.to_string()
}

/// A CSV column: its name and how to print a row's value.
type Column<T> = (&'static str, fn(&T) -> String);

/// A CSV table: the header, then one line per row.
fn csv<T>(columns: &[Column<T>], rows: &[T]) -> String {
    let mut out = columns.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(",") + "\n";
    for r in rows {
        out.push_str(&columns.iter().map(|(_, value)| value(r)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// The columns of `summary.csv`: the fields of the JSON `summary`.
const SUMMARY: [Column<PairSummary>; 18] = [
    ("pred", |s| field(&s.pred)),
    ("ref", |s| field(&s.reference)),
    ("n", |s| count(s.n)),
    ("dice_mean", |s| number(s.dice_mean)),
    ("dice_sd", |s| number(s.dice_sd)),
    ("n_dice", |s| count(s.n_dice)),
    ("fpv_ml_mean", |s| number(s.fpv_ml_mean)),
    ("fpv_ml_sd", |s| number(s.fpv_ml_sd)),
    ("n_fpv", |s| count(s.n_fpv)),
    ("fnv_ml_mean", |s| number(s.fnv_ml_mean)),
    ("fnv_ml_sd", |s| number(s.fnv_ml_sd)),
    ("n_fnv", |s| count(s.n_fnv)),
    ("sensitivity_mean", |s| number(s.sensitivity_mean)),
    ("sensitivity_sd", |s| number(s.sensitivity_sd)),
    ("n_sensitivity", |s| count(s.n_sensitivity)),
    ("precision_mean", |s| number(s.precision_mean)),
    ("precision_sd", |s| number(s.precision_sd)),
    ("n_precision", |s| count(s.n_precision)),
];

/// The columns of `patients.csv`: the fields of the JSON `patients`.
const PATIENTS: [Column<PatientRow>; 15] = [
    ("patient", |r| field(&r.patient)),
    ("pred", |r| field(&r.pred)),
    ("ref", |r| field(&r.reference)),
    ("dice", |r| number(r.metrics.dice)),
    ("fpv_ml", |r| number(Some(r.metrics.fpv_ml))),
    ("fnv_ml", |r| number(r.metrics.fnv_ml)),
    ("sensitivity", |r| number(r.metrics.sensitivity)),
    ("precision", |r| number(r.metrics.precision)),
    ("ref_ml", |r| number(Some(r.metrics.ref_ml))),
    ("pred_ml", |r| number(Some(r.metrics.pred_ml))),
    ("overlap_ml", |r| number(Some(r.metrics.overlap_ml))),
    ("ref_components", |r| count(r.metrics.ref_components)),
    ("pred_components", |r| count(r.metrics.pred_components)),
    ("detected_ref_components", |r| count(r.metrics.detected_ref_components)),
    ("true_pred_components", |r| count(r.metrics.true_pred_components)),
];

/// `summary.csv`: one row per (pred, ref) pair; undefined values are empty.
pub fn summary_csv(e: &Evaluation) -> String {
    csv(&SUMMARY, &e.summary)
}

/// `patients.csv`: one row per patient and (pred, ref) pair; undefined values are empty.
pub fn patients_csv(e: &Evaluation) -> String {
    csv(&PATIENTS, &e.patients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(field("Lesions (classical)"), "Lesions (classical)");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn cells_say_what_is_undefined_and_how_many_values_count() {
        assert_eq!(cell(Some(0.5), None, 1, 1, 3), "0.500 ± -");
        assert_eq!(cell(Some(0.5), Some(0.25), 2, 3, 2), "0.50 ± 0.25 [n=2]");
        assert_eq!(cell(None, None, 0, 0, 2), "- ± -");
    }
}
