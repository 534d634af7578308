//! `petct-node demo`, the README's first command: a phantom study goes to the node over DICOM,
//! is processed, and the SEG, SR and MIP come back to the demo's own destination.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_demo_runs_end_to_end_and_prints_the_lesions() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("demo");
    let out = Command::new(bin()).args(["demo", "--dir"]).arg(&dir).output().unwrap();
    assert_success(&out, "petct-node demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}\n{stdout}");
    assert!(stderr.contains("[5/5] done"), "{stderr}");
    assert!(stdout.contains("SUVmax") && stdout.contains("SUVpeak") && stdout.contains("MTV"), "{stdout}");
    let count: usize = stdout
        .lines()
        .find_map(|l| l.split_once(" lesion(s)").and_then(|(n, _)| n.trim().parse().ok()))
        .expect("a lesion count line");
    assert!(count > 0, "{stdout}");

    // The destination got exactly the job's SEG, SR and MIP.
    let job = dir.join("node/results/job-1");
    let mut produced: Vec<String> = ["seg.dcm", "sr.dcm", "mip.dcm"].iter().map(|n| sop_uid(&job.join(n))).collect();
    let mut received: Vec<String> =
        std::fs::read_dir(dir.join("received/dicom")).unwrap().map(|e| sop_uid(&e.unwrap().path())).collect();
    produced.sort();
    received.sort();
    assert_eq!(received, produced);
    assert!(stdout.contains(&job.join("mip.png").display().to_string()), "{stdout}");
    assert!(job.join("mip.png").is_file());

    // A second run clears its own folder; a folder that is not a demo's is refused.
    let again = Command::new(bin()).args(["demo", "--dir"]).arg(&dir).output().unwrap();
    assert_success(&again, "petct-node demo (again)");
    let foreign = work.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("keep.txt"), "precious").unwrap();
    let refused = Command::new(bin()).args(["demo", "--dir"]).arg(&foreign).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an earlier demo's folder"));
    assert!(foreign.join("keep.txt").is_file());
}
