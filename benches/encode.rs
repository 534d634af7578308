//! SEG + SR + MIP encoding of a `wholebody` phantom, timed (run through `bench/encode.sh`, which
//! sets PETCT_BENCH_STUDY and PETCT_BENCH_OUT and then builds the same SEG and SR with highdicom
//! from what this writes under PETCT_BENCH_OUT: the masks, the findings and the UIDs).

#[path = "../tests/common/encode_fixture.rs"]
mod fixture;

use std::path::PathBuf;
use std::time::Instant;

use dicom_dictionary_std::tags;
use petct_node::encode;

fn main() {
    let (Ok(study), Ok(out)) = (std::env::var("PETCT_BENCH_STUDY"), std::env::var("PETCT_BENCH_OUT")) else {
        eprintln!("set PETCT_BENCH_STUDY to a phantom study and PETCT_BENCH_OUT to a folder (bench/encode.sh does)");
        return;
    };
    let rounds: usize = std::env::var("PETCT_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let out = PathBuf::from(out);
    let (ct, pet, suv) = fixture::load(&PathBuf::from(study));
    let f = fixture::build(ct, pet, suv, false);
    let input = f.input("petct-node bench");
    let mut best = f64::MAX;
    let mut encoded = None;
    for _ in 0..rounds {
        let t0 = Instant::now();
        let e = encode::encode(&input).expect("encode");
        best = best.min(t0.elapsed().as_secs_f64());
        encoded = Some(e);
    }
    let e = encoded.expect("at least one round");
    std::fs::create_dir_all(&out).expect("output folder");
    for (name, bytes) in [("seg.dcm", &e.seg), ("sr.dcm", &e.sr), ("mip.dcm", &e.mip), ("mip.png", &e.mip_png)] {
        std::fs::write(out.join(name), bytes).expect("write");
    }
    for s in &f.segments {
        std::fs::write(out.join(format!("mask_{}.bin", s.number)), s.mask.data()).expect("write mask");
    }
    let sop = |h: &dicom_object::DefaultDicomObject| {
        h.get(tags::SOP_INSTANCE_UID).and_then(|e| e.to_str().ok()).map(|s| s.trim_end_matches('\0').to_string())
    };
    let expected = serde_json::json!({
        "dims": f.ct.volume.geometry().dims,
        "ct_paths": f.ct.paths,
        "pet_paths": f.pet.paths,
        "ct_sop_instance_uids": f.ct.headers.iter().map(sop).collect::<Vec<_>>(),
        "segments": f.segments.iter().map(|s| serde_json::json!({
            "number": s.number, "label": s.label, "algorithm_name": s.algorithm_name,
            "algorithm_version": s.algorithm_version,
        })).collect::<Vec<_>>(),
        "findings": f.findings,
        "uids": e.uids,
    });
    std::fs::write(out.join("expected.json"), serde_json::to_vec(&expected).expect("json")).expect("write");
    let frames = f
        .segments
        .iter()
        .map(|s| (0..s.mask.geometry().dims[2]).filter(|&k| s.mask.slice(k).iter().any(|&v| v != 0)).count())
        .sum::<usize>();
    println!(
        "petct-node encode (SEG+SR+MIP): {best:.4} s; CT {:?}, {} segments, {frames} frames, {} lesions; SEG {} KiB, SR {} KiB",
        f.ct.volume.geometry().dims,
        f.segments.len(),
        f.findings.lesion_count,
        e.seg.len() / 1024,
        e.sr.len() / 1024
    );
}
