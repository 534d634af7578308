//! The pipeline's `infer` stage: the configured models on one study. Channels go onto each
//! model's grid, cropped to the body's bounding box plus a margin (outside it the inputs are
//! padded as air; the windows are placed on the crop, which instance-normalised nets notice:
//! docs/models.md), the anomaly model runs first and its probability map becomes
//! the prior of the segmentation models, and the masks come back onto the CT grid. Probabilities
//! stay on the model grid (a CT-grid map of floats is 315 MB for a 512x512x300 CT); the anomaly
//! map goes onto the CT grid only when it is exported.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::draw::draw;
use super::shape::ct_blob;
use super::{Channels, InferError, Models, Source};
use crate::geometry::model_grid::{from_grid, mask_to_grid, model_grid, to_grid};
use crate::geometry::{Rigid, resample_linear};
use crate::quantify::Mask;
use crate::volume::{Geometry, Volume};

/// What the CT reads in air.
const AIR_HU: f32 = -1000.0;
/// Kept around the body's bounding box on the model grid, so that windows at the body's edge see
/// the same air a whole-grid pass would.
const CROP_MARGIN_MM: f64 = 16.0;

/// One segmentation model's result on the CT grid.
#[derive(Debug)]
pub struct SegmentationResult {
    pub name: String,
    pub version: String,
    pub annotation_source: Option<String>,
    /// The probability drawn as the manifest's `draw` says, on the CT grid, inside the body.
    pub mask: Mask,
}

/// The anomaly model's result.
#[derive(Debug)]
pub struct AnomalyResult {
    pub name: String,
    pub version: String,
    /// Voxel anomaly probability on the whole (uncropped) model grid, as `run --export-volumes`
    /// writes it for training.
    pub on_model_grid: Volume<f32>,
    pub score: f64,
}

impl AnomalyResult {
    /// The voxel anomaly probability on the CT grid `ct`, 0 outside `body` (on that grid).
    pub fn probability_on(&self, ct: &Geometry, body: &Mask) -> Volume<f32> {
        inside(from_grid(&self.on_model_grid, ct), body)
    }
}

/// Seconds one part of the stage took: the channels on a model grid, or one model (its windows
/// and its result back on the grid it is kept on), so an admin sees what each model costs.
#[derive(Debug, Clone, Serialize)]
pub struct PartSeconds {
    pub part: String,
    pub seconds: f64,
}

#[derive(Debug, Default)]
pub struct Inferred {
    pub anomaly: Option<AnomalyResult>,
    /// In configuration order.
    pub segmentations: Vec<SegmentationResult>,
    /// In the order they ran.
    pub seconds: Vec<PartSeconds>,
}

/// One model grid's channels, cropped.
struct GridChannels {
    /// The whole model grid.
    full: Geometry,
    suv: Volume<f32>,
    ct_hu: Volume<f32>,
    body: Mask,
    /// Only when a model on this grid takes it.
    ct_blob: Option<Volume<f32>>,
}

impl GridChannels {
    fn new(suv_on_ct: &Volume<f32>, ct_hu: &Volume<f32>, body: &Mask, spacing_mm: [f64; 3], with_blob: bool) -> Self {
        let full = model_grid(ct_hu.geometry(), spacing_mm);
        let body_full = mask_to_grid(body, &full);
        let grid = crop_to(&body_full, CROP_MARGIN_MM);
        let (suv, ct_hu) = rayon::join(|| to_grid(suv_on_ct, &grid, 0.0), || to_grid(ct_hu, &grid, AIR_HU));
        let body = crop(&body_full, &grid);
        // Computed within the body's box, which the crop holds whole: the same values as on the
        // whole grid (`run --export-volumes`, what training reads).
        let ct_blob = with_blob.then(|| ct_blob(&ct_hu, &body));
        Self { full, suv, ct_hu, body, ct_blob }
    }

    fn channels<'a>(&'a self, anomaly_prior: Option<&'a Volume<f32>>) -> Channels<'a> {
        Channels { suv: &self.suv, ct_hu: &self.ct_hu, anomaly_prior, ct_blob: self.ct_blob.as_ref() }
    }
}

