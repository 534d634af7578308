//! Orthanc as the sending PACS: a study uploaded to Orthanc is pushed to the node with
//! `/modalities/{id}/store`, as auto-routing does; the node completes it and queues its job.

mod common;

use std::time::Duration;

use common::*;

fn orthanc_pushes_a_study(backend: Backend, test_name: &str) {
    if !in_private_network(test_name) {
        return;
    }
    let mut opts = NodeOptions::new(backend);
    opts.quiet_period_s = 1.0;
    opts.peers.push(("ORTHANC".into(), Some("127.0.0.1".into())));
    let node = Node::start(opts);
    let orthanc = Orthanc::start(&[("petct", "PETCT_NODE", node.port)]);

    let work = tempfile::tempdir().unwrap();
    let (study, frame) = (new_uid(), new_uid());
    let pet = SeriesSpec::new("PT", &study, &frame, 20);
    let ct = SeriesSpec::new("CT", &study, &frame, 30);
    let mut files = write_series(&pet, &work.path().join("pt"));
    files.extend(write_series(&ct, &work.path().join("ct")));
    let mut orthanc_study = String::new();
    for f in &files {
        let answer = orthanc.post("/instances", &format!("@{}", f.display()));
        orthanc_study = answer["ParentStudy"].as_str().expect("upload answer").to_string();
    }
    let answer = orthanc.post("/modalities/petct/store", &orthanc_study);
    assert_eq!(answer["FailedInstancesCount"], 0, "{answer}\n{}", orthanc.log());
    assert_eq!(answer["InstancesCount"], 50, "{answer}");

    let jobs = node.wait_jobs(Duration::from_secs(30), |j| !j.is_empty());
    assert_eq!(jobs.len(), 1, "{jobs:?}\n{}", node.log());
    assert_eq!(jobs[0]["pet_series_uid"], pet.series_uid.as_str());
    assert_eq!(jobs[0]["ct_series_uid"], ct.series_uid.as_str());
    let studies = node.studies();
    assert_eq!(studies.len(), 1);
    let series = studies[0]["series"].as_array().unwrap();
    assert!(series.iter().all(|s| s["complete"] == true), "{series:?}");
    let counts: Vec<i64> = series.iter().map(|s| s["instance_count"].as_i64().unwrap()).collect();
    assert_eq!(counts.iter().sum::<i64>(), 50);
    assert!(node.log().contains("calling_ae=ORTHANC"));
}

#[test]
fn orthanc_pushes_a_study_sqlite() {
    orthanc_pushes_a_study(Backend::Sqlite, "orthanc_pushes_a_study_sqlite");
}

#[test]
fn orthanc_pushes_a_study_postgres() {
    orthanc_pushes_a_study(Backend::Postgres, "orthanc_pushes_a_study_postgres");
}

/// Writes a `small` phantom study with the product's own generator.
fn phantom(dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(bin())
        .args(["phantom", "--profile", "small", "--seed", "11", "--out"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    assert_success(&out, "petct-node phantom");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dcm_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_str().unwrap().split('\\').map(|x| x.trim().parse().unwrap()).collect()
}

#[test]
fn orthanc_accepts_a_phantom_study_and_routes_it_to_the_node() {
    if !in_private_network("orthanc_accepts_a_phantom_study_and_routes_it_to_the_node") {
        return;
    }
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.quiet_period_s = 1.0;
    opts.peers.push(("ORTHANC".into(), Some("127.0.0.1".into())));
    let node = Node::start(opts);
    let orthanc = Orthanc::start(&[("petct", "PETCT_NODE", node.port)]);
    let work = tempfile::tempdir().unwrap();
    let summary = phantom(work.path(), &[]);
    let files: Vec<_> =
        dcm_files(&work.path().join("CT")).into_iter().chain(dcm_files(&work.path().join("PT"))).collect();
    for f in &files {
        orthanc.post("/instances", &format!("@{}", f.display()));
    }
    // Orthanc shows one study with one CT and one PT series.
    let studies = orthanc.get("/studies").unwrap();
    assert_eq!(studies.as_array().unwrap().len(), 1, "{studies}");
    let study_id = studies[0].as_str().unwrap();
    let study = orthanc.get(&format!("/studies/{study_id}")).unwrap();
    assert_eq!(study["MainDicomTags"]["StudyInstanceUID"], summary["study_instance_uid"]);
    let mut modalities = Vec::new();
    let mut geometry = Vec::new();
    for s in study["Series"].as_array().unwrap() {
        let series = orthanc.get(&format!("/series/{}", s.as_str().unwrap())).unwrap();
        let modality = series["MainDicomTags"]["Modality"].as_str().unwrap().to_string();
        let instances = series["Instances"].as_array().unwrap();
        let expected = if modality == "CT" { &summary["ct_slices"] } else { &summary["pt_slices"] };
        assert_eq!(instances.len() as u64, expected.as_u64().unwrap(), "{modality}");
        // Frame of reference and the z extent of the series, as a viewer would read them.
        let mut z = Vec::new();
        let mut frame = String::new();
        let mut orientation = Vec::new();
        for i in instances {
            let tags = orthanc.get(&format!("/instances/{}/simplified-tags", i.as_str().unwrap())).unwrap();
            z.push(numbers(&tags["ImagePositionPatient"])[2]);
            frame = tags["FrameOfReferenceUID"].as_str().unwrap().to_string();
            orientation = numbers(&tags["ImageOrientationPatient"]);
        }
        let (lo, hi) = z.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        geometry.push((modality.clone(), frame, orientation, lo, hi));
        modalities.push(modality);
    }
    modalities.sort();
    assert_eq!(modalities, ["CT", "PT"]);
    let (ct, pt) = if geometry[0].0 == "CT" { (&geometry[0], &geometry[1]) } else { (&geometry[1], &geometry[0]) };
    assert_eq!(ct.1, pt.1, "PET and CT share one frame of reference");
    assert_eq!(ct.2, pt.2, "same orientation");
    // The PET covers the CT's axial range (within one CT slice).
    assert!(pt.3 <= ct.3 + 13.0 && pt.4 >= ct.4 - 13.0, "PET z {}..{} vs CT z {}..{}", pt.3, pt.4, ct.3, ct.4);

    // Auto-routing: Orthanc pushes the study to the node, which pairs it without registration.
    let answer = orthanc.post("/modalities/petct/store", study_id);
    assert_eq!(answer["FailedInstancesCount"], 0, "{answer}");
    let jobs = node.wait_jobs(Duration::from_secs(30), |j| !j.is_empty());
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["pet_series_uid"], summary["pt_series_instance_uid"]);
    assert_eq!(jobs[0]["ct_series_uid"], summary["ct_series_instance_uid"]);
    assert_eq!(jobs[0]["needs_registration"], false);
}

#[test]
fn a_misaligned_phantom_is_paired_for_registration() {
    require_tool("storescu");
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.quiet_period_s = 0.5;
    let node = Node::start(opts);
    let work = tempfile::tempdir().unwrap();
    let summary = phantom(work.path(), &["--misalign", "10,-5,8,2,0,3"]);
    assert_ne!(summary["pt_frame_of_reference_uid"], summary["ct_frame_of_reference_uid"]);
    let files: Vec<_> =
        dcm_files(&work.path().join("PT")).into_iter().chain(dcm_files(&work.path().join("CT"))).collect();
    assert_success(&node.storescu("STORESCU", &files, &[]), "storescu");
    let jobs = node.wait_jobs(Duration::from_secs(30), |j| !j.is_empty());
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["needs_registration"], true);
}
