//! `petct-node phantom`: synthetic whole-body FDG PET/CT studies with known ground truth.
//!
//! One call writes a study (`DIR/CT/*.dcm`, `DIR/PT/*.dcm`) and its truth (`DIR/truth/`):
//! lesion and reader masks on the CT grid as NIfTI, the noiseless SUV and tissue labels, and
//! `truth.json`. Everything is derived from the options, so the same options give the same bytes.
//!
//! The pipeline is: patient parameters (seeded) -> analytic anatomy rasterised on the CT grid
//! (tissue labels) -> lesions -> CT (HU + noise) and true SUV -> PET forward model on the PET
//! grid (voxel averaging, optional rigid misalignment, 6 mm PSF, count-dependent noise) ->
//! DICOM files + truth.

mod anatomy;
mod ct;
pub(crate) mod dicom;
mod grid;
mod lesions;
mod pet;
mod render;
mod rng;
mod truth;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

pub use anatomy::Tissue;
pub use grid::Grid;
pub use truth::{LesionTruth, Truth};

/// Scanner model whose DICOM conventions the PET series follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vendor {
    /// Siemens: Units BQML, scan time = Series Time.
    Siemens,
    /// GE: Units BQML, Series Time after the acquisition, private post-injection date-time.
    Ge,
    /// Philips: Units BQML plus the Philips private group.
    PhilipsBqml,
    /// Philips: Units CNTS with private SUV and activity-concentration scale factors.
    PhilipsCnts,
}

/// Study size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// 128x128x48 CT covering the torso (lung apices to bladder) for fast tests.
    Small,
    /// About 512x512x300 CT at 0.98x0.98x3 mm, head to proximal thighs.
    Wholebody,
}

/// Rigid motion of the patient between CT and PET: translation in mm, rotation in degrees
/// (applied as Rz*Ry*Rx about the CT volume centre).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Misalign {
    pub tx_mm: f64,
    pub ty_mm: f64,
    pub tz_mm: f64,
    pub rx_deg: f64,
    pub ry_deg: f64,
    pub rz_deg: f64,
}

impl std::str::FromStr for Misalign {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values: Vec<f64> = s
            .split(',')
            .map(|v| v.trim().parse::<f64>().map_err(|e| format!("misalign value {v:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let [tx_mm, ty_mm, tz_mm, rx_deg, ry_deg, rz_deg] = values[..] else {
            return Err(format!(
                "misalign needs 6 comma-separated numbers TX,TY,TZ,RX,RY,RZ (mm, degrees), got {}",
                values.len()
            ));
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err("misalign values must be finite".into());
        }
        if [tx_mm, ty_mm, tz_mm].iter().any(|v| v.abs() > 100.0)
            || [rx_deg, ry_deg, rz_deg].iter().any(|v| v.abs() > 45.0)
        {
            return Err("misalign limited to 100 mm and 45 degrees per axis".into());
        }
        Ok(Misalign { tx_mm, ty_mm, tz_mm, rx_deg, ry_deg, rz_deg })
    }
}

impl std::fmt::Display for Misalign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{},{},{},{}", self.tx_mm, self.ty_mm, self.tz_mm, self.rx_deg, self.ry_deg, self.rz_deg)
    }
}

/// Command-line arguments of `petct-node phantom`.
#[derive(Debug, Clone, clap::Args)]
pub struct PhantomArgs {
    /// Output directory (CT/, PT/ and truth/ are created inside).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed gives the same patient; different seeds give different patients.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Study size.
    #[arg(long, value_enum, default_value_t = Profile::Wholebody)]
    pub profile: Profile,
    /// Vendor conventions of the PET series.
    #[arg(long, value_enum, default_value_t = Vendor::Siemens)]
    pub vendor: Vendor,
    /// Write a lesion-free (normal) study.
    #[arg(long, conflicts_with = "lesions")]
    pub normal: bool,
    /// Number of lesions (default: 4 to 12, chosen by the seed).
    #[arg(long)]
    pub lesions: Option<usize>,
    /// Move the PET by a rigid transform TX,TY,TZ,RX,RY,RZ (mm, degrees); PET then gets its
    /// own Frame of Reference.
    #[arg(long, allow_hyphen_values = true)]
    pub misalign: Option<Misalign>,
    /// Number of CT slices (default: the profile's), centred on the profile's range.
    #[arg(long, hide = true)]
    pub slices: Option<usize>,
    /// Also render preview PNGs (coronal PET MIP, CT slices) into this directory.
    #[arg(long, hide = true)]
    pub preview: Option<PathBuf>,
}

/// Options of [`generate`], independent of the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomOptions {
    pub seed: u64,
    pub profile: Profile,
    pub vendor: Vendor,
    /// `Some(0)` or `normal` gives a lesion-free study; `None` lets the seed choose.
    pub lesions: Option<usize>,
    pub normal: bool,
    pub misalign: Option<Misalign>,
    pub ct_slices: Option<usize>,
    pub preview_dir: Option<PathBuf>,
}

