//! Series completion and PET/CT pairing: PET completes on its last slice, CT after its quiet
//! period, and exactly one job is queued per pair whatever the arrival order.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rand::seq::SliceRandom;
use serde_json::Value;

fn series_state(node: &Node, series_uid: &str) -> Option<Value> {
    node.studies().iter().flat_map(|s| s["series"].as_array().unwrap().clone()).find(|s| s["series_uid"] == series_uid)
}

/// Sends `files` shuffled, split over `associations` concurrent storescu processes.
fn send_shuffled(node: &Node, files: &[PathBuf], associations: usize) {
    let mut files = files.to_vec();
    files.shuffle(&mut rand::rng());
    let per = files.len().div_ceil(associations);
    let children: Vec<_> = files
        .chunks(per)
        .map(|chunk| {
            Command::new("storescu")
                .args(["-aet", "STORESCU", "-aec", "PETCT_NODE", "127.0.0.1", &node.port.to_string()])
                .args(chunk)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        assert_success(&c.wait_with_output().unwrap(), "storescu");
    }
}

#[test]
fn pet_completes_on_its_last_slice_without_waiting() {
    require_tool("storescu");
    // A quiet period far longer than the test: only the slice count can complete the PET.
    let node = Node::start(NodeOptions::new(Backend::Sqlite));
    let work = tempfile::tempdir().unwrap();
    let (study, frame) = (new_uid(), new_uid());
    let pet = SeriesSpec::new("PT", &study, &frame, 9);
    let files = write_series(&pet, &work.path().join("pt"));
    let ct = SeriesSpec::new("CT", &study, &frame, 5);
    let ct_files = write_series(&ct, &work.path().join("ct"));
    assert_success(&node.storescu("STORESCU", &files[..8], &[]), "storescu");
    assert_success(&node.storescu("STORESCU", &ct_files, &[]), "storescu");
    assert_eq!(series_state(&node, &pet.series_uid).unwrap()["complete"], false, "8 of 9 slices");
    assert_success(&node.storescu("STORESCU", &files[8..], &[]), "storescu");
    let s = series_state(&node, &pet.series_uid).unwrap();
    assert_eq!(s["complete"], true, "PET not complete right after its last slice: {s}");
    assert_eq!(s["number_of_slices"], 9);
    // The CT is still in its quiet period, so no job yet.
    assert_eq!(series_state(&node, &ct.series_uid).unwrap()["complete"], false);
    assert!(node.jobs().is_empty());
}

fn one_job_per_pair(backend: Backend, pet_first: bool) {
    require_tool("storescu");
    let mut opts = NodeOptions::new(backend);
    opts.quiet_period_s = 1.0;
    let node = Node::start(opts);
    let work = tempfile::tempdir().unwrap();
    let (study, frame) = (new_uid(), new_uid());
    let pet = SeriesSpec::new("PT", &study, &frame, 24);
    let ct = SeriesSpec::new("CT", &study, &frame, 40);
    let pet_files = write_series(&pet, &work.path().join("pt"));
    let ct_files = write_series(&ct, &work.path().join("ct"));
    if pet_first {
        send_shuffled(&node, &pet_files, 3);
        send_shuffled(&node, &ct_files, 3);
    } else {
        send_shuffled(&node, &ct_files, 3);
        send_shuffled(&node, &pet_files, 3);
    }
    let jobs = node.wait_jobs(Duration::from_secs(30), |j| !j.is_empty());
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    // Several quiet periods and sweeps later, still exactly one.
    std::thread::sleep(Duration::from_secs(3));
    let jobs = node.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!(job["state"], "queued");
    assert_eq!(job["pet_series_uid"], pet.series_uid.as_str());
    assert_eq!(job["ct_series_uid"], ct.series_uid.as_str());
    assert_eq!(job["needs_registration"], false);

    // Re-sending identical instances changes nothing.
    send_shuffled(&node, &pet_files, 2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.jobs().len(), 1);

    // A late CT instance supersedes the queued job; a new one follows after the quiet period.
    let mut late = ct.clone();
    late.slices = 41;
    let late_file = work.path().join("late.dcm");
    write_part10(instance(&late, 40, &new_uid()), &late_file);
    assert_success(&node.storescu("STORESCU", &[late_file], &[]), "late instance");
    let jobs = node.wait_jobs(Duration::from_secs(30), |j| j.len() == 2);
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "superseded");
    assert_eq!(jobs[0]["superseded_by"], jobs[1]["id"]);
    assert_eq!(jobs[1]["state"], "queued");
    assert!(jobs[1]["ct_revision"].as_i64() > jobs[0]["ct_revision"].as_i64());
}

#[test]
fn one_job_per_pair_pet_before_ct_sqlite() {
    one_job_per_pair(Backend::Sqlite, true);
}

#[test]
fn one_job_per_pair_ct_before_pet_sqlite() {
    one_job_per_pair(Backend::Sqlite, false);
}

#[test]
fn one_job_per_pair_pet_before_ct_postgres() {
    one_job_per_pair(Backend::Postgres, true);
}

#[test]
fn one_job_per_pair_ct_before_pet_postgres() {
    one_job_per_pair(Backend::Postgres, false);
}

#[test]
fn without_a_shared_frame_of_reference_the_closest_ct_is_paired_for_registration() {
    require_tool("storescu");
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.quiet_period_s = 0.5;
    let node = Node::start(opts);
    let work = tempfile::tempdir().unwrap();
    let study = new_uid();
    let mut pet = SeriesSpec::new("PT", &study, &new_uid(), 6);
    pet.time = "101500".into();
    let mut near = SeriesSpec::new("CT", &study, &new_uid(), 4);
    near.time = "101000".into();
    let mut far = SeriesSpec::new("CT", &study, &new_uid(), 4);
    far.time = "080000".into();
    for (s, d) in [(&near, "near"), (&far, "far"), (&pet, "pt")] {
        send_shuffled(&node, &write_series(s, &work.path().join(d)), 1);
    }
    let jobs = node.wait_jobs(Duration::from_secs(30), |j| !j.is_empty());
    std::thread::sleep(Duration::from_secs(1));
    let jobs = if jobs.len() == 1 { node.jobs() } else { jobs };
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["ct_series_uid"], near.series_uid.as_str());
    assert_eq!(jobs[0]["needs_registration"], true);
}
