//! The offline pipeline on a folder (`petct-node run DIR --out OUT`): find the PET series and
//! its CT, assemble both, convert the PET to SUVbw, put it on the CT grid, and write what was
//! asked for. No network, no database. Later stages (inference, quantification, encoding)
//! continue from the aligned volumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::assemble::{self, AssembleError};
use crate::calibrate::{self, CalibrateError};
use crate::geometry::registration::{Registration, RegistrationError, RegistrationOptions, register_rigid};
use crate::geometry::{Rigid, resample_linear};
use crate::inspect::{self, InspectError};
use crate::nifti;
use crate::pet_header;

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
    pub seconds: Timings,
}

/// Limits beyond which a registration is an error rather than output: patient motion between
/// the CT and the PET of one study is centimetres and a few degrees, never more.
const MAX_TRANSLATION_MM: f64 = 60.0;
const MAX_ROTATION_DEG: f64 = 15.0;
const MIN_OVERLAP_FRACTION: f64 = 0.5;

fn check_registration(r: &Registration) -> Result<(), String> {
    let shift = r.translation_mm.iter().map(|v| v * v).sum::<f64>().sqrt();
    if shift > MAX_TRANSLATION_MM {
        return Err(format!("translation {shift:.1} mm exceeds {MAX_TRANSLATION_MM} mm"));
    }
    if let Some(a) = r.angles_deg.iter().find(|a| a.abs() > MAX_ROTATION_DEG) {
        return Err(format!("rotation {a:.1} degrees exceeds {MAX_ROTATION_DEG} degrees"));
    }
    if r.overlap_fraction < MIN_OVERLAP_FRACTION {
        return Err(format!("only {:.0} % of the CT samples overlap the PET", 100.0 * r.overlap_fraction));
    }
    if r.metric_final < r.metric_initial {
        return Err(format!("mutual information fell from {:.4} to {:.4}", r.metric_initial, r.metric_final));
    }
    Ok(())
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub assemble: f64,
    pub calibrate: f64,
    pub register: f64,
    pub resample: f64,
    pub write: f64,
}

/// Runs the pipeline on the first complete PET series (by UID) found under `dir`.
pub fn run(dir: &Path, out: &Path, export_volumes: bool) -> Result<RunSummary, PipelineError> {
    let t0 = Instant::now();
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
    let assembled = |s: &inspect::SeriesReport| {
        assemble::assemble(&s.paths)
            .map_err(|source| PipelineError::Assemble { series_uid: s.series_instance_uid.clone(), source })
    };
    let (ct_series, pet_series) = rayon::join(|| assembled(ct), || assembled(pet));
    let (ct_series, mut pet_series) = (ct_series?, pet_series?);
    let t1 = Instant::now();

    let calibrate_err = |source| PipelineError::Calibrate { series_uid: pet.series_instance_uid.clone(), source };
    let header = pet_header::series_pet_header(pet_series.headers.iter().map(|h| &**h)).map_err(calibrate_err)?;
    let suv = calibrate::suv_bw_factor(&header).map_err(calibrate_err)?;
    let factor = suv.factor as f32;
    use rayon::prelude::*;
    pet_series.volume.data_mut().par_iter_mut().for_each(|v| *v *= factor);
    let t2 = Instant::now();

    let registration = if needs_registration {
        let pair = || (pet.series_instance_uid.clone(), ct_uid.clone());
        let r = register_rigid(&ct_series.volume, &pet_series.volume, &RegistrationOptions::default())
            .map_err(|source| PipelineError::Registration { pet: pair().0, ct: pair().1, source })?;
        check_registration(&r).map_err(|reason| PipelineError::RegistrationRejected {
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

    std::fs::create_dir_all(out).map_err(|source| PipelineError::Write { path: out.to_path_buf(), source })?;
    let mut outputs = Vec::new();
    if export_volumes {
        let volumes = [
            ("ct_hu.nii.gz", &ct_series.volume, "CT in HU"),
            ("suv.nii.gz", &pet_series.volume, "PET SUVbw, native grid"),
            ("suv_on_ct.nii.gz", &suv_on_ct, "PET SUVbw on the CT grid"),
        ];
        for (name, volume, description) in volumes {
            let path = out.join(name);
            nifti::write(&path, volume.geometry(), volume.data(), description)
                .map_err(|source| PipelineError::Write { path: path.clone(), source })?;
            outputs.push(path);
        }
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
        pet_series_uid: pet.series_instance_uid.clone(),
        ct_series_uid: ct_uid,
        suv_bw_factor: suv.factor,
        suv_rule: suv.rule,
        ct_dims: ct_series.volume.geometry().dims,
        pet_dims: pet_series.volume.geometry().dims,
        outputs,
        registration,
        seconds: Timings {
            assemble: (t1 - t0).as_secs_f64(),
            calibrate: (t2 - t1).as_secs_f64(),
            register: (t_reg - t2).as_secs_f64(),
            resample: (t3 - t_reg).as_secs_f64(),
            write: (t4 - t3).as_secs_f64(),
        },
    };
    let path = out.join("run.json");
    let json = serde_json::to_vec_pretty(&summary)
        .map_err(|e| PipelineError::Write { path: path.clone(), source: e.into() })?;
    std::fs::write(&path, json).map_err(|source| PipelineError::Write { path, source })?;
    Ok(summary)
}