/// The sub-grid of `mask`'s grid that holds its foreground plus `margin_mm` (the whole grid when
/// the mask is empty).
pub(super) fn crop_to(mask: &Mask, margin_mm: f64) -> Geometry {
    let g = mask.geometry();
    let [nx, ny, _] = g.dims;
    let (lo, hi) = mask
        .data()
        .par_chunks_exact(nx * ny)
        .enumerate()
        .map(|(k, slice)| {
            let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
            for (j, row) in slice.chunks_exact(nx).enumerate() {
                if let (Some(a), Some(b)) = (row.iter().position(|&v| v != 0), row.iter().rposition(|&v| v != 0)) {
                    lo = [lo[0].min(a), lo[1].min(j), lo[2].min(k)];
                    hi = [hi[0].max(b), hi[1].max(j), hi[2].max(k)];
                }
            }
            (lo, hi)
        })
        .reduce(
            || ([usize::MAX; 3], [0; 3]),
            |(a, b), (c, d)| (std::array::from_fn(|i| a[i].min(c[i])), std::array::from_fn(|i| b[i].max(d[i]))),
        );
    if lo[0] == usize::MAX {
        return g.clone();
    }
    let margin: [usize; 3] = std::array::from_fn(|a| (margin_mm / g.spacing_mm[a]).ceil() as usize);
    let first: [usize; 3] = std::array::from_fn(|a| lo[a].saturating_sub(margin[a]));
    let last: [usize; 3] = std::array::from_fn(|a| (hi[a] + margin[a]).min(g.dims[a] - 1));
    Geometry {
        dims: std::array::from_fn(|a| last[a] - first[a] + 1),
        origin_mm: g.index_to_patient(first.map(|i| i as f64)),
        ..g.clone()
    }
}

/// `volume` (on a grid) read on a sub-grid of it.
pub(super) fn crop<T: Copy + Default + Send + Sync>(volume: &Volume<T>, sub: &Geometry) -> Volume<T> {
    let g = volume.geometry();
    let first = g.patient_to_index(sub.origin_mm).map(|v| v.round() as usize);
    let [nx, ny, _] = g.dims;
    let [sx, sy, _] = sub.dims;
    let mut data = vec![T::default(); sub.voxel_count().unwrap_or(0)];
    data.par_chunks_mut(sx * sy).enumerate().for_each(|(k, slice)| {
        for (j, row) in slice.chunks_exact_mut(sx).enumerate() {
            let start = ((first[2] + k) * ny + first[1] + j) * nx + first[0];
            row.copy_from_slice(&volume.data()[start..start + sx]);
        }
    });
    // `sub` sized `data`.
    Volume::new(sub.clone(), data).expect("cropped volume matches its geometry")
}

