//! Workers and delivery: a phantom study received over DICOM runs to `succeeded` and its results
//! reach a DCMTK storescp destination; deliveries to a destination that is down retry with
//! backoff and arrive exactly once when it comes up; a worker killed with SIGKILL loses its
//! lease and another node process finishes the job; leases are fenced; `jobs retry`; the SCU
//! against storescp, Orthanc and our own SCP.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use petct_node::db::{Db, InstanceRecord};
use petct_node::dimse::scu::{self, ScuSettings};
use petct_node::ids::AeTitle;
use petct_node::queue::{DeliveryOutcome, JobFate, ResultFile};
use serde_json::Value;

/// Short leases and backoffs so the tests see expiry and retries within seconds.
const FAST_WORKER: &str = "count = 1\nlease_timeout_s = 3\nheartbeat_interval_s = 0.5\npoll_interval_s = 0.2\n\
                           initial_backoff_s = 0.5\nmax_backoff_s = 2\n";
const FAST_DELIVERY: &str = "[delivery]\nmax_attempts = 50\ninitial_backoff_s = 0.3\nmax_backoff_s = 1.2\n\
                             connect_timeout_s = 2\ntimeout_s = 10\n";

fn phantom(dir: &Path, seed: &str) -> Value {
    let out =
        Command::new(bin()).args(["phantom", "--profile", "small", "--seed", seed, "--out"]).arg(dir).output().unwrap();
    assert_success(&out, "petct-node phantom");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn send_study(node: &Node, study: &Path) {
    for modality in ["CT", "PT"] {
        assert_success(&node.storescu("STORESCU", &dcm_files(&study.join(modality)), &[]), "storescu");
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(f)
}

/// DCMTK's storescp writing every received instance to its own file (`+uf`: a second copy of an
/// instance would be a second file). Binds every interface: private network only.
struct StoreScp {
    child: Child,
    dir: tempfile::TempDir,
}

impl StoreScp {
    fn start(port: u16) -> Self {
        require_tool("storescp");
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("storescp")
            .args(["-aet", "STORESCP", "+uf", "-od"])
            .arg(dir.path())
            .arg(port.to_string())
            // DCMTK otherwise stalls on its own small responses (see bench/ingest.sh).
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "storescp did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir }
    }

    /// How many times each SOP Instance UID arrived.
    fn received(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for f in dcm_files(self.dir.path()) {
            *counts.entry(sop_uid(&f)).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn destination_toml(port: u16) -> String {
    format!(
        "{FAST_DELIVERY}\n[[destinations]]\nname = \"scp\"\nae_title = \"STORESCP\"\n\
         host = \"127.0.0.1\"\nport = {port}\n"
    )
}

fn job_dir(node: &Node, job: &Value) -> PathBuf {
    node.storage().join(format!("results/job-{}", job["id"]))
}

/// The SOP Instance UIDs of the SEG, SR and MIP a job produced (all three must be there).
fn result_uids(dir: &Path) -> Vec<String> {
    ["seg.dcm", "sr.dcm", "mip.dcm"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            assert!(path.is_file(), "{} missing", path.display());
            sop_uid(&path)
        })
        .collect()
}

fn processed_and_delivered(backend: Backend, test_name: &str) {
    if !in_private_network(test_name) {
        return;
    }
    let port = free_port();
    let scp = StoreScp::start(port);
    let mut opts = NodeOptions::new(backend);
    opts.quiet_period_s = 1.0;
    opts.worker = FAST_WORKER.into();
    opts.extra_toml = destination_toml(port);
    let node = Node::start(opts);
    let work = tempfile::tempdir().unwrap();
    let summary = phantom(work.path(), "31");
    let t0 = Instant::now();
    send_study(&node, work.path());
    let jobs = node.wait_jobs(Duration::from_secs(300), |j| {
        j.len() == 1 && ["succeeded", "failed", "dead"].contains(&j[0]["state"].as_str().unwrap())
    });
    let job = &jobs[0];
    assert_eq!(job["state"], "succeeded", "{job:#}\n{}", node.log());
    eprintln!("job succeeded {:.1} s after the first instance was sent: {job}", t0.elapsed().as_secs_f64());
    assert_eq!(job["pet_series_uid"], summary["pt_series_instance_uid"]);
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["stage"], "done");
    assert!(job["last_error"].is_null(), "{job}");
    assert!(job["process_ms"].as_i64().unwrap() > 0);
    let dir = job_dir(&node, job);
    assert!(dir.join("run.json").is_file(), "the pipeline wrote nothing into {}", dir.display());
    // The SEG, SR and MIP reached the destination once each.
    let produced = result_uids(&dir);
    let received = scp.received();
    eprintln!("{} result object(s) produced, {} received by storescp", produced.len(), received.len());
    assert_eq!(received.len(), produced.len(), "received {received:?}, produced {produced:?}");
    for uid in &produced {
        assert_eq!(received.get(uid), Some(&1), "{uid} not received exactly once: {received:?}");
    }
    assert_eq!(job["deliveries"][0]["state"], "sent", "{job}");
    // A succeeded job is not retried.
    let out = Command::new(bin())
        .args(["jobs", "retry", &job["id"].to_string(), "--config"])
        .arg(&node.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is succeeded"), "{out:?}");
}

#[test]
fn a_phantom_study_is_processed_and_its_results_delivered_sqlite() {
    processed_and_delivered(Backend::Sqlite, "a_phantom_study_is_processed_and_its_results_delivered_sqlite");
}

#[test]
fn a_phantom_study_is_processed_and_its_results_delivered_postgres() {
    processed_and_delivered(Backend::Postgres, "a_phantom_study_is_processed_and_its_results_delivered_postgres");
}

fn killed_worker(backend: Backend) {
    require_tool("storescu");
    let mut opts = NodeOptions::new(backend);
    opts.quiet_period_s = 1.0;
    opts.worker = FAST_WORKER.into();
    let mut node = Node::start(opts);
    let work = tempfile::tempdir().unwrap();
    // Registration makes the job long enough to be killed in the middle.
    slow_study(work.path());
    send_study(&node, work.path());
    let jobs = node.wait_jobs(Duration::from_secs(60), |j| j.len() == 1 && j[0]["state"] != "queued");
    assert_eq!(jobs[0]["state"], "running", "the job ended before it could be killed: {:#}", jobs[0]);
    let first_pid = node.pid();
    node.kill9();
    let stalled = node.jobs();
    assert_eq!(stalled[0]["state"], "running", "a killed worker's job stays running until its lease expires");

    // Another node process on the same database and storage, with a new worker id.
    node.restart();
    assert_ne!(node.pid(), first_pid);
    let jobs = node.wait_jobs(Duration::from_secs(300), |j| {
        ["succeeded", "failed", "dead"].contains(&j[0]["state"].as_str().unwrap())
    });
    let job = &jobs[0];
    assert_eq!(job["state"], "succeeded", "{job:#}\n{}", node.log());
    assert_eq!(job["attempts"], 2, "the killed try counts: {job}");
    let log = node.log();
    assert!(log.contains("job lease expired"), "the reaper did not re-queue the job:\n{log}");
    // The finished try made the same objects as any other run of these inputs would: a
    // re-sent result replaces, never duplicates, what the PACS holds.
    let offline = work.path().join("offline");
    let out = Command::new(bin()).arg("run").arg(work.path()).arg("--out").arg(&offline).output().unwrap();
    assert_success(&out, "petct-node run");
    assert_eq!(result_uids(&job_dir(&node, job)), result_uids(&offline));
}

/// A `small` phantom whose PET must be registered to its CT: a job that lasts many seconds.
fn slow_study(dir: &Path) {
    let out = Command::new(bin())
        .args(["phantom", "--profile", "small", "--seed", "32", "--misalign", "8,0,0,0,0,2", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert_success(&out, "phantom");
}

#[test]
fn sigterm_hands_back_a_running_job_within_the_deadline() {
    require_tool("storescu");
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.quiet_period_s = 1.0;
    opts.worker = FAST_WORKER.into();
    // Short enough that the hand-back (at 1.5 s) comes well before the job's end: the job spends
    // about 5 s after its registration stage starts, of which registration is barely 1.5 s.
    opts.shutdown_deadline_s = 2.0;
    let mut node = Node::start(opts);
    let work = tempfile::tempdir().unwrap();
    slow_study(work.path());
    send_study(&node, work.path());
    let jobs = node.wait_jobs(Duration::from_secs(60), |j| j.len() == 1 && j[0]["state"] != "queued");
    assert_eq!(jobs[0]["state"], "running", "{:#}", jobs[0]);
    // Heartbeats record the pipeline's stage as it goes.
    let jobs = node.wait_jobs(Duration::from_secs(30), |j| j[0]["stage"] == "register");
    assert_eq!(jobs[0]["stage"], "register", "{:#}", jobs[0]);
    let (status, took) = node.terminate();
    assert!(status.success(), "{status}\n{}", node.log());
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    let job = &node.jobs()[0];
    assert_eq!(job["state"], "queued", "{job:#}\n{}", node.log());
    assert_eq!(job["attempts"], 0, "an interrupted try does not count: {job}");
    assert!(node.log().contains("job handed back at shutdown"));
}

#[test]
fn a_killed_workers_job_is_finished_by_another_node_sqlite() {
    killed_worker(Backend::Sqlite);
}

#[test]
fn a_killed_workers_job_is_finished_by_another_node_postgres() {
    killed_worker(Backend::Postgres);
}

#[test]
fn jobs_retry_requeues_a_failed_job() {
    require_tool("storescu");
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.quiet_period_s = 1.0;
    opts.worker = FAST_WORKER.into();
    let node = Node::start(opts);
    let work = tempfile::tempdir().unwrap();
    // Synthetic PET without radiopharmaceutical data: SUV cannot be computed, the job fails
    // for good (no retry with backoff for an input error).
    let (study, frame) = (new_uid(), new_uid());
    let pet = write_series(&SeriesSpec::new("PT", &study, &frame, 4), &work.path().join("pt"));
    let ct = write_series(&SeriesSpec::new("CT", &study, &frame, 4), &work.path().join("ct"));
    assert_success(&node.storescu("STORESCU", &ct, &[]), "storescu");
    assert_success(&node.storescu("STORESCU", &pet, &[]), "storescu");
    let done = |j: &[Value]| j.len() == 1 && j[0]["state"] == "failed";
    let jobs = node.wait_jobs(Duration::from_secs(60), done);
    assert_eq!(jobs[0]["state"], "failed", "{:#}\n{}", jobs[0], node.log());
    assert_eq!(jobs[0]["attempts"], 1, "an input error is not retried");
    let error = jobs[0]["last_error"].as_str().unwrap().to_string();
    assert!(error.contains(&jobs[0]["pet_series_uid"].as_str().unwrap().to_string()), "{error}");
    let text = Command::new(bin()).args(["jobs", "list", "--config"]).arg(&node.config).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(&error), "jobs list hides the error");

    let retry =
        |id: &str| Command::new(bin()).args(["jobs", "retry", id, "--config"]).arg(&node.config).output().unwrap();
    let out = retry("999");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no job 999"), "{out:?}");
    let id = jobs[0]["id"].to_string();
    let started = jobs[0]["started_at_ms"].as_i64().unwrap();
    let out = retry(&id);
    assert_success(&out, "jobs retry");
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued again"));
    // It runs again (a new start), fails again, and its attempts started over.
    let jobs =
        node.wait_jobs(Duration::from_secs(60), |j| done(j) && j[0]["started_at_ms"].as_i64().unwrap() > started);
    assert_eq!(jobs[0]["state"], "failed", "{:#}", jobs[0]);
    assert_eq!(jobs[0]["attempts"], 1);
}

/// The index row of a phantom instance, as ingest would write it (path relative to the store).
fn record_for(file: &Path, modality: &str, sop_instance_uid: Option<String>) -> InstanceRecord {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(file).unwrap();
    let text = |tag| obj.get(tag).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    InstanceRecord {
        study_uid: text(tags::STUDY_INSTANCE_UID),
        series_uid: text(tags::SERIES_INSTANCE_UID),
        sop_instance_uid: sop_instance_uid.unwrap_or_else(|| text(tags::SOP_INSTANCE_UID)),
        sop_class_uid: text(tags::SOP_CLASS_UID),
        transfer_syntax_uid: EXPLICIT_LE.into(),
        modality: modality.into(),
        patient_id: None,
        patient_name: None,
        study_date: None,
        accession_number: None,
        study_description: None,
        series_number: None,
        series_description: None,
        frame_of_reference_uid: Some(text(tags::FRAME_OF_REFERENCE_UID)),
        number_of_slices: Some(1),
        image_index: Some(1),
        instance_number: Some(1),
        acquired_at_ms: None,
        path: file.display().to_string(),
        size_bytes: 1,
        sha256: "x".into(),
        calling_ae: "TEST".into(),
        received_at_ms: 0,
    }
}

/// A job row to work on: one PET and one CT instance of a phantom indexed, the pair evaluated.
/// Returns the job id, the PET file and five CT files.
async fn seed_job(db: &Db, storage: &Path) -> (i64, PathBuf, Vec<PathBuf>) {
    let work = storage.join("seed");
    phantom(&work, "33");
    let pet = dcm_files(&work.join("PT"))[0].clone();
    let cts = dcm_files(&work.join("CT"));
    db.record_instance(&record_for(&pet, "PT", None)).await.unwrap();
    db.record_instance(&record_for(&cts[0], "CT", None)).await.unwrap();
    let study = &db.list_studies().await.unwrap()[0].study_uid;
    let evaluation = db.evaluate_study(study, 1, 0).await.unwrap();
    assert_eq!(evaluation.queued_jobs.len(), 1, "{evaluation:?}");
    (evaluation.queued_jobs[0], pet, cts[..5].to_vec())
}

#[test]
fn a_superseded_job_is_not_claimed_and_its_worker_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::new(Backend::Sqlite, dir.path());
    block_on(async {
        let db = Db::connect(&test_db.url, 4).await.unwrap();
        let (id, pet, _) = seed_job(&db, dir.path()).await;
        assert!(db.claim_job("w1", 10).await.unwrap().is_some());
        // New content in the PET series while the job runs: the job is superseded.
        let late = db.record_instance(&record_for(&pet, "PT", Some(new_uid()))).await.unwrap();
        assert_eq!(late, petct_node::db::Recorded::Stored { replaced: false, superseded_jobs: 1 });
        assert!(!db.heartbeat(id, "w1", 20, None).await.unwrap(), "the worker keeps a superseded job");
        let result = ResultFile {
            sop_instance_uid: new_uid(),
            sop_class_uid: CT_IMAGE.into(),
            series_uid: None,
            path: "x.dcm".into(),
            kind: "x".into(),
        };
        assert!(!db.finish_processing(id, "w1", 30, 1, &[result], &["scp".into()]).await.unwrap());
        assert!(db.claim_delivery("s", 40, 1_000).await.unwrap().is_none(), "stale results queued for delivery");
        assert!(db.claim_job("w2", 40).await.unwrap().is_none(), "a superseded job was claimed");
        assert_eq!(db.list_jobs().await.unwrap()[0].state, "superseded");
        db.close().await;
    });
}

/// Ten jobs, eight workers claiming at once on their own connections: each job is claimed once.
fn concurrent_claims(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::new(backend, dir.path());
    let work = dir.path().join("seed");
    phantom(&work, "35");
    let (pet, ct) = (dcm_files(&work.join("PT"))[0].clone(), dcm_files(&work.join("CT"))[0].clone());
    block_on(async {
        let db = Db::connect(&test_db.url, 16).await.unwrap();
        for _ in 0..10 {
            let (study, frame) = (new_uid(), new_uid());
            for (file, modality) in [(&pet, "PT"), (&ct, "CT")] {
                let mut r = record_for(file, modality, Some(new_uid()));
                (r.study_uid, r.series_uid, r.frame_of_reference_uid) = (study.clone(), new_uid(), Some(frame.clone()));
                db.record_instance(&r).await.unwrap();
            }
            assert_eq!(db.evaluate_study(&study, 1, 0).await.unwrap().queued_jobs.len(), 1);
        }
        let claimers: Vec<_> = (0..8)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while let Some(job) = db.claim_job(&format!("w{w}"), 10).await.unwrap() {
                        mine.push(job.id);
                    }
                    mine
                })
            })
            .collect();
        let mut claimed = Vec::new();
        for c in claimers {
            claimed.extend(c.await.unwrap());
        }
        claimed.sort();
        let mut unique = claimed.clone();
        unique.dedup();
        assert_eq!(claimed, unique, "a job was claimed twice");
        assert_eq!(claimed.len(), 10, "{claimed:?}");
        db.close().await;
    });
}

