//! evaluate: predicted lesion masks against reference masks, patient by patient, with the
//! autoPET challenge's metrics (Dice, false-positive and false-negative volume) and lesion-wise
//! sensitivity and precision, as Mean ± SD over patients, for every predicted source against
//! every reference source (the cross-evaluation matrix).
//!
//! PRED and REF hold one folder per patient, matched by name. Every NIfTI file of a patient
//! folder is a source named by its stem, every segment of a DICOM Segmentation a source named
//! by its label ([`sources`]). A patient is evaluated on one grid: that of its first NIfTI mask
//! in REF (by file name), else in PRED; every other NIfTI mask of the patient must be on it,
//! and Segmentations are rasterised onto it. Each mask is labelled once (connected components,
//! 18-connectivity by default) and compared with every mask of the other side ([`metrics`]).

mod font;
mod matrix;
pub mod metrics;
mod report;
pub mod sources;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::nifti::NiftiError;
use crate::quantify::Connectivity;
use crate::volume::Geometry;
use metrics::{Labelled, PairMetrics, Stat};
use sources::Source;

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no patient folders")]
    NoPatientFolders { path: PathBuf },
    #[error("no patient folder of {pred} has a namesake in {reference}")]
    NoPatients { pred: PathBuf, reference: PathBuf },
    #[error("patient {patient}: two sources are named {name:?}: {first} and {second}")]
    DuplicateSource { patient: String, name: String, first: String, second: String },
    #[error("patient {patient}: {path}: {message}")]
    Seg { patient: String, path: PathBuf, message: String },
    #[error("patient {patient}: {source}")]
    Nifti { patient: String, source: NiftiError },
    #[error("patient {patient}: {file} is not on the grid of {grid_file}: {detail}")]
    GridMismatch { patient: String, file: PathBuf, grid_file: PathBuf, detail: String },
    #[error("patient {patient}: no NIfTI mask gives a grid to rasterise the Segmentations onto")]
    NoGrid { patient: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl EvaluateError {
    /// Everything but a failure to write the outputs is a problem of the input (exit code 2).
    pub fn is_input(&self) -> bool {
        !matches!(self, EvaluateError::Write { .. })
    }
}

/// Command-line arguments of `petct-node evaluate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvaluateArgs {
    /// Predictions: one folder per patient holding NIfTI masks and/or DICOM Segmentations.
    #[arg(long)]
    pub pred: PathBuf,
    /// References, laid out as PRED; patient folders are matched by name.
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// Print one JSON object (summary, patients, unmatched, connectivity) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write summary.csv, patients.csv, evaluation.json and matrix.png into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Connectivity of lesions (connected components): 6, 18 (autoPET) or 26.
    #[arg(long, default_value = "18", value_parser = parse_connectivity)]
    pub connectivity: Connectivity,
}

fn parse_connectivity(s: &str) -> Result<Connectivity, String> {
    match s.trim() {
        "6" => Ok(Connectivity::Faces6),
        "18" => Ok(Connectivity::Edges18),
        "26" => Ok(Connectivity::Corners26),
        _ => Err(format!("connectivity must be 6, 18 or 26, got {s:?}")),
    }
}

/// Patient folders found on one side only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unmatched {
    pub pred_only: Vec<String>,
    pub ref_only: Vec<String>,
}

/// One (prediction source, reference source) pair on one patient.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatientRow {
    pub patient: String,
    pub pred: String,
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(flatten)]
    pub metrics: PairMetrics,
}

