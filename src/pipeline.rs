//! The offline pipeline on a folder (`petct-node run DIR --out OUT`): find the PET series and
//! its CT, assemble both, convert the PET to SUVbw, put it on the CT grid, and write what was
//! asked for. No network, no database. Later stages (inference, quantification, encoding)
//! continue from the aligned volumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::assemble::{self, AssembleError};
use crate::calibrate::{self, CalibrateError};
use crate::encode::{self, EncodeError, EncodeInput, OutputUids, Segment};
use crate::geometry::registration::{Registration, RegistrationError, RegistrationOptions, register_rigid};
use crate::geometry::{Rigid, model_grid, resample_linear};
use crate::infer::shape::ct_blob;
use crate::infer::stage::{Inferred, PartSeconds, run_models};
use crate::infer::{InferError, Models};
use crate::inspect::{self, InspectError};
use crate::nifti;
use crate::pet_header;
use crate::quantify::{self, Mask, MaskSource, QuantifyError};
use crate::segment::{self, ClassicalUse, SegmentError, SegmentOptions};
use crate::volume::Volume;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("no complete PET series with a complete CT series to pair it with under {dir}")]
    NoPair { dir: PathBuf },
    #[error("series {series_uid}: {source}")]
    Assemble { series_uid: String, source: AssembleError },
    #[error("PET series {series_uid}: {source}")]
    Calibrate { series_uid: String, source: CalibrateError },
    #[error("registering PET series {pet} to CT series {ct}: {source}")]
    Registration { pet: String, ct: String, source: RegistrationError },
    #[error("registering PET series {pet} to CT series {ct}: result rejected, {reason}")]
    RegistrationRejected { pet: String, ct: String, reason: String },
    #[error("segmenting: {0}")]
    Segment(#[from] SegmentError),
    #[error("running the models: {0}")]
    Infer(#[from] InferError),
    #[error("no segmentation: [segmentation] classical = \"never\" and no segmentation model is configured")]
    NoSegmentation,
    #[error("measuring lesions: {0}")]
    Quantify(#[from] QuantifyError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl PipelineError {
    /// Only writing the outputs can succeed on a retry; everything else is the input's fault.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PipelineError::Write { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub pet_series_uid: String,
    pub ct_series_uid: String,
    pub suv_bw_factor: f64,
    pub suv_rule: String,
    pub ct_dims: [usize; 3],
    pub pet_dims: [usize; 3],
    /// Files written under the output folder.
    pub outputs: Vec<PathBuf>,
    /// Present when PET and CT did not share a Frame of Reference.
    pub registration: Option<Registration>,
    pub lesion_count: usize,
    pub total_mtv_ml: f64,
    pub total_tlg: f64,
    /// The segments of the SEG, in order (a model's name, or `classical`).
    pub segments: Vec<String>,
    /// The anomaly model's study-level abnormality score (0..1), when one is configured.
    pub anomaly_score: Option<f64>,
    /// UIDs of the SEG, SR and MIP (derived from the inputs and `algorithm_version`).
    pub uids: OutputUids,
    pub algorithm_version: String,
    pub seconds: Timings,
}

/// When to register and which results to refuse (`[registration]` in the config). The default
/// limits: patient motion between the CT and the PET of one study is centimetres and a few
/// degrees, never more.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationPolicy {
    /// Register even when PET and CT share a Frame of Reference (patient moved between scans).
    pub always: bool,
    pub max_translation_mm: f64,
    pub max_rotation_deg: f64,
    /// Fraction of the CT samples that must fall inside the PET after registration.
    pub min_overlap_fraction: f64,
}

impl Default for RegistrationPolicy {
    fn default() -> Self {
        Self { always: false, max_translation_mm: 60.0, max_rotation_deg: 15.0, min_overlap_fraction: 0.5 }
    }
}

impl RegistrationPolicy {
    /// Problems with the limits themselves, as (key, message) for the config checker.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.max_translation_mm) {
            out.push((
                "max_translation_mm",
                format!("must be a positive number of mm, got {}", self.max_translation_mm),
            ));
        }
        if !(positive(self.max_rotation_deg) && self.max_rotation_deg <= 180.0) {
            out.push(("max_rotation_deg", format!("must be in (0, 180], got {}", self.max_rotation_deg)));
        }
        if !(positive(self.min_overlap_fraction) && self.min_overlap_fraction <= 1.0) {
            out.push(("min_overlap_fraction", format!("must be in (0, 1], got {}", self.min_overlap_fraction)));
        }
        out
    }

    fn check(&self, r: &Registration) -> Result<(), String> {
        let shift = r.translation_mm.iter().map(|v| v * v).sum::<f64>().sqrt();
        if shift > self.max_translation_mm {
            return Err(format!("translation {shift:.1} mm exceeds {} mm", self.max_translation_mm));
        }
        if let Some(a) = r.angles_deg.iter().find(|a| a.abs() > self.max_rotation_deg) {
            return Err(format!("rotation {a:.1} degrees exceeds {} degrees", self.max_rotation_deg));
        }
        if r.overlap_fraction < self.min_overlap_fraction {
            return Err(format!("only {:.0} % of the CT samples overlap the PET", 100.0 * r.overlap_fraction));
        }
        if r.metric_final < r.metric_initial {
            return Err(format!("mutual information fell from {:.4} to {:.4}", r.metric_initial, r.metric_final));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub assemble: f64,
    pub calibrate: f64,
    pub register: f64,
    pub resample: f64,
    pub infer: f64,
    /// The infer stage by part (`infer::stage::PartSeconds`); empty without models.
    pub infer_parts: Vec<PartSeconds>,
    pub segment: f64,
    pub quantify: f64,
    pub encode: f64,
    pub write: f64,
}

/// What the pipeline is asked to do besides its fixed stages.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Also write the aligned volumes as NIfTI.
    pub export_volumes: bool,
    pub registration: RegistrationPolicy,
    pub segmentation: SegmentOptions,
    /// Also write the models' input channels on the model grid of this spacing (x, y, z mm).
    pub model_spacing_mm: Option<[f64; 3]>,
    /// Told each stage as it starts (the worker records it in the job row).
    pub progress: Option<std::sync::Arc<Progress>>,
}