impl PhantomOptions {
    /// Defaults for a seed and profile: Siemens, seed-chosen lesions, aligned.
    pub fn new(seed: u64, profile: Profile) -> Self {
        PhantomOptions {
            seed,
            profile,
            vendor: Vendor::Siemens,
            lesions: None,
            normal: false,
            misalign: None,
            ct_slices: None,
            preview_dir: None,
        }
    }

    /// A stable text of every option that changes the output (UIDs are derived from it).
    fn fingerprint(&self) -> String {
        format!(
            "seed={};profile={:?};vendor={:?};lesions={:?};normal={};misalign={};slices={:?}",
            self.seed,
            self.profile,
            self.vendor,
            self.lesions,
            self.normal,
            self.misalign.map(|m| m.to_string()).unwrap_or_default(),
            self.ct_slices
        )
    }
}

impl From<&PhantomArgs> for PhantomOptions {
    fn from(a: &PhantomArgs) -> Self {
        PhantomOptions {
            seed: a.seed,
            profile: a.profile,
            vendor: a.vendor,
            lesions: a.lesions,
            normal: a.normal,
            misalign: a.misalign,
            ct_slices: a.slices,
            preview_dir: a.preview.clone(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub out_dir: PathBuf,
    pub study_instance_uid: String,
    pub ct_series_instance_uid: String,
    pub pt_series_instance_uid: String,
    pub ct_frame_of_reference_uid: String,
    pub pt_frame_of_reference_uid: String,
    /// Number of CT files written (one per slice).
    pub ct_slices: usize,
    /// Number of PT files written (one per slice).
    pub pt_slices: usize,
    pub lesions: usize,
    /// Factor from rescaled PET pixel values (Bq/mL, or counts for `philips-cnts`) to SUVbw.
    pub suv_bw_factor: f64,
    pub truth_json: PathBuf,
    pub elapsed_s: f64,
}

/// Errors of the phantom generator. All are permanent (bad options or an unwritable output
/// directory); none is worth retrying as is.
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("invalid phantom options: {0}")]
    InvalidOptions(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building DICOM {what}: {message}")]
    Dicom { what: String, message: String },
    #[error("encoding {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing PNG {path}: {message}")]
    Png { path: PathBuf, message: String },
}

impl PhantomError {
    /// Whether retrying the same call could succeed (only I/O might be transient).
    pub fn is_retryable(&self) -> bool {
        matches!(self, PhantomError::Io { .. })
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PhantomError {
        let path = path.to_path_buf();
        move |source| PhantomError::Io { action, path, source }
    }
}

/// Generate the study described by `args` into `args.out`.
pub fn run(args: &PhantomArgs) -> Result<Summary, PhantomError> {
    generate(&PhantomOptions::from(args), &args.out)
}

/// Everything the generator computes, in memory, before anything is written.
pub struct Phantom {
    pub options: PhantomOptions,
    pub patient: anatomy::Patient,
    pub study: dicom::StudyInfo,
    pub ct_grid: Grid,
    pub pet_grid: Grid,
    /// Tissue label per CT voxel (see [`Tissue`]); lesions are not labels here.
    pub labels: Vec<u8>,
    /// Lesion id per CT voxel (0 = none; ids are 1-based indices into `truth.lesions`).
    pub lesion_ids: Vec<u8>,
    /// Noiseless, unblurred SUVbw per CT voxel (lesions included).
    pub true_suv: Vec<f32>,
    /// CT stored values (HU + 1024), int16.
    pub ct_stored: Vec<i16>,
    /// Reconstructed PET in SUVbw (blurred, noisy) on the PET grid.
    pub pet_suv: Vec<f32>,
    /// High-sensitivity and high-specificity reader masks on the CT grid.
    pub reader_sensitive: Vec<u8>,
    pub reader_specific: Vec<u8>,
    pub truth: Truth,
    /// Where the previews cut: the liver's centre (z, mm) and a coronal plane (y, mm).
    model_liver_z: Option<f64>,
    coronal_y_mm: f64,
}

/// Build the phantom in memory (no files).
pub fn build(options: &PhantomOptions) -> Result<Phantom, PhantomError> {
    validate(options)?;
    let patient = anatomy::Patient::from_seed(options.seed);
    let ct_grid = grid::ct_grid(options.profile, &patient, options.ct_slices)?;
    let pet_grid = grid::pet_grid(options.profile, options.vendor, &ct_grid);
    let model = anatomy::Model::new(&patient);
    let labels = model.rasterize(&ct_grid);
    let lesion_count = if options.normal {
        0
    } else {
        options.lesions.unwrap_or_else(|| rng::Stream::new(options.seed, "lesion-count").range_usize(4, 13))
    };
    let uptake = pet::Uptake::from_patient(options.seed);
    let lesion_set = lesions::place(options.seed, lesion_count, &model, &uptake, &ct_grid, &labels);
    let (lesion_ids, lesion_voxels) = lesions::rasterize(&lesion_set, &ct_grid);
    let true_suv = pet::true_suv(&uptake, &model, &ct_grid, &labels, &lesion_ids, &lesion_set);
    let ct_stored = ct::synthesize(options.seed, &ct_grid, &labels, &lesion_ids, &lesion_set);
    let motion = pet::RigidTransform::from_misalign(options.misalign, &ct_grid);
    let pet_suv = pet::forward(options.seed, patient.weight_kg, &ct_grid, &pet_grid, &true_suv, &motion);
    let study = dicom::StudyInfo::new(options, &patient, &ct_grid, &pet_grid);
    let observed = truth::observe(&lesion_voxels, &ct_grid, &true_suv);
    let readers = truth::readers(options.seed, &lesion_set, &lesion_voxels, &observed, &ct_grid, &labels, &lesion_ids);
    let truth = truth::build_truth(
        options,
        &patient,
        &study,
        &uptake,
        &ct_grid,
        &pet_grid,
        &lesion_set,
        &lesion_voxels,
        &true_suv,
        &observed,
        &readers,
        &motion,
        lesion_count,
    );
    let liver = model.landmarks.liver.first().map(|e| model.to_patient(e.c));
    let kidney = model.landmarks.kidneys.first().map(|e| model.to_patient(e.c));
    Ok(Phantom {
        options: options.clone(),
        patient,
        study,
        ct_grid,
        pet_grid,
        labels,
        lesion_ids,
        true_suv,
        ct_stored,
        pet_suv,
        reader_sensitive: readers.sensitive,
        reader_specific: readers.specific,
        truth,
        // A third of the way from the kidney to the liver centre: kidneys, liver, spleen,
        // bowel and spine in one slice.
        model_liver_z: liver.zip(kidney).map(|(l, k)| k[2] + (l[2] - k[2]) / 3.0),
        coronal_y_mm: model.landmarks.kidneys.first().map(|k| model.to_patient(k.c)[1]).unwrap_or(0.0),
    })
}

fn validate(options: &PhantomOptions) -> Result<(), PhantomError> {
    if options.normal && options.lesions.is_some_and(|n| n > 0) {
        return Err(PhantomError::InvalidOptions("--normal and --lesions N (N > 0) contradict each other".into()));
    }
    if options.lesions.is_some_and(|n| n > lesions::MAX_LESIONS) {
        return Err(PhantomError::InvalidOptions(format!("at most {} lesions", lesions::MAX_LESIONS)));
    }
    if let Some(n) = options.ct_slices
        && !(8..=1000).contains(&n)
    {
        return Err(PhantomError::InvalidOptions(format!("CT slices must be 8..=1000, got {n}")));
    }
    Ok(())
}

/// Generate a study into `out_dir` (created if missing).
pub fn generate(options: &PhantomOptions, out_dir: &Path) -> Result<Summary, PhantomError> {
    let start = Instant::now();
    let phantom = build(options)?;
    let study = &phantom.study;
    let ct_dir = out_dir.join("CT");
    let pt_dir = out_dir.join("PT");
    let truth_dir = out_dir.join("truth");
    for dir in [&ct_dir, &pt_dir, &truth_dir] {
        std::fs::create_dir_all(dir).map_err(PhantomError::io("creating directory", dir))?;
    }
    let (dicom_result, truth_result) = rayon::join(
        || -> Result<(usize, usize), PhantomError> {
            let ct = dicom::write_ct_series(study, &phantom, &ct_dir)?;
            let pt = dicom::write_pt_series(study, &phantom, &pt_dir)?;
            Ok((ct, pt))
        },
        || truth::write_truth_files(&phantom, &truth_dir),
    );
    let (ct_slices, pt_slices) = dicom_result?;
    let truth_json = truth_result?;
    if let Some(dir) = &options.preview_dir {
        render::write_previews(&phantom, dir)?;
    }
    Ok(Summary {
        out_dir: out_dir.to_path_buf(),
        study_instance_uid: study.study_uid.clone(),
        ct_series_instance_uid: study.ct_series_uid.clone(),
        pt_series_instance_uid: study.pt_series_uid.clone(),
        ct_frame_of_reference_uid: study.ct_for_uid.clone(),
        pt_frame_of_reference_uid: study.pt_for_uid.clone(),
        ct_slices,
        pt_slices,
        lesions: phantom.truth.lesions.len(),
        suv_bw_factor: phantom.truth.suv_bw_factor,
        truth_json,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}
