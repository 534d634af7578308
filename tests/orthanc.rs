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