/// The stages of `process`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Assemble,
    Calibrate,
    Register,
    Infer,
    Segment,
    Quantify,
    Encode,
}

impl Stage {
    const ALL: [Stage; 7] = [
        Stage::Assemble,
        Stage::Calibrate,
        Stage::Register,
        Stage::Infer,
        Stage::Segment,
        Stage::Quantify,
        Stage::Encode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Assemble => "assemble",
            Stage::Calibrate => "calibrate",
            Stage::Register => "register",
            Stage::Infer => "infer",
            Stage::Segment => "segment",
            Stage::Quantify => "quantify",
            Stage::Encode => "encode",
        }
    }
}

/// The stage a running pipeline is in, shared with another thread without locking.
#[derive(Debug, Default)]
pub struct Progress(std::sync::atomic::AtomicU8);

impl Progress {
    pub fn current(&self) -> Stage {
        Stage::ALL[usize::from(self.0.load(std::sync::atomic::Ordering::Relaxed)).min(Stage::ALL.len() - 1)]
    }
}

fn export<T: nifti::NiftiType>(
    out: &Path,
    name: &str,
    volume: &crate::volume::Volume<T>,
    description: &str,
) -> Result<PathBuf, PipelineError> {
    let path = out.join(name);
    nifti::write(&path, volume.geometry(), volume.data(), description)
        .map_err(|source| PipelineError::Write { path: path.clone(), source })?;
    Ok(path)
}

/// The channels models see, on the model grid at `spacing` (docs/models.md), in physical units
/// under `out/model_grid/`: what training reads.
fn export_model_grid(
    out: &Path,
    spacing: [f64; 3],
    suv_on_ct: &Volume<f32>,
    ct_hu: &Volume<f32>,
    body: &Mask,
    prior: Option<&Volume<f32>>,
) -> Result<Vec<PathBuf>, PipelineError> {
    let dir = out.join("model_grid");
    std::fs::create_dir_all(&dir).map_err(|source| PipelineError::Write { path: dir.clone(), source })?;
    let grid = model_grid::model_grid(ct_hu.geometry(), spacing);
    let (suv, ct) =
        rayon::join(|| model_grid::to_grid(suv_on_ct, &grid, 0.0), || model_grid::to_grid(ct_hu, &grid, AIR_HU));
    let body = model_grid::mask_to_grid(body, &grid);
    let mut written = vec![
        export(&dir, "suv.nii.gz", &suv, "SUVbw, model grid")?,
        export(&dir, "ct_hu.nii.gz", &ct, "CT in HU, model grid")?,
        export(&dir, "body.nii.gz", &body, "body mask, model grid")?,
        export(&dir, "ct_blob.nii.gz", &ct_blob(&ct, &body), "CT shape (ct_blob), model grid")?,
    ];
    if let Some(prior) = prior {
        // The anomaly model's own grid; another spacing was asked for: resampled onto it.
        let prior = if *prior.geometry() == grid {
            prior.clone()
        } else {
            resample_linear(prior, &grid, &Rigid::IDENTITY, 0.0)
        };
        written.push(export(&dir, "anomaly_prior.nii.gz", &prior, "anomaly probability, model grid")?);
    }
    Ok(written)
}

