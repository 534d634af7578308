//! Ground truth: per-lesion measurements (true and as a perfect segmentation would see them on
//! the blurred, noise-free PET), the two reader masks, and the files under `truth/`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::anatomy::{Patient, Tissue};
use super::dicom::StudyInfo;
use super::grid::Grid;
use super::lesions::{CtEffect, Lesion, Site};
use super::pet::{PSF_FWHM_MM, RigidTransform, Uptake, gaussian_blur, kernel};
use super::rng::Stream;
use super::{Misalign, Phantom, PhantomError, PhantomOptions};
use crate::nifti;

/// Radius of the 1 cm^3 sphere of SUVpeak, in mm.
pub const SUV_PEAK_RADIUS_MM: f64 = 6.203_504_908_994;
/// First label of reader-only findings (not lesions) in the reader masks.
pub const READER_ONLY_LABEL_BASE: u8 = 200;

/// What a perfect segmentation measures on the blurred, noise-free PET.
#[derive(Debug, Clone)]
pub struct Observed {
    pub suv_max: f64,
    pub suv_mean: f64,
    pub suv_peak: f64,
    /// Blurred SUV at each voxel of the lesion's voxel list.
    pub blurred: Vec<f32>,
}

/// Offsets (di, dj, dk) of the voxels within `radius_mm` of a voxel centre.
fn ball_offsets(g: &Grid, radius_mm: f64) -> Vec<[i64; 3]> {
    let r = [0, 1, 2].map(|a| (radius_mm / g.spacing_mm[a]).floor() as i64);
    let mut v = Vec::new();
    for dk in -r[2]..=r[2] {
        for dj in -r[1]..=r[1] {
            for di in -r[0]..=r[0] {
                let d2 = (di as f64 * g.spacing_mm[0]).powi(2)
                    + (dj as f64 * g.spacing_mm[1]).powi(2)
                    + (dk as f64 * g.spacing_mm[2]).powi(2);
                if d2 <= radius_mm * radius_mm + 1e-9 {
                    v.push([di, dj, dk]);
                }
            }
        }
    }
    v
}

fn coords(g: &Grid, idx: usize) -> [i64; 3] {
    let i = idx % g.nx();
    let j = (idx / g.nx()) % g.ny();
    let k = idx / g.slice_len();
    [i as i64, j as i64, k as i64]
}

