//! `petct-node inspect DIR`: every series found under a folder (loose files or the node's
//! store), its geometry and completeness, and the PET/CT pairing the node would make. Headers
//! only: no pixel is decoded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use rayon::prelude::*;
use serde::Serialize;

use crate::assemble;
use crate::ingest::acquired_at_ms;
use crate::pairing::{SeriesState, pair_ct};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading folder {path}: {source}")]
    Walk { path: PathBuf, source: std::io::Error },
}

/// One series as `inspect --json` prints it (field names are documented in the README).
#[derive(Debug, Clone, Serialize)]
pub struct SeriesReport {
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    pub modality: String,
    pub series_description: Option<String>,
    pub instances: usize,
    /// Columns, rows, slices; absent when the geometry is not a single volume.
    pub dims: Option<[usize; 3]>,
    pub spacing_mm: Option<[f64; 3]>,
    pub origin_mm: Option<[f64; 3]>,
    /// Row direction, column direction and slice normal (unit vectors, patient LPS).
    pub direction: Option<[[f64; 3]; 3]>,
    pub frame_of_reference_uid: Option<String>,
    /// By the node's rule: PET holds Number of Slices distinct Image Index values; other
    /// series form one gap-free volume.
    pub complete: bool,
    /// PET: Number of Slices (0054,0081).
    pub expected_slices: Option<i64>,
    /// PET: the CT series the node pairs it with, and whether registration is needed.
    pub paired_ct_series_uid: Option<String>,
    pub needs_registration: Option<bool>,
    /// PET: the factor that turns rescaled pixel values into SUVbw (g/mL), and the rule
    /// (units, decay correction, scan time source) that produced it.
    pub suv_bw_factor: Option<f64>,
    pub suv_rule: Option<String>,
    pub warnings: Vec<String>,
    /// Earliest acquisition date-time on a naive clock, for pairing by time.
    #[serde(skip)]
    acquired_at_ms: Option<i64>,
    /// The series' files, for the stages that read its pixels.
    #[serde(skip)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub series: Vec<SeriesReport>,
    /// Files under the folder that are not DICOM (or unreadable), with why.
    pub skipped_files: Vec<String>,
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let v = obj.get(tag)?.to_str().ok()?;
    let v = v.trim_matches([' ', '\0']);
    (!v.is_empty()).then(|| v.to_string())
}

fn int(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), InspectError> {
    let entries = std::fs::read_dir(dir).map_err(|source| InspectError::Walk { path: dir.into(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| InspectError::Walk { path: dir.into(), source })?;
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

pub fn inspect(dir: &Path) -> Result<Report, InspectError> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let read: Vec<(PathBuf, Result<DefaultDicomObject, String>)> = files
        .into_par_iter()
        .map(|p| {
            let r = OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(&p).map_err(|e| e.to_string());
            (p, r)
        })
        .collect();
    let mut skipped_files = Vec::new();
    let mut by_series: BTreeMap<String, Vec<(PathBuf, DefaultDicomObject)>> = BTreeMap::new();
    for (path, r) in read {
        match r {
            Ok(obj) => match text(&obj, tags::SERIES_INSTANCE_UID) {
                Some(uid) => by_series.entry(uid).or_default().push((path, obj)),
                None => skipped_files.push(format!("{}: no Series Instance UID", path.display())),
            },
            Err(e) => skipped_files.push(format!("{}: {e}", path.display())),
        }
    }

    let mut series: Vec<SeriesReport> = by_series.into_values().map(|files| report(&files)).collect();
    // Pairing as the node would do it, within each study, on the series found here.
    let states: Vec<(String, SeriesState)> = series.iter().map(|s| (s.study_instance_uid.clone(), state(s))).collect();
    for s in series.iter_mut().filter(|s| s.modality == "PT") {
        let study: Vec<SeriesState> =
            states.iter().filter(|(st, _)| *st == s.study_instance_uid).map(|(_, st)| st.clone()).collect();
        let me = state(s);
        if let Some((ct, needs_registration)) = pair_ct(&me, &study) {
            s.paired_ct_series_uid = Some(ct.uid.clone());
            s.needs_registration = Some(needs_registration);
        } else {
            s.warnings.push("no complete CT series in the same study to pair with".into());
        }
    }
    Ok(Report { series, skipped_files })
}

fn state(s: &SeriesReport) -> SeriesState {
    SeriesState {
        uid: s.series_instance_uid.clone(),
        modality: s.modality.clone(),
        frame_of_reference_uid: s.frame_of_reference_uid.clone(),
        number_of_slices: s.expected_slices,
        acquired_at: s.acquired_at_ms,
        instance_count: s.instances as i64,
        revision: 1,
        complete_revision: s.complete.then_some(1),
        last_received_at: 0,
    }
}

fn report(files: &[(PathBuf, DefaultDicomObject)]) -> SeriesReport {
    let first = &files[0].1;
    let modality = text(first, tags::MODALITY).unwrap_or_default();
    let mut warnings = Vec::new();
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let plan = assemble::plan(&paths);
    let paths = plan.as_ref().map(|p| p.paths()).unwrap_or(paths);
    let geometry = match &plan {
        Ok(p) => Some(p.geometry.clone()),
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    };
    let expected_slices = (modality == "PT").then(|| int(first, tags::NUMBER_OF_SLICES)).flatten();
    let complete = match expected_slices {
        Some(n) => {
            let mut indices: Vec<i64> = files.iter().filter_map(|(_, o)| int(o, tags::IMAGE_INDEX)).collect();
            indices.sort_unstable();
            indices.dedup();
            if (indices.len() as i64) < n {
                warnings.push(format!("{} of {n} PET slices (Image Index) present", indices.len()));
            }
            indices.len() as i64 >= n && geometry.is_some()
        }
        None => geometry.is_some(),
    };
    let suv = (modality == "PT").then(|| {
        crate::pet_header::series_pet_header(files.iter().map(|(_, o)| &**o))
            .and_then(|h| crate::calibrate::suv_bw_factor(&h))
    });
    let (suv_bw_factor, suv_rule) = match suv {
        Some(Ok(f)) => (Some(f.factor), Some(f.rule)),
        Some(Err(e)) => {
            warnings.push(format!("no SUV: {e}"));
            (None, None)
        }
        None => (None, None),
    };
    SeriesReport {
        suv_bw_factor,
        suv_rule,
        series_instance_uid: text(first, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        study_instance_uid: text(first, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        series_description: text(first, tags::SERIES_DESCRIPTION),
        instances: files.len(),
        dims: geometry.as_ref().map(|g| g.dims),
        spacing_mm: geometry.as_ref().map(|g| g.spacing_mm),
        origin_mm: geometry.as_ref().map(|g| g.origin_mm),
        direction: geometry.as_ref().map(|g| g.direction),
        frame_of_reference_uid: text(first, tags::FRAME_OF_REFERENCE_UID),
        complete,
        expected_slices,
        paired_ct_series_uid: None,
        needs_registration: None,
        warnings,
        modality,
        acquired_at_ms: files.iter().filter_map(|(_, o)| acquired_at_ms(o)).min(),
        paths,
    }
}