/// Runs every configured model on the study: `suv_on_ct` (SUVbw on the CT grid), `ct_hu` and the
/// `body` mask on the CT grid.
pub fn run_models(
    models: &mut Models,
    suv_on_ct: &Volume<f32>,
    ct_hu: &Volume<f32>,
    body: &Mask,
) -> Result<Inferred, InferError> {
    let mut inferred = Inferred::default();
    let took = |seconds: &mut Vec<PartSeconds>, part: String, since: Instant| {
        seconds.push(PartSeconds { part, seconds: since.elapsed().as_secs_f64() });
    };
    // One set of channels per distinct model spacing.
    let mut grids: Vec<([f64; 3], GridChannels)> = Vec::new();
    let blob_at: Vec<[f64; 3]> = models
        .iter()
        .map(|m| m.manifest())
        .filter(|m| m.inputs.iter().any(|i| i.source == Source::CtBlob))
        .map(|m| m.spacing_mm)
        .collect();
    let channels_at = |grids: &mut Vec<([f64; 3], GridChannels)>, seconds: &mut Vec<PartSeconds>, spacing: [f64; 3]| {
        if let Some(i) = grids.iter().position(|(s, _)| *s == spacing) {
            return i;
        }
        let t = Instant::now();
        grids.push((spacing, GridChannels::new(suv_on_ct, ct_hu, body, spacing, blob_at.contains(&spacing))));
        tracing::debug!(?spacing, seconds = t.elapsed().as_secs_f64(), "channels on the model grid");
        took(seconds, format!("channels on the {spacing:?} mm grid"), t);
        grids.len() - 1
    };
    // The prior on its own (cropped) grid, to be resampled onto the segmentation models' grids.
    let mut prior: Option<Volume<f32>> = None;
    if let Some(model) = models.anomaly() {
        let i = channels_at(&mut grids, &mut inferred.seconds, model.manifest().spacing_mm);
        let g = &grids[i].1;
        let channels = g.channels(None);
        let t = Instant::now();
        let map = model.anomaly(&channels, &g.body)?;
        tracing::debug!(model = model.name(), seconds = t.elapsed().as_secs_f64(), "windows");
        inferred.anomaly = Some(AnomalyResult {
            name: model.name().to_string(),
            version: model.manifest().version.clone(),
            on_model_grid: resample_linear(&map.probability, &g.full, &Rigid::IDENTITY, 0.0),
            score: map.score,
        });
        prior = Some(map.probability);
        took(&mut inferred.seconds, model.name().to_string(), t);
    }
    for model in models.segmentation() {
        let i = channels_at(&mut grids, &mut inferred.seconds, model.manifest().spacing_mm);
        let g = &grids[i].1;
        let prior_here = prior.as_ref().map(|p| {
            if p.geometry() == g.suv.geometry() {
                p.clone()
            } else {
                resample_linear(p, g.suv.geometry(), &Rigid::IDENTITY, 0.0)
            }
        });
        let channels = g.channels(prior_here.as_ref());
        let t = Instant::now();
        let p = model.segment(&channels)?;
        tracing::debug!(model = model.name(), seconds = t.elapsed().as_secs_f64(), "windows");
        let t_back = Instant::now();
        let threshold = model.manifest().threshold.unwrap_or(0.5) as f32;
        let mut mask = draw(model.manifest().draw(), &p, ct_hu, threshold);
        mask.data_mut().par_iter_mut().zip(body.data().par_iter()).for_each(|(m, &b)| *m &= u8::from(b != 0));
        inferred.segmentations.push(SegmentationResult {
            name: model.name().to_string(),
            version: model.manifest().version.clone(),
            annotation_source: model.manifest().annotation_source.clone(),
            mask,
        });
        tracing::debug!(model = model.name(), seconds = t_back.elapsed().as_secs_f64(), "back on the CT grid");
        took(&mut inferred.seconds, model.name().to_string(), t);
    }
    Ok(inferred)
}

/// `map` set to 0 outside `body` (same grid).
fn inside(mut map: Volume<f32>, body: &Mask) -> Volume<f32> {
    map.data_mut().par_iter_mut().zip(body.data().par_iter()).for_each(|(v, &b)| {
        if b == 0 {
            *v = 0.0;
        }
    });
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crop_holds_the_foreground_and_its_margin() {
        let g = Geometry {
            dims: [20, 10, 8],
            spacing_mm: [4.0, 4.0, 4.0],
            origin_mm: [-40.0, 0.0, 100.0],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        };
        let mut data = vec![0u8; 20 * 10 * 8];
        data[(3 * 10 + 4) * 20 + 9] = 1;
        data[(5 * 10 + 6) * 20 + 12] = 1;
        let mask = Volume::new(g.clone(), data).unwrap();
        let sub = crop_to(&mask, 8.0);
        // x 9..12 ± 2, y 4..6 ± 2, z 3..5 ± 2 (7 is the last slice).
        assert_eq!(sub.dims, [8, 7, 7]);
        assert_eq!(sub.origin_mm, g.index_to_patient([7.0, 2.0, 1.0]));
        let cropped = crop(&mask, &sub);
        assert_eq!(cropped.data().iter().filter(|&&v| v != 0).count(), 2);
        assert_eq!(cropped.data()[(2 * 7 + 2) * 8 + 2], 1);
        let empty = Volume::new(g.clone(), vec![0u8; 1600]).unwrap();
        assert_eq!(crop_to(&empty, 8.0), g);
    }
}
