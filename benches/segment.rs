//! Classical segmentation and quantification of one phantom study, timed per stage. Set
//! PETCT_BENCH_STUDY to a folder written by `petct-node phantom` (CT/ and PT/ inside), e.g.
//! `petct-node phantom --profile wholebody --seed 7 --out /tmp/wb7`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use petct_node::geometry::{Rigid, resample_linear};
use petct_node::quantify::{MaskSource, quantify};
use petct_node::segment::{SegmentOptions, body_mask, classical};
use petct_node::{assemble, calibrate, pet_header};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("series folder").map(|e| e.expect("entry").path()).collect();
    v.sort();
    v
}

fn best<T>(rounds: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut out = None;
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let t0 = Instant::now();
        out = Some(f());
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (best, out.expect("at least one round"))
}

fn main() {
    let Ok(dir) = std::env::var("PETCT_BENCH_STUDY") else {
        eprintln!("set PETCT_BENCH_STUDY to a phantom study folder (petct-node phantom --out DIR)");
        return;
    };
    let rounds: usize = std::env::var("PETCT_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let dir = PathBuf::from(dir);
    let ct = assemble::assemble(&files(&dir.join("CT"))).expect("CT");
    let mut pet = assemble::assemble(&files(&dir.join("PT"))).expect("PET");
    let header = pet_header::series_pet_header(pet.headers.iter().map(|h| &**h)).expect("PET header");
    let factor = calibrate::suv_bw_factor(&header).expect("SUV factor").factor as f32;
    pet.volume.data_mut().iter_mut().for_each(|v| *v *= factor);
    let suv = resample_linear(&pet.volume, ct.volume.geometry(), &Rigid::IDENTITY, 0.0);
    let opts = SegmentOptions::default();
    let (t_body, body) = best(rounds, || body_mask(&ct.volume, opts.body_hu_threshold).expect("body"));
    let (t_seg, mask) = best(rounds, || classical(&suv, &ct.volume, &opts).expect("segment"));
    let source = MaskSource { segment: 1, method: "classical" };
    let (t_quant, (_, findings)) = best(rounds, || quantify(&mask, &suv, opts.connectivity, source).expect("quantify"));
    let [nx, ny, nz] = ct.volume.geometry().dims;
    println!(
        "CT {nx}x{ny}x{nz}: body mask {t_body:.3} s ({} voxels), classical (incl. body mask) {t_seg:.3} s, \
         quantify {t_quant:.3} s ({} regions, {:.1} mL, {} threads)",
        body.data().iter().filter(|&&v| v != 0).count(),
        findings.lesion_count,
        findings.total_mtv_ml,
        rayon::current_num_threads()
    );
}