/// `mask.nii.gz` (every segment's foreground: what the lesions are made of) and
/// `mask_<method>.nii.gz` for each segment.
fn export_masks(out: &Path, segments: &[Segment], methods: &[String]) -> Result<Vec<PathBuf>, PipelineError> {
    let mut union = segments[0].mask.clone();
    for s in &segments[1..] {
        union.data_mut().par_iter_mut().zip(s.mask.data().par_iter()).for_each(|(u, &v)| *u |= v);
    }
    let mut written = vec![export(out, "mask.nii.gz", &union, "every segment's foreground, CT grid")?];
    for (s, m) in segments.iter().zip(methods) {
        written.push(export(out, &format!("mask_{m}.nii.gz"), &s.mask, &format!("{}, CT grid", s.label))?);
    }
    Ok(written)
}

/// What the CT reads outside the body and beyond its box.
const AIR_HU: f32 = -1000.0;

/// The method of the classical segmentation, as the SEG's Algorithm Name gives it.
const CLASSICAL_ALGORITHM: &str = "petct-node classical (SUV threshold + 41 % SUVmax)";
/// How `quantify` names the lesions the classical method found.
const CLASSICAL: &str = "classical";

impl PipelineOptions {
    /// The processing part of the node's configuration.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            registration: settings.registration.clone(),
            segmentation: settings.segmentation.clone(),
            ..Default::default()
        }
    }

    /// Node version and every setting that changes the results: part of every output UID, so
    /// results made differently never collide with earlier ones in the PACS.
    pub fn algorithm_version(&self, models: &Models) -> String {
        let mut v = format!("petct-node {}; {}", env!("CARGO_PKG_VERSION"), self.segmentation.describe());
        for m in models.iter() {
            v.push_str(&format!("; {} {} {}", m.name(), m.manifest().version, m.manifest().sha256));
        }
        v
    }

    fn enter(&self, stage: Stage) {
        if let Some(p) = &self.progress {
            p.0.store(stage as u8, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// One PET series and its CT, as files.
#[derive(Debug, Clone)]
pub struct PairInput {
    pub pet_series_uid: String,
    pub ct_series_uid: String,
    pub pet_paths: Vec<PathBuf>,
    pub ct_paths: Vec<PathBuf>,
    /// PET and CT do not share a Frame of Reference: register before resampling.
    pub needs_registration: bool,
}

/// Runs the pipeline on the first complete PET series (by UID) found under `dir`.
pub fn run(
    dir: &Path,
    out: &Path,
    options: &PipelineOptions,
    models: &mut Models,
) -> Result<RunSummary, PipelineError> {
    let report = inspect::inspect(dir)?;
    let (pet, ct_uid, needs_registration) = report
        .series
        .iter()
        .filter(|s| s.modality == "PT" && s.complete)
        .find_map(|s| Some((s, s.paired_ct_series_uid.clone()?, s.needs_registration.unwrap_or(true))))
        .ok_or_else(|| PipelineError::NoPair { dir: dir.to_path_buf() })?;
    let ct = report
        .series
        .iter()
        .find(|s| s.series_instance_uid == ct_uid)
        .ok_or_else(|| PipelineError::NoPair { dir: dir.to_path_buf() })?;
    let input = PairInput {
        pet_series_uid: pet.series_instance_uid.clone(),
        ct_series_uid: ct_uid,
        pet_paths: pet.paths.clone(),
        ct_paths: ct.paths.clone(),
        needs_registration,
    };
    process(&input, out, options, models)
}

/// Runs every stage on one PET/CT pair and writes the outputs under `out` (created). `models`
/// are the learned models (none: the classical segmentation alone).
pub fn process(
    input: &PairInput,
    out: &Path,
    options: &PipelineOptions,
    models: &mut Models,
) -> Result<RunSummary, PipelineError> {
    let t0 = Instant::now();
    options.enter(Stage::Assemble);
    let assembled = |series_uid: &str, paths: &[PathBuf]| {
        assemble::assemble(paths)
            .map_err(|source| PipelineError::Assemble { series_uid: series_uid.to_string(), source })
    };
    let (ct_series, pet_series) = rayon::join(
        || assembled(&input.ct_series_uid, &input.ct_paths),
        || assembled(&input.pet_series_uid, &input.pet_paths),
    );
    let (ct_series, mut pet_series) = (ct_series?, pet_series?);
    let t1 = Instant::now();
    options.enter(Stage::Calibrate);

    let calibrate_err = |source| PipelineError::Calibrate { series_uid: input.pet_series_uid.clone(), source };
    let header = pet_header::series_pet_header(pet_series.headers.iter().map(|h| &**h)).map_err(calibrate_err)?;
    let suv = calibrate::suv_bw_factor(&header).map_err(calibrate_err)?;
    let factor = suv.factor as f32;
    pet_series.volume.data_mut().par_iter_mut().for_each(|v| *v *= factor);
    let t2 = Instant::now();
    options.enter(Stage::Register);

    let registration = if input.needs_registration || options.registration.always {
        let pair = || (input.pet_series_uid.clone(), input.ct_series_uid.clone());
        let r = register_rigid(&ct_series.volume, &pet_series.volume, &RegistrationOptions::default())
            .map_err(|source| PipelineError::Registration { pet: pair().0, ct: pair().1, source })?;
        options.registration.check(&r).map_err(|reason| PipelineError::RegistrationRejected {
            pet: pair().0,
            ct: pair().1,
            reason,
        })?;
        Some(r)
    } else {
        None
    };
    let t_reg = Instant::now();
    let transform = registration.as_ref().map_or(Rigid::IDENTITY, |r| r.transform);
    let suv_on_ct = resample_linear(&pet_series.volume, ct_series.volume.geometry(), &transform, 0.0);
    let t3 = Instant::now();
    options.enter(Stage::Infer);
    let body = segment::body_mask(&ct_series.volume, options.segmentation.body_hu_threshold)?;
    let inferred =
        if models.is_empty() { Inferred::default() } else { run_models(models, &suv_on_ct, &ct_series.volume, &body)? };
    let t_infer = Instant::now();
    options.enter(Stage::Segment);
    let classical = match options.segmentation.classical {
        ClassicalUse::Always => true,
        ClassicalUse::Never => false,
        ClassicalUse::Auto => inferred.segmentations.is_empty(),
    };
    let mut segments: Vec<Segment> = inferred
        .segmentations
        .iter()
        .map(|m| Segment {
            number: 0,
            label: format!("Lesions ({})", m.name),
            algorithm_name: m.name.clone(),
            algorithm_version: m.version.clone(),
            description: m.annotation_source.as_ref().map(|a| format!("trained on the {a}")),
            mask: m.mask.clone(),
        })
        .collect();
    if classical {
        segments.push(Segment {
            number: 0,
            label: "Lesions (classical)".into(),
            algorithm_name: CLASSICAL_ALGORITHM.into(),
            algorithm_version: env!("CARGO_PKG_VERSION").into(),
            description: Some(options.segmentation.describe()),
            mask: segment::classical_in_body(&suv_on_ct, &body, &options.segmentation)?,
        });
    }
    if segments.is_empty() {
        return Err(PipelineError::NoSegmentation);
    }
    for (i, s) in segments.iter_mut().enumerate() {
        s.number = i as u16 + 1;
    }
    let methods: Vec<String> =
        inferred.segmentations.iter().map(|m| m.name.clone()).chain(classical.then(|| CLASSICAL.to_string())).collect();
    let t_seg = Instant::now();
    options.enter(Stage::Quantify);
    let sources: Vec<(&Mask, MaskSource)> =
        segments.iter().zip(&methods).map(|(s, m)| (&s.mask, MaskSource { segment: s.number, method: m })).collect();
    let (labels, mut findings) = quantify::quantify_sources(&sources, &suv_on_ct, options.segmentation.connectivity)?;
    findings.anomaly_score = inferred.anomaly.as_ref().map(|a| a.score);
    let t_quant = Instant::now();
    options.enter(Stage::Encode);
    let algorithm_version = options.algorithm_version(models);
    let encoded = encode::encode(&EncodeInput {
        ct: &ct_series,
        pet: &pet_series,
        suv_on_ct: &suv_on_ct,
        labels: &labels,
        segments: &segments,
        findings: &findings,
        algorithm_version: &algorithm_version,
    })?;
    let t_enc = Instant::now();

    std::fs::create_dir_all(out).map_err(|source| PipelineError::Write { path: out.to_path_buf(), source })?;
    let mut outputs = Vec::new();
    if options.export_volumes {
        let volumes = [
            ("ct_hu.nii.gz", &ct_series.volume, "CT in HU"),
            ("suv.nii.gz", &pet_series.volume, "PET SUVbw, native grid"),
            ("suv_on_ct.nii.gz", &suv_on_ct, "PET SUVbw on the CT grid"),
        ];
        for (name, volume, description) in volumes {
            outputs.push(export(out, name, volume, description)?);
        }
        outputs.extend(export_masks(out, &segments, &methods)?);
        outputs.push(export(out, "lesions.nii.gz", &labels, "lesion labels as in findings.json, CT grid")?);
        if let Some(a) = &inferred.anomaly {
            let probability = a.probability_on(ct_series.volume.geometry(), &body);
            outputs.push(export(out, "anomaly.nii.gz", &probability, "anomaly probability, CT grid")?);
        }
    }
    // With models, the grid they work on; else the one asked for.
    let model_spacing = models.iter().next().map(|m| m.manifest().spacing_mm).or(options.model_spacing_mm);
    if let Some(spacing) = model_spacing.filter(|_| options.export_volumes || options.model_spacing_mm.is_some()) {
        let prior = inferred.anomaly.as_ref().map(|a| &a.on_model_grid);
        outputs.extend(export_model_grid(out, spacing, &suv_on_ct, &ct_series.volume, &body, prior)?);
    }
    let findings_json = serde_json::to_vec_pretty(&findings)
        .map_err(|e| PipelineError::Write { path: out.join("findings.json"), source: e.into() })?;
    // Names matter: the worker delivers every `*.dcm` of the folder.
    let files: [(&str, &[u8]); 5] = [
        ("seg.dcm", &encoded.seg),
        ("sr.dcm", &encoded.sr),
        ("mip.dcm", &encoded.mip),
        ("mip.png", &encoded.mip_png),
        ("findings.json", &findings_json),
    ];
    for (name, bytes) in files {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|source| PipelineError::Write { path: path.clone(), source })?;
        outputs.push(path);
    }
    if let Some(r) = &registration {
        let path = out.join("registration.json");
        let json =
            serde_json::to_vec_pretty(r).map_err(|e| PipelineError::Write { path: path.clone(), source: e.into() })?;
        std::fs::write(&path, json).map_err(|source| PipelineError::Write { path: path.clone(), source })?;
        outputs.push(path);
    }
    let t4 = Instant::now();
    let summary = RunSummary {
        pet_series_uid: input.pet_series_uid.clone(),
        ct_series_uid: input.ct_series_uid.clone(),
        suv_bw_factor: suv.factor,
        suv_rule: suv.rule,
        ct_dims: ct_series.volume.geometry().dims,
        pet_dims: pet_series.volume.geometry().dims,
        outputs,
        registration,
        lesion_count: findings.lesion_count,
        total_mtv_ml: findings.total_mtv_ml,
        total_tlg: findings.total_tlg,
        segments: methods,
        anomaly_score: findings.anomaly_score,
        uids: encoded.uids,
        algorithm_version,
        seconds: Timings {
            assemble: (t1 - t0).as_secs_f64(),
            calibrate: (t2 - t1).as_secs_f64(),
            register: (t_reg - t2).as_secs_f64(),
            resample: (t3 - t_reg).as_secs_f64(),
            infer: (t_infer - t3).as_secs_f64(),
            infer_parts: inferred.seconds,
            segment: (t_seg - t_infer).as_secs_f64(),
            quantify: (t_quant - t_seg).as_secs_f64(),
            encode: (t_enc - t_quant).as_secs_f64(),
            write: (t4 - t_enc).as_secs_f64(),
        },
    };
    let path = out.join("run.json");
    let json = serde_json::to_vec_pretty(&summary)
        .map_err(|e| PipelineError::Write { path: path.clone(), source: e.into() })?;
    std::fs::write(&path, json).map_err(|source| PipelineError::Write { path, source })?;
    Ok(summary)
}
