//! Inputs of the encoder built from a phantom study without the segmentation stage: the CT and
//! PET assembled by the library, the SUV on the CT grid, and two threshold segments (SUV above
//! 2.5 and above 4), whose 6-connected components of the first are the lesions, measured here
//! with simple code. Shared by tests/encode.rs and benches/encode.rs.

use std::path::{Path, PathBuf};

use petct_node::assemble::{self, Series};
use petct_node::encode::{EncodeInput, Segment};
use petct_node::geometry::{Rigid, resample_linear};
use petct_node::quantify::{Findings, Lesion};
use petct_node::volume::Volume;
use petct_node::{calibrate, pet_header};

pub struct Fixture {
    pub ct: Series,
    pub pet: Series,
    pub suv_on_ct: Volume<f32>,
    pub labels: Volume<u32>,
    pub segments: Vec<Segment>,
    pub findings: Findings,
}

impl Fixture {
    /// The encoder's input built from this fixture.
    pub fn input<'a>(&'a self, algorithm_version: &'a str) -> EncodeInput<'a> {
        EncodeInput {
            ct: &self.ct,
            pet: &self.pet,
            suv_on_ct: &self.suv_on_ct,
            labels: &self.labels,
            segments: &self.segments,
            findings: &self.findings,
            algorithm_version,
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("series folder").map(|e| e.expect("entry").path()).collect();
    v.sort();
    v
}

/// The CT, the PET and the SUV on the CT grid of a phantom study folder.
pub fn load(study: &Path) -> (Series, Series, Volume<f32>) {
    let ct = assemble::assemble(&files(&study.join("CT"))).expect("assemble CT");
    let mut pet = assemble::assemble(&files(&study.join("PT"))).expect("assemble PET");
    let header = pet_header::series_pet_header(pet.headers.iter().map(|h| &**h)).expect("PET header");
    let factor = calibrate::suv_bw_factor(&header).expect("SUV factor").factor as f32;
    pet.volume.data_mut().iter_mut().for_each(|v| *v *= factor);
    let suv = resample_linear(&pet.volume, ct.volume.geometry(), &Rigid::IDENTITY, 0.0);
    (ct, pet, suv)
}

fn threshold(suv: &Volume<f32>, at: f32) -> Volume<u8> {
    let data = suv.data().iter().map(|v| u8::from(*v > at)).collect();
    Volume::new(suv.geometry().clone(), data).expect("mask")
}

/// 6-connected components of `mask`: component ids (1-based, in scan order) and their voxels.
fn components(mask: &Volume<u8>) -> (Vec<u32>, Vec<Vec<usize>>) {
    let [nx, ny, nz] = mask.geometry().dims;
    let mut ids = vec![0u32; mask.data().len()];
    let mut all = Vec::new();
    for seed in 0..ids.len() {
        if mask.data()[seed] == 0 || ids[seed] != 0 {
            continue;
        }
        let id = all.len() as u32 + 1;
        let (mut stack, mut voxels) = (vec![seed], Vec::new());
        ids[seed] = id;
        while let Some(v) = stack.pop() {
            voxels.push(v);
            let (i, j, k) = (v % nx, (v / nx) % ny, v / (nx * ny));
            let mut visit = |n: usize| {
                if mask.data()[n] != 0 && ids[n] == 0 {
                    ids[n] = id;
                    stack.push(n);
                }
            };
            if i > 0 {
                visit(v - 1);
            }
            if i + 1 < nx {
                visit(v + 1);
            }
            if j > 0 {
                visit(v - nx);
            }
            if j + 1 < ny {
                visit(v + nx);
            }
            if k > 0 {
                visit(v - nx * ny);
            }
            if k + 1 < nz {
                visit(v + nx * ny);
            }
        }
        all.push(voxels);
    }
    (ids, all)
}

/// Segments at SUV 2.5 and 4 (the second empty too when `empty`), lesions from the first.
pub fn build(ct: Series, pet: Series, suv_on_ct: Volume<f32>, empty: bool) -> Fixture {
    let g = ct.volume.geometry().clone();
    let (low, high) = if empty { (f32::INFINITY, f32::INFINITY) } else { (2.5, 4.0) };
    let segment = |number: u16, at: f32| Segment {
        number,
        label: format!("SUV > {at}"),
        algorithm_name: format!("fixed threshold {at}"),
        algorithm_version: "1".into(),
        description: Some("test fixture".into()),
        mask: threshold(&suv_on_ct, at),
    };
    let segments = vec![segment(1, low), segment(2, high)];
    let (_, comps) = components(&segments[0].mask);
    let voxel_ml = g.spacing_mm.iter().product::<f64>() / 1000.0;
    let [nx, ny, _] = g.dims;
    let mut lesions: Vec<Lesion> = comps
        .iter()
        .map(|voxels| {
            let values: Vec<f64> = voxels.iter().map(|&v| f64::from(suv_on_ct.data()[v])).collect();
            let suv_max = values.iter().copied().fold(f64::MIN, f64::max);
            let suv_mean = values.iter().sum::<f64>() / values.len() as f64;
            let hot: Vec<f64> = values.iter().copied().filter(|v| *v >= 0.9 * suv_max).collect();
            let volume_ml = voxels.len() as f64 * voxel_ml;
            let ijk = |v: usize| [v % nx, (v / nx) % ny, v / (nx * ny)];
            let mut bbox = [[usize::MAX; 3], [0; 3]];
            let mut sum = [0.0; 3];
            for &v in voxels {
                let p = ijk(v);
                for a in 0..3 {
                    bbox[0][a] = bbox[0][a].min(p[a]);
                    bbox[1][a] = bbox[1][a].max(p[a]);
                    sum[a] += p[a] as f64;
                }
            }
            let n = voxels.len() as f64;
            let in_high = voxels.iter().any(|&v| segments[1].mask.data()[v] != 0);
            Lesion {
                label: 0,
                voxels: voxels.len(),
                volume_ml,
                suv_max,
                suv_mean,
                suv_peak: hot.iter().sum::<f64>() / hot.len() as f64,
                tlg: suv_mean * volume_ml,
                centroid_mm: g.index_to_patient([sum[0] / n, sum[1] / n, sum[2] / n]),
                bbox,
                segments: if in_high { vec![1, 2] } else { vec![1] },
                detected_by: segments.iter().take(if in_high { 2 } else { 1 }).map(|s| s.label.clone()).collect(),
            }
        })
        .collect();
    // Labels in order of decreasing SUVmax, as quantify numbers them.
    let mut order: Vec<usize> = (0..lesions.len()).collect();
    order.sort_by(|a, b| lesions[*b].suv_max.total_cmp(&lesions[*a].suv_max));
    let mut labels = vec![0u32; g.dims.iter().product()];
    for (rank, &c) in order.iter().enumerate() {
        lesions[c].label = rank as u32 + 1;
        for &v in &comps[c] {
            labels[v] = rank as u32 + 1;
        }
    }
    lesions.sort_by_key(|l| l.label);
    let findings = Findings {
        lesion_count: lesions.len(),
        total_mtv_ml: lesions.iter().map(|l| l.volume_ml).sum(),
        total_tlg: lesions.iter().map(|l| l.tlg).sum(),
        anomaly_score: (!empty).then_some(0.8125),
        lesions,
    };
    Fixture { ct, pet, suv_on_ct, labels: Volume::new(g, labels).expect("labels"), segments, findings }
}