#[test]
fn each_job_is_claimed_once_by_concurrent_workers_sqlite() {
    concurrent_claims(Backend::Sqlite);
}

#[test]
fn each_job_is_claimed_once_by_concurrent_workers_postgres() {
    concurrent_claims(Backend::Postgres);
}

fn fenced_leases(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::new(backend, dir.path());
    block_on(async {
        let db = Db::connect(&test_db.url, 4).await.unwrap();
        let (id, _, _) = seed_job(&db, dir.path()).await;
        let job = db.claim_job("w1", 10).await.unwrap().expect("a queued job is claimed");
        assert_eq!((job.id, job.attempts), (id, 1));
        assert!(db.claim_job("w2", 10).await.unwrap().is_none(), "a running job is claimed twice");
        assert!(db.heartbeat(id, "w1", 20, Some("calibrate")).await.unwrap());
        assert!(!db.heartbeat(id, "w2", 20, None).await.unwrap(), "another worker renewed w1's lease");
        // w1 stalls: its lease expires and the reaper re-queues the job.
        assert!(db.reap_expired(1_000, 2_000, 3).await.unwrap().is_empty(), "reaped a live lease");
        assert_eq!(db.reap_expired(5_000, 2_000, 3).await.unwrap(), [(id, "queued".to_string())]);
        let again = db.claim_job("w2", 5_000).await.unwrap().unwrap();
        assert_eq!(again.attempts, 2);
        // w1 wakes up: none of its writes land.
        assert!(!db.heartbeat(id, "w1", 5_001, None).await.unwrap());
        assert!(!db.fail_job(id, "w1", 5_001, "stale", JobFate::Failed).await.unwrap());
        assert!(!db.finish_processing(id, "w1", 5_001, 1, &[], &[]).await.unwrap());
        // A retryable failure waits for its backoff.
        assert!(db.fail_job(id, "w2", 6_000, "disk full", JobFate::Retry { run_at_ms: 9_000 }).await.unwrap());
        assert!(db.claim_job("w3", 8_999).await.unwrap().is_none(), "claimed before run_at");
        let third = db.claim_job("w3", 9_000).await.unwrap().unwrap();
        assert_eq!(third.attempts, 3);
        // Out of attempts: the reaper leaves it dead, with its error.
        assert_eq!(db.reap_expired(20_000, 2_000, 3).await.unwrap(), [(id, "dead".to_string())]);
        let row = &db.list_jobs().await.unwrap()[0];
        assert_eq!(row.state, "dead");
        assert!(row.last_error.as_deref().unwrap().contains("w3 lost its lease"), "{row:?}");
        db.close().await;
    });
}