/// One (prediction source, reference source) pair over the patients that have both: Mean and
/// sample SD of each metric over the patients where it is defined (`n_*` of them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairSummary {
    pub pred: String,
    #[serde(rename = "ref")]
    pub reference: String,
    /// Patients holding both sources.
    pub n: usize,
    pub dice_mean: Option<f64>,
    pub dice_sd: Option<f64>,
    pub n_dice: usize,
    pub fpv_ml_mean: Option<f64>,
    pub fpv_ml_sd: Option<f64>,
    pub n_fpv: usize,
    pub fnv_ml_mean: Option<f64>,
    pub fnv_ml_sd: Option<f64>,
    pub n_fnv: usize,
    pub sensitivity_mean: Option<f64>,
    pub sensitivity_sd: Option<f64>,
    pub n_sensitivity: usize,
    pub precision_mean: Option<f64>,
    pub precision_sd: Option<f64>,
    pub n_precision: usize,
}

impl PairSummary {
    fn of(pred: &str, reference: &str, rows: &[&PatientRow]) -> Self {
        let stat = |f: fn(&PairMetrics) -> Option<f64>| Stat::of(rows.iter().map(|r| f(&r.metrics)));
        let (dice, fpv, fnv) = (stat(|m| m.dice), stat(|m| Some(m.fpv_ml)), stat(|m| m.fnv_ml));
        let (sensitivity, precision) = (stat(|m| m.sensitivity), stat(|m| m.precision));
        Self {
            pred: pred.to_string(),
            reference: reference.to_string(),
            n: rows.len(),
            dice_mean: dice.mean,
            dice_sd: dice.sd,
            n_dice: dice.n,
            fpv_ml_mean: fpv.mean,
            fpv_ml_sd: fpv.sd,
            n_fpv: fpv.n,
            fnv_ml_mean: fnv.mean,
            fnv_ml_sd: fnv.sd,
            n_fnv: fnv.n,
            sensitivity_mean: sensitivity.mean,
            sensitivity_sd: sensitivity.sd,
            n_sensitivity: sensitivity.n,
            precision_mean: precision.mean,
            precision_sd: precision.sd,
            n_precision: precision.n,
        }
    }
}

/// Everything `evaluate` found; serialised as the `--json` output and `evaluation.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub connectivity: Connectivity,
    /// Patient folders present in both PRED and REF, evaluated.
    pub matched: Vec<String>,
    pub unmatched: Unmatched,
    /// Folders holding no mask, sources missing for some patients.
    pub warnings: Vec<String>,
    pub pred_sources: Vec<String>,
    pub ref_sources: Vec<String>,
    /// Every predicted source against every reference source, predictions then references in
    /// name order.
    pub summary: Vec<PairSummary>,
    /// Per patient (in name order), every pair of its sources.
    pub patients: Vec<PatientRow>,
}

/// Sub-folders of `dir` by name.
fn patient_folders(dir: &Path) -> Result<BTreeMap<String, PathBuf>, EvaluateError> {
    let io = |source| EvaluateError::Io { path: dir.to_path_buf(), source };
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            out.insert(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), path);
        } else {
            tracing::debug!(path = %path.display(), "ignoring a file beside the patient folders");
        }
    }
    if out.is_empty() {
        return Err(EvaluateError::NoPatientFolders { path: dir.to_path_buf() });
    }
    Ok(out)
}

/// One patient's sources, scanned.
struct Patient {
    name: String,
    pred: Vec<Source>,
    reference: Vec<Source>,
}