/// Blur the true SUV around each lesion (exactly as the whole volume would be, since the box
/// margin covers the kernel) and measure max, mean and peak inside the true mask.
pub fn observe(voxels: &[Vec<usize>], g: &Grid, true_suv: &[f32]) -> Vec<Observed> {
    let sigma_mm = PSF_FWHM_MM / 2.354_820_045_030_949;
    let sigma_vox = [0, 1, 2].map(|a| sigma_mm / g.spacing_mm[a]);
    let kr = [0, 1, 2].map(|a| (kernel(sigma_vox[a]).len() / 2) as i64);
    let ball = ball_offsets(g, SUV_PEAK_RADIUS_MM);
    let br = [0, 1, 2].map(|a| ball.iter().map(|o| o[a].abs()).max().unwrap_or(0));
    voxels
        .par_iter()
        .map(|list| {
            if list.is_empty() {
                return Observed { suv_max: 0.0, suv_mean: 0.0, suv_peak: 0.0, blurred: Vec::new() };
            }
            let mut lo = [i64::MAX; 3];
            let mut hi = [i64::MIN; 3];
            for &idx in list {
                let c = coords(g, idx);
                for a in 0..3 {
                    lo[a] = lo[a].min(c[a]);
                    hi[a] = hi[a].max(c[a]);
                }
            }
            let b0 = [0, 1, 2].map(|a| (lo[a] - kr[a] - br[a]).max(0));
            let b1 = [0, 1, 2].map(|a| (hi[a] + kr[a] + br[a]).min(g.dims[a] as i64 - 1));
            let bd = [0, 1, 2].map(|a| (b1[a] - b0[a] + 1) as usize);
            let mut sub = Vec::with_capacity(bd[0] * bd[1] * bd[2]);
            for k in b0[2]..=b1[2] {
                for j in b0[1]..=b1[1] {
                    let start = g.index(b0[0] as usize, j as usize, k as usize);
                    sub.extend_from_slice(&true_suv[start..start + bd[0]]);
                }
            }
            let blurred_box = gaussian_blur(&sub, bd, sigma_vox);
            let at = |c: [i64; 3]| -> Option<f32> {
                if (0..3).any(|a| c[a] < b0[a] || c[a] > b1[a]) {
                    return None;
                }
                let (i, j, k) = ((c[0] - b0[0]) as usize, (c[1] - b0[1]) as usize, (c[2] - b0[2]) as usize);
                Some(blurred_box[(k * bd[1] + j) * bd[0] + i])
            };
            let blurred: Vec<f32> = list.iter().map(|&idx| at(coords(g, idx)).unwrap_or(0.0)).collect();
            let suv_max = blurred.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
            let suv_mean = blurred.iter().map(|&v| v as f64).sum::<f64>() / blurred.len() as f64;
            let suv_peak = list
                .iter()
                .map(|&idx| {
                    let c = coords(g, idx);
                    let (mut s, mut n) = (0.0f64, 0usize);
                    for o in &ball {
                        if let Some(v) = at([c[0] + o[0], c[1] + o[1], c[2] + o[2]]) {
                            s += v as f64;
                            n += 1;
                        }
                    }
                    if n > 0 { s / n as f64 } else { 0.0 }
                })
                .fold(f64::MIN, f64::max);
            Observed { suv_max, suv_mean, suv_peak, blurred }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct ReaderFinding {
    pub label: u8,
    pub reader: &'static str,
    pub centre_mm: [f64; 3],
    pub volume_ml: f64,
    pub reason: &'static str,
}

pub struct Readers {
    pub sensitive: Vec<u8>,
    pub specific: Vec<u8>,
    pub marked_sensitive: Vec<bool>,
    pub marked_specific: Vec<bool>,
    pub false_positives: Vec<ReaderFinding>,
}

/// The two annotation sources. The high-sensitivity reader marks every lesion with any visible
/// contrast, with borders grown by about 3 mm, and sometimes a physiological focus; the
/// high-specificity reader marks only confident lesions (clear contrast, not tiny) and only
/// their core (blurred SUV above half the lesion's maximum).
pub fn readers(
    seed: u64,
    lesions: &[Lesion],
    voxels: &[Vec<usize>],
    observed: &[Observed],
    g: &Grid,
    labels: &[u8],
    lesion_ids: &[u8],
) -> Readers {
    let mut sensitive = vec![0u8; g.len()];
    let mut specific = vec![0u8; g.len()];
    let grow_mm = 2.5f64.max(1.05 * g.spacing_mm[0].min(g.spacing_mm[1]));
    let grow = ball_offsets(g, grow_mm);
    let mut marked_sensitive = Vec::new();
    let mut marked_specific = Vec::new();
    for ((l, list), obs) in lesions.iter().zip(voxels).zip(observed) {
        let volume_ml = list.len() as f64 * g.voxel_volume_ml();
        let sens = !list.is_empty() && obs.suv_max > 1.02 * l.background_suv;
        let spec = !list.is_empty() && obs.suv_max >= (2.0 * l.background_suv).max(2.5) && volume_ml >= 0.3;
        marked_sensitive.push(sens);
        marked_specific.push(spec);
        if sens {
            for &idx in list {
                sensitive[idx] = l.id;
            }
            for &idx in list {
                let c = coords(g, idx);
                for o in &grow {
                    let n = [c[0] + o[0], c[1] + o[1], c[2] + o[2]];
                    if (0..3).any(|a| n[a] < 0 || n[a] >= g.dims[a] as i64) {
                        continue;
                    }
                    let ni = g.index(n[0] as usize, n[1] as usize, n[2] as usize);
                    if lesion_ids[ni] == 0 && sensitive[ni] == 0 {
                        sensitive[ni] = l.id;
                    }
                }
            }
        }
        if spec {
            let cut = 0.5 * obs.suv_max as f32;
            for (&idx, &b) in list.iter().zip(&obs.blurred) {
                if b >= cut {
                    specific[idx] = l.id;
                }
            }
        }
    }
    // A physiological bowel focus read as a lesion by the sensitive reader.
    let mut false_positives = Vec::new();
    let mut s = Stream::new(seed, "reader-false-positive");
    if !lesions.is_empty() && s.bernoulli(0.7) {
        for _ in 0..2000 {
            let idx = s.range_usize(0, g.len());
            if labels[idx] != Tissue::Bowel as u8 {
                continue;
            }
            let c = coords(g, idx);
            let ball = ball_offsets(g, 6.0);
            let inside: Vec<usize> = ball
                .iter()
                .filter_map(|o| {
                    let n = [c[0] + o[0], c[1] + o[1], c[2] + o[2]];
                    ((0..3).all(|a| n[a] >= 0 && n[a] < g.dims[a] as i64))
                        .then(|| g.index(n[0] as usize, n[1] as usize, n[2] as usize))
                })
                .collect();
            if inside.iter().any(|&i| lesion_ids[i] != 0 || sensitive[i] != 0) {
                continue;
            }
            let label = READER_ONLY_LABEL_BASE;
            for &i in &inside {
                sensitive[i] = label;
            }
            false_positives.push(ReaderFinding {
                label,
                reader: "high_sensitivity",
                centre_mm: [g.x_mm(c[0] as usize), g.y_mm(c[1] as usize), g.z_mm(c[2] as usize)],
                volume_ml: inside.len() as f64 * g.voxel_volume_ml(),
                reason: "physiological bowel uptake read as a lesion",
            });
            break;
        }
    }
    Readers { sensitive, specific, marked_sensitive, marked_specific, false_positives }
}

#[derive(Debug, Clone, Serialize)]
pub struct LesionTruth {
    pub id: u8,
    pub site: Site,
    pub location: String,
    pub confounder: Option<&'static str>,
    pub shape: &'static str,
    pub ct_effect: CtEffect,
    pub borderline: bool,
    /// Centroid of the true mask (patient coordinates, LPS mm).
    pub centre_mm: [f64; 3],
    pub design_centre_mm: [f64; 3],
    pub design_radius_mm: f64,
    pub voxels: usize,
    pub volume_ml: f64,
    pub true_suv_max: f64,
    pub true_suv_mean: f64,
    /// True total lesion glycolysis (SUVmean x volume).
    pub true_tlg: f64,
    pub background_suv: f64,
    pub observed_suv_max: f64,
    pub observed_suv_mean: f64,
    pub observed_suv_peak: f64,
    pub marked_by: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GridTruth {
    pub dims: [usize; 3],
    pub spacing_mm: [f64; 3],
    pub origin_mm: [f64; 3],
    /// NIfTI RAS affine rows.
    pub ras_affine: [[f64; 4]; 3],
}

impl From<&Grid> for GridTruth {
    fn from(g: &Grid) -> Self {
        GridTruth {
            dims: g.dims,
            spacing_mm: g.spacing_mm,
            origin_mm: g.origin_mm,
            ras_affine: nifti::ras_affine(&g.geometry()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MisalignTruth {
    pub parameters: Misalign,
    /// Rotation centre (the CT volume centre), patient coordinates mm.
    pub centre_mm: [f64; 3],
    pub convention: &'static str,
    pub matrix_ct_to_pet: [[f64; 4]; 4],
    pub matrix_pet_to_ct: [[f64; 4]; 4],
}

#[derive(Debug, Clone, Serialize)]
pub struct PetTruth {
    pub units: &'static str,
    pub injected_dose_bq: f64,
    pub half_life_s: f64,
    pub injection_datetime: String,
    pub scan_start_datetime: String,
    pub decayed_dose_bq: f64,
    pub weight_kg: f64,
    /// SUVbw per Bq/mL.
    pub bqml_suv_bw_factor: f64,
    pub philips_suv_scale_factor: Option<f64>,
    pub philips_activity_concentration_factor: Option<f64>,
    pub psf_fwhm_mm: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub generator: &'static str,
    pub format_version: u32,
    pub seed: u64,
    pub profile: super::Profile,
    pub vendor: super::Vendor,
    pub normal: bool,
    /// Lesions asked for; fewer are placed when the field of view has no room for them.
    pub lesions_requested: usize,
    pub coordinate_system: &'static str,
    pub patient: Patient,
    pub study_instance_uid: String,
    pub ct_series_instance_uid: String,
    pub pt_series_instance_uid: String,
    pub ct_frame_of_reference_uid: String,
    pub pt_frame_of_reference_uid: String,
    /// Multiply rescaled PET pixel values (Bq/mL, or counts for CNTS) by this to get SUVbw.
    pub suv_bw_factor: f64,
    pub pet: PetTruth,
    pub ct_grid: GridTruth,
    pub pet_grid: GridTruth,
    pub misalignment: Option<MisalignTruth>,
    pub uptake_suv: Vec<(&'static str, f64)>,
    pub tissue_labels: Vec<(u8, &'static str)>,
    pub files: Vec<(&'static str, &'static str)>,
    pub readers: Vec<(&'static str, &'static str)>,
    pub definitions: Vec<(&'static str, &'static str)>,
    pub lesions: Vec<LesionTruth>,
    pub reader_only_findings: Vec<ReaderFinding>,
}

pub const FILE_LESIONS: &str = "lesions.nii.gz";
pub const FILE_SENSITIVE: &str = "reader_high_sensitivity.nii.gz";
pub const FILE_SPECIFIC: &str = "reader_high_specificity.nii.gz";
pub const FILE_TISSUES: &str = "tissues.nii.gz";
pub const FILE_SUV: &str = "suv_true.nii.gz";
pub const FILE_JSON: &str = "truth.json";

#[allow(clippy::too_many_arguments)]
pub fn build_truth(
    options: &PhantomOptions,
    patient: &Patient,
    study: &StudyInfo,
    uptake: &Uptake,
    ct: &Grid,
    pet: &Grid,
    lesions: &[Lesion],
    voxels: &[Vec<usize>],
    true_suv: &[f32],
    observed: &[Observed],
    readers: &Readers,
    motion: &RigidTransform,
    lesions_requested: usize,
) -> Truth {
    let lesion_truth = lesions
        .iter()
        .zip(voxels)
        .zip(observed)
        .enumerate()
        .map(|(n, ((l, list), obs))| {
            let mut c = [0.0; 3];
            let mut max = f64::MIN;
            let mut sum = 0.0;
            for &idx in list {
                let v = coords(ct, idx);
                c[0] += ct.x_mm(v[0] as usize);
                c[1] += ct.y_mm(v[1] as usize);
                c[2] += ct.z_mm(v[2] as usize);
                let s = true_suv[idx] as f64;
                max = max.max(s);
                sum += s;
            }
            let count = list.len().max(1) as f64;
            let volume_ml = list.len() as f64 * ct.voxel_volume_ml();
            let mut marked_by = Vec::new();
            if readers.marked_sensitive[n] {
                marked_by.push("high_sensitivity");
            }
            if readers.marked_specific[n] {
                marked_by.push("high_specificity");
            }
            LesionTruth {
                id: l.id,
                site: l.site,
                location: l.location.clone(),
                confounder: l.confounder,
                shape: l.shape,
                ct_effect: l.ct_effect,
                borderline: l.borderline,
                centre_mm: c.map(|v| v / count),
                design_centre_mm: l.design_centre_mm,
                design_radius_mm: l.radius_mm,
                voxels: list.len(),
                volume_ml,
                true_suv_max: max,
                true_suv_mean: sum / count,
                true_tlg: sum / count * volume_ml,
                background_suv: l.background_suv,
                observed_suv_max: obs.suv_max,
                observed_suv_mean: obs.suv_mean,
                observed_suv_peak: obs.suv_peak,
                marked_by,
            }
        })
        .collect();
    Truth {
        generator: "petct-node phantom",
        format_version: 1,
        seed: options.seed,
        profile: options.profile,
        vendor: options.vendor,
        normal: lesions.is_empty(),
        lesions_requested,
        coordinate_system: "DICOM patient coordinates (LPS, mm); NIfTI files use the equivalent RAS affine",
        patient: patient.clone(),
        study_instance_uid: study.study_uid.clone(),
        ct_series_instance_uid: study.ct_series_uid.clone(),
        pt_series_instance_uid: study.pt_series_uid.clone(),
        ct_frame_of_reference_uid: study.ct_for_uid.clone(),
        pt_frame_of_reference_uid: study.pt_for_uid.clone(),
        suv_bw_factor: study.suv_bw_factor,
        pet: PetTruth {
            units: study.units,
            injected_dose_bq: study.injected_dose_bq,
            half_life_s: study.half_life_s,
            injection_datetime: study.injection_dt(),
            scan_start_datetime: study.pet_start_dt(),
            decayed_dose_bq: study.decayed_dose_bq,
            weight_kg: study.weight_kg,
            bqml_suv_bw_factor: study.bqml_suv_factor,
            philips_suv_scale_factor: study.philips_suv_factor,
            philips_activity_concentration_factor: study.activity_concentration_factor,
            psf_fwhm_mm: PSF_FWHM_MM,
        },
        ct_grid: ct.into(),
        pet_grid: pet.into(),
        misalignment: options.misalign.map(|m| MisalignTruth {
            parameters: m,
            centre_mm: motion.centre_mm,
            convention: "x_pet = R (x_ct - c) + c + t, R = Rz(rz) Ry(ry) Rx(rx), angles in degrees about the patient x (L), y (P), z (S) axes",
            matrix_ct_to_pet: motion.matrix_ct_to_pet(),
            matrix_pet_to_ct: motion.matrix_pet_to_ct(),
        }),
        uptake_suv: uptake.table(),
        tissue_labels: Tissue::ALL.iter().map(|&t| (t as u8, t.name())).collect(),
        files: vec![
            ("lesions", FILE_LESIONS),
            ("reader_high_sensitivity", FILE_SENSITIVE),
            ("reader_high_specificity", FILE_SPECIFIC),
            ("tissues", FILE_TISSUES),
            ("suv_true", FILE_SUV),
        ],
        readers: vec![
            ("high_sensitivity", "marks every lesion with visible contrast, borders grown ~3 mm, may add physiological foci (labels >= 200)"),
            ("high_specificity", "marks only confident lesions (SUVmax >= max(2.5, 2x background), >= 0.3 mL), core above 50% of SUVmax"),
        ],
        definitions: vec![
            ("true_suv_max, true_suv_mean", "over the CT voxels of the true lesion mask, on the noiseless unblurred SUV (suv_true.nii.gz)"),
            ("observed_suv_max, observed_suv_mean", "over the true mask, on the noiseless SUV blurred by the 6 mm FWHM PSF (what a perfect segmentation measures)"),
            ("observed_suv_peak", "max over sphere centres inside the true mask of the mean blurred SUV in a 1 cm3 sphere (all voxels in the sphere, so a hot neighbour can raise it)"),
            ("centre_mm", "centroid of the true mask, DICOM patient coordinates (LPS) in mm"),
            ("suv_bw_factor", "rescaled PET pixel value (Bq/mL, or counts for CNTS) times this = SUVbw (g/mL)"),
        ],
        lesions: lesion_truth,
        reader_only_findings: readers.false_positives.clone(),
    }
}

/// Write the NIfTI files and truth.json; returns the truth.json path.
pub fn write_truth_files(ph: &Phantom, dir: &Path) -> Result<PathBuf, PhantomError> {
    let g = &ph.ct_grid.geometry();
    let write = |file: &str, data: &dyn Fn(&Path) -> std::io::Result<()>| {
        let path = dir.join(file);
        data(&path).map_err(PhantomError::io("writing", &path))
    };
    let jobs: Vec<Box<dyn Fn() -> Result<(), PhantomError> + Send + Sync>> = vec![
        Box::new(|| write(FILE_LESIONS, &|p| nifti::write(p, g, &ph.lesion_ids, "true lesion labels"))),
        Box::new(|| write(FILE_SENSITIVE, &|p| nifti::write(p, g, &ph.reader_sensitive, "high-sensitivity reader"))),
        Box::new(|| write(FILE_SPECIFIC, &|p| nifti::write(p, g, &ph.reader_specific, "high-specificity reader"))),
        Box::new(|| write(FILE_TISSUES, &|p| nifti::write(p, g, &ph.labels, "tissue labels"))),
        Box::new(|| write(FILE_SUV, &|p| nifti::write(p, g, &ph.true_suv, "noiseless unblurred SUVbw"))),
    ];
    jobs.par_iter().try_for_each(|job| job())?;
    let path = dir.join(FILE_JSON);
    let json =
        serde_json::to_vec_pretty(&ph.truth).map_err(|source| PhantomError::Json { path: path.clone(), source })?;
    std::fs::write(&path, json).map_err(PhantomError::io("writing", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ball_has_expected_volume() {
        let g = Grid { dims: [10, 10, 10], spacing_mm: [0.5, 0.5, 0.5], origin_mm: [0.0; 3] };
        let n = ball_offsets(&g, SUV_PEAK_RADIUS_MM).len() as f64;
        let ml = n * g.voxel_volume_ml();
        assert!((ml - 1.0).abs() < 0.03, "{ml}");
    }

    #[test]
    fn observed_stats_of_uniform_block() {
        // A uniform field: blur changes nothing away from the edges.
        let g = Grid { dims: [40, 40, 40], spacing_mm: [1.0; 3], origin_mm: [0.0; 3] };
        let suv = vec![2.0f32; g.len()];
        let list: Vec<usize> = (18..22)
            .flat_map(|k| (18..22).flat_map(move |j| (18..22).map(move |i| (i, j, k))))
            .map(|(i, j, k)| g.index(i, j, k))
            .collect();
        let o = observe(&[list], &g, &suv);
        assert!((o[0].suv_max - 2.0).abs() < 1e-5);
        assert!((o[0].suv_mean - 2.0).abs() < 1e-5);
        assert!((o[0].suv_peak - 2.0).abs() < 1e-5);
    }
}
