//! Patient-level metrics of one predicted mask against one reference mask, as the autoPET
//! challenge defines them, and their Mean ± SD over patients.

use serde::Serialize;

use crate::quantify::{Components, Connectivity};

/// A binary mask (non-zero = inside) labelled once, to be compared with many others.
pub struct Labelled {
    pub mask: Vec<u8>,
    pub voxels: usize,
    components: Components,
    sizes: Vec<usize>,
}

impl Labelled {
    /// Labels `mask` (`(z, y, x)` on a grid of `dims` = `[nx, ny, nz]`).
    pub fn new(mask: Vec<u8>, dims: [usize; 3], connectivity: Connectivity) -> Self {
        let components = Components::new(&mask, dims, connectivity);
        let sizes = components.sizes();
        Self { voxels: sizes.iter().sum(), mask, components, sizes }
    }

    pub fn component_count(&self) -> usize {
        self.sizes.len()
    }
}

/// One (prediction, reference) pair on one patient. Volumes in mL; `None` where the metric is
/// undefined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairMetrics {
    /// 2|P∩R| / (|P| + |R|); undefined for an empty reference.
    pub dice: Option<f64>,
    /// Volume of the components of P that share no voxel with R.
    pub fpv_ml: f64,
    /// Volume of the components of R that share no voxel with P; undefined for an empty
    /// reference (such a case scores only the false-positive volume).
    pub fnv_ml: Option<f64>,
    /// Components of R overlapped by P / components of R.
    pub sensitivity: Option<f64>,
    /// Components of P overlapping R / components of P.
    pub precision: Option<f64>,
    pub ref_ml: f64,
    pub pred_ml: f64,
    /// |P∩R|.
    pub overlap_ml: f64,
    pub ref_components: usize,
    pub pred_components: usize,
    /// Components of R that P overlaps.
    pub detected_ref_components: usize,
    /// Components of P that overlap R.
    pub true_pred_components: usize,
}

/// `numerator / denominator`, undefined for a zero denominator.
fn ratio(numerator: usize, denominator: usize) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// The metrics of `pred` against `reference` (same grid), voxels of `voxel_ml`.
pub fn compare(pred: &Labelled, reference: &Labelled, voxel_ml: f64) -> PairMetrics {
    let (pred_in_ref, ref_in_pred) = rayon::join(
        || pred.components.overlap_counts(&reference.mask),
        || reference.components.overlap_counts(&pred.mask),
    );
    let overlap: usize = pred_in_ref.iter().sum();
    let missed = |sizes: &[usize], counts: &[usize]| -> usize {
        sizes.iter().zip(counts).filter(|(_, c)| **c == 0).map(|(s, _)| s).sum()
    };
    let touched = |counts: &[usize]| counts.iter().filter(|&&c| c > 0).count();
    let positive = reference.voxels > 0;
    let (detected, true_pred) = (touched(&ref_in_pred), touched(&pred_in_ref));
    PairMetrics {
        dice: positive.then(|| 2.0 * overlap as f64 / (pred.voxels + reference.voxels) as f64),
        fpv_ml: missed(&pred.sizes, &pred_in_ref) as f64 * voxel_ml,
        fnv_ml: positive.then(|| missed(&reference.sizes, &ref_in_pred) as f64 * voxel_ml),
        sensitivity: ratio(detected, reference.component_count()),
        precision: ratio(true_pred, pred.component_count()),
        ref_ml: reference.voxels as f64 * voxel_ml,
        pred_ml: pred.voxels as f64 * voxel_ml,
        overlap_ml: overlap as f64 * voxel_ml,
        ref_components: reference.component_count(),
        pred_components: pred.component_count(),
        detected_ref_components: detected,
        true_pred_components: true_pred,
    }
}

/// Mean and sample standard deviation (n − 1) of the defined values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub n: usize,
    /// `None` when no value is defined.
    pub mean: Option<f64>,
    /// `None` for fewer than two values.
    pub sd: Option<f64>,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Self {
        let v: Vec<f64> = values.into_iter().flatten().collect();
        let n = v.len();
        let mean = (n > 0).then(|| v.iter().sum::<f64>() / n as f64);
        let sd =
            mean.filter(|_| n > 1).map(|m| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Self { n, mean, sd }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIMS: [usize; 3] = [10, 8, 6];

    /// A mask with the boxes `[x0, x1) x [y0, y1) x [z0, z1)` set.
    fn boxes(list: &[[usize; 6]]) -> Vec<u8> {
        let [nx, ny, nz] = DIMS;
        let mut m = vec![0u8; nx * ny * nz];
        for b in list {
            for z in b[4]..b[5] {
                for y in b[2]..b[3] {
                    for x in b[0]..b[1] {
                        m[(z * ny + y) * nx + x] = 1;
                    }
                }
            }
        }
        m
    }

    fn labelled(list: &[[usize; 6]]) -> Labelled {
        Labelled::new(boxes(list), DIMS, Connectivity::Edges18)
    }

    #[test]
    fn two_lesions_one_found_one_false_positive() {
        // R: A (2x2x2 = 8) and B (1x1x1); P: A shifted by one in x (overlap 4) and C (3 voxels).
        let r = labelled(&[[1, 3, 1, 3, 1, 3], [8, 9, 6, 7, 4, 5]]);
        let p = labelled(&[[2, 4, 1, 3, 1, 3], [6, 9, 0, 1, 5, 6]]);
        let m = compare(&p, &r, 0.5);
        assert_eq!(m.dice, Some(2.0 * 4.0 / (11.0 + 9.0)));
        assert_eq!((m.fpv_ml, m.fnv_ml), (1.5, Some(0.5)));
        assert_eq!((m.sensitivity, m.precision), (Some(0.5), Some(0.5)));
        assert_eq!((m.ref_ml, m.pred_ml, m.overlap_ml), (4.5, 5.5, 2.0));
        assert_eq!((m.ref_components, m.pred_components), (2, 2));
    }

    #[test]
    fn empty_reference_scores_only_false_positives_and_empty_prediction_misses_everything() {
        let empty = labelled(&[]);
        let p = labelled(&[[0, 2, 0, 1, 0, 1]]);
        let m = compare(&p, &empty, 2.0);
        assert_eq!((m.dice, m.fpv_ml, m.fnv_ml, m.sensitivity, m.precision), (None, 4.0, None, None, Some(0.0)));
        let m = compare(&empty, &p, 2.0);
        assert_eq!(
            (m.dice, m.fpv_ml, m.fnv_ml, m.sensitivity, m.precision),
            (Some(0.0), 0.0, Some(4.0), Some(0.0), None)
        );
        let m = compare(&empty, &empty, 2.0);
        assert_eq!((m.dice, m.fpv_ml, m.fnv_ml, m.sensitivity, m.precision), (None, 0.0, None, None, None));
    }

    #[test]
    fn mean_and_sample_sd_skip_undefined_values() {
        let s = Stat::of([Some(1.0), None, Some(3.0)]);
        assert_eq!((s.n, s.mean, s.sd), (2, Some(2.0), Some(2f64.sqrt())));
        assert_eq!(Stat::of([Some(0.25)]), Stat { n: 1, mean: Some(0.25), sd: None });
        assert_eq!(Stat::of([None]), Stat { n: 0, mean: None, sd: None });
    }
}