/// Evaluates every matched patient folder of `pred` against `reference`.
pub fn evaluate(pred: &Path, reference: &Path, connectivity: Connectivity) -> Result<Evaluation, EvaluateError> {
    let (pred_dirs, ref_dirs) = (patient_folders(pred)?, patient_folders(reference)?);
    let matched: Vec<String> = pred_dirs.keys().filter(|p| ref_dirs.contains_key(*p)).cloned().collect();
    let unmatched = Unmatched {
        pred_only: pred_dirs.keys().filter(|p| !ref_dirs.contains_key(*p)).cloned().collect(),
        ref_only: ref_dirs.keys().filter(|p| !pred_dirs.contains_key(*p)).cloned().collect(),
    };
    if matched.is_empty() {
        return Err(EvaluateError::NoPatients { pred: pred.to_path_buf(), reference: reference.to_path_buf() });
    }
    // Every folder is scanned (headers only) before any mask is read: a naming problem in the
    // last patient stops the run at once.
    let scanned: Vec<Result<Patient, EvaluateError>> = matched
        .par_iter()
        .map(|name| {
            Ok(Patient {
                name: name.clone(),
                pred: sources::scan(name, &pred_dirs[name])?,
                reference: sources::scan(name, &ref_dirs[name])?,
            })
        })
        .collect();
    let patients = scanned.into_iter().collect::<Result<Vec<_>, _>>()?;
    let names = |side: fn(&Patient) -> &[Source]| -> Vec<String> {
        patients
            .iter()
            .flat_map(|p| side(p).iter().map(|s| s.name.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let (pred_sources, ref_sources) = (names(|p| &p.pred), names(|p| &p.reference));
    let mut warnings = Vec::new();
    for p in &patients {
        for (side, list, all) in [("PRED", &p.pred, &pred_sources), ("REF", &p.reference, &ref_sources)] {
            let missing: Vec<&str> =
                all.iter().filter(|n| !list.iter().any(|s| &s.name == *n)).map(String::as_str).collect();
            if list.is_empty() {
                warnings.push(format!("patient {}: the {side} folder holds no mask", p.name));
            } else if !missing.is_empty() {
                warnings.push(format!("patient {}: {side} has no {}", p.name, missing.join(", ")));
            }
        }
    }
    let mut rows = Vec::new();
    for p in &patients {
        rows.extend(evaluate_patient(p, connectivity)?);
    }
    let summary = pred_sources
        .iter()
        .flat_map(|pred| ref_sources.iter().map(move |reference| (pred, reference)))
        .map(|(pred, reference)| {
            let pair: Vec<&PatientRow> = rows.iter().filter(|r| &r.pred == pred && &r.reference == reference).collect();
            PairSummary::of(pred, reference, &pair)
        })
        .collect();
    Ok(Evaluation { connectivity, matched, unmatched, warnings, pred_sources, ref_sources, summary, patients: rows })
}

/// A NIfTI file's grid and mask.
type MaskRead = Result<(Geometry, Vec<u8>), NiftiError>;

/// The rows of one patient: every prediction source against every reference source.
fn evaluate_patient(p: &Patient, connectivity: Connectivity) -> Result<Vec<PatientRow>, EvaluateError> {
    if p.pred.is_empty() || p.reference.is_empty() {
        return Ok(Vec::new());
    }
    let patient = p.name.as_str();
    let all: Vec<&Source> = p.reference.iter().chain(&p.pred).collect();
    // NIfTI masks, read in parallel; the first (REF before PRED, by name) gives the grid.
    let read: Vec<Option<MaskRead>> = all
        .par_iter()
        .map(|s| s.segment.is_none().then(|| crate::nifti::read(&s.path).map(|n| (n.geometry, n.data.nonzero_mask()))))
        .collect();
    let mut masks: Vec<Option<Vec<u8>>> = Vec::with_capacity(all.len());
    let mut grid: Option<(Geometry, &Path)> = None;
    for (source, read) in all.iter().zip(read) {
        let Some(read) = read else {
            masks.push(None);
            continue;
        };
        let (geometry, mask) = read.map_err(|source| EvaluateError::Nifti { patient: patient.to_string(), source })?;
        match &grid {
            None => grid = Some((geometry, &source.path)),
            Some((g, grid_file)) => check_grid(patient, g, grid_file, &geometry, &source.path)?,
        }
        masks.push(Some(mask));
    }
    let Some((grid, grid_file)) = grid else {
        return Err(EvaluateError::NoGrid { patient: patient.to_string() });
    };
    // Segmentations: each file read once for all its segments.
    let mut seg_files: BTreeMap<&Path, Vec<(usize, u16)>> = BTreeMap::new();
    for (i, s) in all.iter().enumerate() {
        if let Some(n) = s.segment {
            seg_files.entry(&s.path).or_default().push((i, n));
        }
    }
    let rasterised: Vec<Result<Vec<Vec<u8>>, EvaluateError>> = seg_files
        .par_iter()
        .map(|(path, segs)| {
            let numbers: Vec<u16> = segs.iter().map(|(_, n)| *n).collect();
            sources::read_seg(patient, path, &numbers, &grid, grid_file)
        })
        .collect();
    for ((_, segs), result) in seg_files.iter().zip(rasterised) {
        for ((i, _), mask) in segs.iter().zip(result?) {
            masks[*i] = Some(mask);
        }
    }
    let labelled: Vec<Labelled> =
        masks.into_par_iter().map(|m| Labelled::new(m.unwrap_or_default(), grid.dims, connectivity)).collect();
    let (refs, preds) = labelled.split_at(p.reference.len());
    let voxel_ml = grid.spacing_mm.iter().product::<f64>() / 1000.0;
    let mut pairs: Vec<(usize, usize)> = (0..preds.len()).flat_map(|a| (0..refs.len()).map(move |b| (a, b))).collect();
    pairs.sort_by(|x, y| (&p.pred[x.0].name, &p.reference[x.1].name).cmp(&(&p.pred[y.0].name, &p.reference[y.1].name)));
    Ok(pairs
        .par_iter()
        .map(|&(a, b)| PatientRow {
            patient: patient.to_string(),
            pred: p.pred[a].name.clone(),
            reference: p.reference[b].name.clone(),
            metrics: metrics::compare(&preds[a], &refs[b], voxel_ml),
        })
        .collect())
}

fn check_grid(
    patient: &str,
    grid: &Geometry,
    grid_file: &Path,
    g: &Geometry,
    file: &Path,
) -> Result<(), EvaluateError> {
    let detail = match sources::affine_difference_mm(grid, g) {
        None => {
            let d = |g: &Geometry| format!("{}x{}x{}", g.dims[0], g.dims[1], g.dims[2]);
            format!("its size is {} voxels, the grid's {}", d(g), d(grid))
        }
        Some(diff) if diff > sources::AFFINE_TOLERANCE_MM => {
            format!("the affines differ by up to {diff:.4} mm (more than {} mm)", sources::AFFINE_TOLERANCE_MM)
        }
        Some(_) => return Ok(()),
    };
    Err(EvaluateError::GridMismatch {
        patient: patient.to_string(),
        file: file.to_path_buf(),
        grid_file: grid_file.to_path_buf(),
        detail,
    })
}

/// `petct-node evaluate`: evaluates, writes the files of `--out` and returns what to print.
pub fn run(args: &EvaluateArgs) -> Result<String, EvaluateError> {
    let evaluation = evaluate(&args.pred, &args.reference, args.connectivity)?;
    let json = serde_json::to_string_pretty(&evaluation)
        .map_err(|e| EvaluateError::Write { path: PathBuf::from("evaluation.json"), source: e.into() })?;
    if let Some(out) = &args.out {
        let write = |name: &str, bytes: &[u8]| {
            let path = out.join(name);
            std::fs::write(&path, bytes).map_err(|source| EvaluateError::Write { path, source })
        };
        std::fs::create_dir_all(out).map_err(|source| EvaluateError::Write { path: out.clone(), source })?;
        write("summary.csv", report::summary_csv(&evaluation).as_bytes())?;
        write("patients.csv", report::patients_csv(&evaluation).as_bytes())?;
        write("evaluation.json", json.as_bytes())?;
        let png = matrix::render(&evaluation)
            .map_err(|e| EvaluateError::Write { path: out.join("matrix.png"), source: std::io::Error::other(e) })?;
        write("matrix.png", &png)?;
    }
    Ok(if args.json { json + "\n" } else { report::table(&evaluation) })
}