#[test]
fn leases_are_fenced_reaped_and_bounded_sqlite() {
    fenced_leases(Backend::Sqlite);
}

#[test]
fn leases_are_fenced_reaped_and_bounded_postgres() {
    fenced_leases(Backend::Postgres);
}

fn delivery_waits_for_the_destination(backend: Backend, test_name: &str) {
    if !in_private_network(test_name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::new(backend, dir.path());
    let storage = dir.path().join("store");
    let port = free_port();
    // The CLI reads the same database through a config file.
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndir = \"{}\"\n[database]\nurl = \"{}\"\n{}",
            storage.display(),
            test_db.url,
            destination_toml(port)
        ),
    )
    .unwrap();
    let settings = petct_node::config::Config::load(&config).unwrap();
    let list = || -> Value {
        let out = Command::new(bin()).args(["jobs", "list", "--json", "--config"]).arg(&config).output().unwrap();
        assert_success(&out, "jobs list");
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["jobs"][0].clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let db = runtime.block_on(Db::connect(&test_db.url, 4)).unwrap();
    let (id, _, files) = runtime.block_on(seed_job(&db, &storage));
    // The job's outputs: five phantom CT instances copied where the pipeline writes.
    let job_dir = storage.join(format!("results/job-{id}"));
    std::fs::create_dir_all(&job_dir).unwrap();
    let mut results = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let name = format!("r{i}.dcm");
        std::fs::copy(f, job_dir.join(&name)).unwrap();
        results.push(ResultFile {
            sop_instance_uid: sop_uid(f),
            sop_class_uid: CT_IMAGE.into(),
            series_uid: None,
            path: format!("results/job-{id}/{name}"),
            kind: format!("r{i}"),
        });
    }
    runtime.block_on(async {
        let job = db.claim_job("w", ingest_now()).await.unwrap().unwrap();
        assert!(db.finish_processing(job.id, "w", ingest_now(), 5, &results, &["scp".into()]).await.unwrap());
    });
    assert_eq!(list()["state"], "delivering");

    let cancel = tokio_util::sync::CancellationToken::new();
    let deliverer = std::sync::Arc::new(petct_node::delivery::Deliverer {
        db: db.clone(),
        storage_dir: storage.clone(),
        settings: settings.delivery.clone(),
        destinations: settings.destinations.clone(),
        id: "test-sender".into(),
        poll_interval: Duration::from_millis(100),
        wake: Default::default(),
    });
    let task = runtime.spawn(deliverer.run(cancel.clone(), Duration::from_secs(1)));

    // Destination down: tries pile up with growing waits, and `jobs list` says why.
    let t0 = Instant::now();
    let mut seen: Vec<(i64, i64)> = Vec::new();
    while seen.last().map_or(0, |s| s.0) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(30), "deliveries are not retried: {seen:?}");
        let d = list()["deliveries"][0].clone();
        let (attempts, next) = (d["attempts"].as_i64().unwrap(), d["next_attempt_at_ms"].as_i64().unwrap());
        if d["state"] == "pending" && attempts > 0 && seen.last().is_none_or(|s| s.0 != attempts) {
            assert!(d["last_error"].as_str().unwrap().contains("connecting to 127.0.0.1"), "{d}");
            seen.push((attempts, next));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gaps: Vec<i64> = seen.windows(2).filter(|w| w[1].0 == w[0].0 + 1).map(|w| w[1].1 - w[0].1).collect();
    eprintln!("attempts and next tries while down: {seen:?}; gaps {gaps:?} ms");
    assert!(gaps.len() >= 2 && gaps.last().unwrap() > gaps.first().unwrap(), "no backoff: {seen:?}");
    assert_eq!(list()["state"], "delivering");
    let text = Command::new(bin()).args(["jobs", "list", "--config"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("scp: pending") && text.contains("connecting to 127.0.0.1"), "{text}");

    // Destination up: every result arrives exactly once and the job ends.
    let scp = StoreScp::start(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while list()["state"] == "delivering" {
        assert!(Instant::now() < deadline, "not delivered after the destination came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let job = list();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["deliveries"][0]["state"], "sent");
    std::thread::sleep(Duration::from_millis(500));
    let received = scp.received();
    assert_eq!(received.len(), 5, "{received:?}");
    assert!(received.values().all(|n| *n == 1), "duplicates: {received:?}");
    for r in &results {
        assert_eq!(received.get(&r.sop_instance_uid), Some(&1));
    }
    cancel.cancel();
    runtime.block_on(task).unwrap();
    // Nothing claimable is left: a sent destination is never sent again.
    let now = ingest_now();
    assert!(runtime.block_on(db.claim_delivery("x", now + 3_600_000, now)).unwrap().is_none());
    // A failed delivery is what `jobs retry` re-queues (only the delivery, not the pipeline).
    let claimed = runtime.block_on(async {
        db.retry_job(id, now).await.unwrap();
        db.claim_delivery("x", now, now + 1000).await.unwrap()
    });
    assert!(claimed.is_none(), "a succeeded job's delivery was re-queued");
}

fn ingest_now() -> i64 {
    petct_node::ingest::now_ms()
}

#[test]
fn delivery_retries_with_backoff_until_the_destination_is_up_sqlite() {
    delivery_waits_for_the_destination(
        Backend::Sqlite,
        "delivery_retries_with_backoff_until_the_destination_is_up_sqlite",
    );
}

#[test]
fn delivery_retries_with_backoff_until_the_destination_is_up_postgres() {
    delivery_waits_for_the_destination(
        Backend::Postgres,
        "delivery_retries_with_backoff_until_the_destination_is_up_postgres",
    );
}

#[test]
fn failed_delivery_is_retried_by_jobs_retry() {
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::new(Backend::Sqlite, dir.path());
    let storage = dir.path().join("store");
    block_on(async {
        let db = Db::connect(&test_db.url, 4).await.unwrap();
        let (id, _, files) = seed_job(&db, &storage).await;
        let result = ResultFile {
            sop_instance_uid: sop_uid(&files[0]),
            sop_class_uid: CT_IMAGE.into(),
            series_uid: None,
            path: files[0].strip_prefix(&storage).unwrap().display().to_string(),
            kind: "ct".into(),
        };
        db.claim_job("w", 10).await.unwrap().unwrap();
        let destinations = ["a".to_string(), "b".to_string()];
        assert!(db.finish_processing(id, "w", 20, 1, &[result], &destinations).await.unwrap());
        let a = db.claim_delivery("s", 30, 1_000).await.unwrap().unwrap();
        let b = db.claim_delivery("s", 30, 1_000).await.unwrap().unwrap();
        assert!(db.claim_delivery("s", 30, 1_000).await.unwrap().is_none());
        assert!(db.finish_delivery(&a, "s", 40, &DeliveryOutcome::Sent).await.unwrap());
        assert_eq!(db.list_jobs().await.unwrap()[0].state, "delivering", "b is still out");
        let refused = DeliveryOutcome::Failed { error: "refused with status C000H".into() };
        assert!(db.finish_delivery(&b, "s", 50, &refused).await.unwrap());
        let row = &db.list_jobs().await.unwrap()[0];
        assert_eq!(row.state, "failed");
        assert_eq!(row.last_error.as_deref(), Some("delivery to b: refused with status C000H"));
        // Retry re-queues only b; a stays sent.
        assert_eq!(
            db.retry_job(id, 60).await.unwrap(),
            petct_node::queue::RetryOutcome::Redelivering { destinations: 1 }
        );
        let again = db.claim_delivery("s", 60, 1_000).await.unwrap().unwrap();
        assert_eq!((again.destination.as_str(), again.attempts), ("b", 1));
        assert!(db.claim_delivery("s", 60, 1_000).await.unwrap().is_none(), "a sent destination went again");
        assert!(db.finish_delivery(&again, "s", 70, &DeliveryOutcome::Sent).await.unwrap());
        let row = &db.list_jobs().await.unwrap()[0];
        assert_eq!((row.state.as_str(), row.last_error.as_deref()), ("succeeded", None));
        // A stale sender (its lease expired and was taken over) cannot record anything.
        assert!(!db.finish_delivery(&a, "s", 80, &DeliveryOutcome::Sent).await.unwrap());
        db.close().await;
    });
}

fn scu_settings(called: &str, port: u16, calling: &str) -> ScuSettings {
    ScuSettings {
        calling_ae_title: AeTitle::parse(calling).unwrap(),
        called_ae_title: AeTitle::parse(called).unwrap(),
        host: "127.0.0.1".into(),
        port,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    }
}

#[test]
fn scu_stores_phantom_instances_in_storescp_orthanc_and_our_scp() {
    if !in_private_network("scu_stores_phantom_instances_in_storescp_orthanc_and_our_scp") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let summary = phantom(work.path(), "34");
    let mut files = dcm_files(&work.path().join("CT"));
    files.extend(dcm_files(&work.path().join("PT")));
    let port = free_port();
    let scp = StoreScp::start(port);
    let node = Node::start(NodeOptions::new(Backend::Sqlite));
    let orthanc = Orthanc::start(&[]);
    block_on(async {
        // Two SOP classes on one association, each instance once.
        let sent = scu::store_files(&scu_settings("STORESCP", port, "PETCT_NODE"), &files).await.unwrap();
        assert_eq!(sent.len(), 96);
        let sent = scu::store_files(&scu_settings("ORTHANC", orthanc.dicom_port, "PETCT_NODE"), &files).await.unwrap();
        assert_eq!(sent.len(), 96);
        let sent = scu::store_files(&scu_settings("PETCT_NODE", node.port, "TESTSCU"), &files).await.unwrap();
        assert_eq!(sent.len(), 96);
        // A caller the node does not know: a permanent rejection, not worth retrying.
        let e = scu::store_files(&scu_settings("PETCT_NODE", node.port, "STRANGER"), &files[..1]).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("rejected the association"), "{e}");
        // Nobody listening: retryable.
        let e = scu::store_files(&scu_settings("X", free_port(), "PETCT_NODE"), &files[..1]).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    });
    let received = scp.received();
    assert_eq!(received.len(), 96);
    assert!(received.values().all(|n| *n == 1));
    // Byte-exact at our SCP: the data sets on disk equal the sources.
    let stored: HashMap<String, PathBuf> = node.stored_files().into_iter().map(|p| (sop_uid(&p), p)).collect();
    assert_eq!(stored.len(), 96);
    for f in &files {
        let source = std::fs::read(f).unwrap();
        let ours = std::fs::read(&stored[&sop_uid(f)]).unwrap();
        assert_eq!(data_set_bytes(&ours), data_set_bytes(&source), "{}", f.display());
    }
    let study = &node.studies()[0];
    assert_eq!(study["study_uid"], summary["study_instance_uid"]);
    let stats = orthanc.get("/statistics").unwrap();
    assert_eq!(stats["CountInstances"], 96, "{stats}");
    assert_eq!(stats["CountSeries"], 2, "{stats}");
}

/// Orthanc as the PACS at both ends: it pushes a phantom study to the node as auto-routing
/// does, and is the node's destination; every object the job produced is then in Orthanc.
/// With `models`, learned models run too, beside the classical baseline.
fn orthanc_round_trip(backend: Backend, test_name: &str, models: Option<Models>) {
    if !in_private_network(test_name) {
        return;
    }
    let orthanc = Orthanc::start(&[]);
    let mut opts = NodeOptions::new(backend);
    opts.quiet_period_s = 1.0;
    opts.peers.push(("ORTHANC".into(), Some("127.0.0.1".into())));
    opts.worker = FAST_WORKER.into();
    opts.extra_toml = format!(
        "{FAST_DELIVERY}\n[[destinations]]\nname = \"orthanc\"\nae_title = \"ORTHANC\"\n\
         host = \"127.0.0.1\"\nport = {}\n{}",
        orthanc.dicom_port,
        models.map_or(String::new(), models_toml)
    );
    let node = Node::start(opts);
    let modality = serde_json::json!(["PETCT_NODE", "127.0.0.1", node.port]).to_string();
    let url = format!("http://127.0.0.1:{}/modalities/petct", orthanc.http_port);
    let out = Command::new("curl").args(["-sfS", "-X", "PUT", &url, "--data-binary", &modality]).output().unwrap();
    assert_success(&out, "declaring the node in Orthanc");

    let work = tempfile::tempdir().unwrap();
    phantom(work.path(), "36");
    let mut orthanc_study = String::new();
    for f in dcm_files(&work.path().join("CT")).iter().chain(&dcm_files(&work.path().join("PT"))) {
        let answer = orthanc.post("/instances", &format!("@{}", f.display()));
        orthanc_study = answer["ParentStudy"].as_str().expect("upload answer").to_string();
    }
    let answer = orthanc.post("/modalities/petct/store", &orthanc_study);
    assert_eq!(answer["FailedInstancesCount"], 0, "{answer}\n{}", orthanc.log());

    let jobs = node.wait_jobs(Duration::from_secs(300), |j| {
        j.len() == 1 && ["succeeded", "failed", "dead"].contains(&j[0]["state"].as_str().unwrap())
    });
    let job = &jobs[0];
    assert_eq!(job["state"], "succeeded", "{job:#}\n{}", node.log());
    let produced = result_uids(&job_dir(&node, job));
    // The lookup itself is checked on an input instance, so it cannot pass vacuously.
    let input = sop_uid(&dcm_files(&work.path().join("CT"))[0]);
    for uid in std::iter::once(&input).chain(&produced) {
        let found = orthanc.post("/tools/lookup", uid);
        assert_eq!(found.as_array().map(Vec::len), Some(1), "{uid} not in Orthanc: {found}");
    }
    let stats = orthanc.get("/statistics").unwrap();
    assert_eq!(stats["CountInstances"].as_u64().unwrap() as usize, 96 + produced.len(), "{stats}");
    // In Orthanc the results are three more series of the same study: SEG, SR and the MIP (OT).
    let studies = orthanc.get("/studies").unwrap();
    assert_eq!(studies.as_array().unwrap().len(), 1, "{studies}");
    let study = orthanc.get(&format!("/studies/{}", studies[0].as_str().unwrap())).unwrap();
    let mut modalities: Vec<String> = study["Series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let series = orthanc.get(&format!("/series/{}", s.as_str().unwrap())).unwrap();
            series["MainDicomTags"]["Modality"].as_str().unwrap().to_string()
        })
        .collect();
    modalities.sort();
    assert_eq!(modalities, ["CT", "OT", "PT", "SEG", "SR"]);
    if let Some(models) = models {
        check_model_results(&job_dir(&node, job), models);
    }
}

/// The learned models of a round trip.
#[derive(Clone, Copy)]
enum Models {
    /// The infer stage's fixtures (tests/py/make_test_models.py): an anomaly model and two
    /// segmentation models, one fed by its prior, with hand-set weights.
    Fixtures,
    /// The trained models that ship in `models/` (training/README.md).
    Shipped,
}

impl Models {
    /// The anomaly model first, then the segmentation models in their SEG segments' order.
    fn manifests(self) -> Vec<PathBuf> {
        match self {
            Models::Fixtures => ["fixture-anomaly", "fixture-sensitive", "fixture-prior"]
                .iter()
                .map(|n| test_models().join("pipeline").join(format!("{n}.model.toml")))
                .collect(),
            Models::Shipped => {
                // Every manifest in models/ by name, as `demo --models models` runs them:
                // anomaly-ae, then the seg-* models.
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
                let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.to_str().unwrap().ends_with(".model.toml"))
                    .collect();
                found.sort();
                assert!(found[0].ends_with("anomaly-ae.model.toml") && found.len() > 1, "{found:?}");
                found
            }
        }
    }

    /// Every model's name, the anomaly model's first.
    fn names(self) -> Vec<String> {
        self.manifests()
            .iter()
            .map(|m| m.file_name().unwrap().to_str().unwrap().trim_end_matches(".model.toml").to_string())
            .collect()
    }

    fn segmentation_names(self) -> Vec<String> {
        self.names().split_off(1)
    }
}

/// The models beside the classical baseline, on the library scripts/test.sh fetched.
fn models_toml(models: Models) -> String {
    let mut toml =
        format!("[inference]\nlibrary = {:?}\nthreads = 2\n[segmentation]\nclassical = \"always\"\n", ort_library());
    for manifest in models.manifests() {
        toml.push_str(&format!("[[models]]\nmanifest = {manifest:?}\n"));
    }
    toml
}

/// One SEG segment per segmentation model and one for the classical method, an anomaly score,
/// lesions saying which methods found them, and SEG and SR valid for dciodvfy.
fn check_model_results(dir: &Path, models: Models) {
    for name in ["seg.dcm", "sr.dcm"] {
        let errors = dciodvfy_errors(&dir.join(name));
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
    let mut methods = models.segmentation_names();
    methods.push("classical".into());
    let seg = dicom_object::open_file(dir.join("seg.dcm")).unwrap();
    let labels: Vec<String> = seg
        .get(dicom_dictionary_std::tags::SEGMENT_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap()
        .iter()
        .map(|i| i.get(dicom_dictionary_std::tags::SEGMENT_LABEL).unwrap().to_str().unwrap().trim().to_string())
        .collect();
    let want: Vec<String> = methods.iter().map(|m| format!("Lesions ({m})")).collect();
    assert_eq!(labels, want);
    let findings: Value = serde_json::from_slice(&std::fs::read(dir.join("findings.json")).unwrap()).unwrap();
    let score = findings["anomaly_score"].as_f64().expect("an anomaly score");
    assert!((0.0..=1.0).contains(&score), "{score}");
    let lesions = findings["lesions"].as_array().unwrap();
    let found_by =
        |m: &str| lesions.iter().filter(|l| l["detected_by"].as_array().unwrap().iter().any(|b| b == m)).count();
    for lesion in lesions {
        let by = lesion["detected_by"].as_array().unwrap();
        assert!(!by.is_empty() && by.iter().all(|m| methods.iter().any(|n| n == m)), "{lesion}");
    }
    // Every method found something.
    let counts: Vec<usize> = methods.iter().map(|m| found_by(m)).collect();
    assert!(counts.iter().all(|&c| c > 0), "{methods:?}: {counts:?}");
    if let Models::Fixtures = models {
        // The fixture's probability is 1 far above SUV 7, and the phantom's lesions are.
        assert!(score > 0.9, "{score}");
        // The prior-fed fixture (SUV above 5) finds no more than the SUV 2.5 one.
        assert!(counts[1] <= counts[0], "{counts:?}");
    }
    let run: Value = serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["segments"], serde_json::json!(methods), "{run}");
    // What each model cost: the channels on its grid first, then every model in the order it
    // ran, all within the stage's own seconds.
    let parts = run["seconds"]["infer_parts"].as_array().unwrap();
    let part = |p: &Value| p["part"].as_str().unwrap().to_string();
    assert!(part(&parts[0]).starts_with("channels on the"), "{parts:?}");
    let ran: Vec<String> = parts.iter().map(part).filter(|p| !p.starts_with("channels on the")).collect();
    assert_eq!(ran, models.names());
    let total: f64 = parts.iter().map(|p| p["seconds"].as_f64().unwrap()).sum();
    assert!(total > 0.0 && total <= run["seconds"]["infer"].as_f64().unwrap(), "{}", run["seconds"]);
}

#[test]
fn orthanc_pushes_a_study_and_receives_the_results_sqlite() {
    orthanc_round_trip(Backend::Sqlite, "orthanc_pushes_a_study_and_receives_the_results_sqlite", None);
}

#[test]
fn orthanc_pushes_a_study_and_receives_the_results_postgres() {
    orthanc_round_trip(Backend::Postgres, "orthanc_pushes_a_study_and_receives_the_results_postgres", None);
}

#[test]
fn orthanc_gets_the_model_results_sqlite() {
    orthanc_round_trip(Backend::Sqlite, "orthanc_gets_the_model_results_sqlite", Some(Models::Fixtures));
}

#[test]
fn orthanc_gets_the_model_results_postgres() {
    orthanc_round_trip(Backend::Postgres, "orthanc_gets_the_model_results_postgres", Some(Models::Fixtures));
}

#[test]
fn orthanc_gets_the_shipped_models_results_sqlite() {
    orthanc_round_trip(Backend::Sqlite, "orthanc_gets_the_shipped_models_results_sqlite", Some(Models::Shipped));
}
