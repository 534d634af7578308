//! `petct-node demo`: the whole job on one machine with nothing installed. It writes a phantom
//! study, starts the node on embedded SQLite, sends the study to it over DICOM (our SCU, as a
//! PACS would), lets the worker process it, receives the results on a local destination (a
//! second SCP in this process, standing in for the PACS) and prints the lesions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{StdoutError, say};
use crate::config::Config;
use crate::db::{Db, JobRow};
use crate::dimse::scu::{ScuSettings, store_files};
use crate::dimse::{RESULT_SOP_CLASSES, Scp, ScpSettings, Status, StoreHandler, StoreRequest};
use crate::ids::{AeTitle, Uid};
use crate::phantom::{PhantomOptions, Profile};
use crate::quantify::Findings;
use crate::store::{Store, sync_dir};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Working folder (created; must be empty or an earlier demo's): the study, the node's
    /// storage and database, and the results received back.
    #[arg(long, default_value = "var/demo")]
    pub dir: PathBuf,
    /// Phantom size: `small` takes seconds, `wholebody` is a realistic 512x512x300 study.
    #[arg(long, value_enum, default_value_t = Profile::Small)]
    pub profile: Profile,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run the learned models too: every `*.model.toml` in this folder (by name), beside the
    /// classical baseline. Needs the ONNX Runtime library (`--onnxruntime` or
    /// `$ORT_DYLIB_PATH`; scripts/onnxruntime.sh fetches it).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// The ONNX Runtime library (`libonnxruntime.so.1.31.1`) for `--models`.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime: Option<PathBuf>,
}

const MARKER: &str = ".petct-node-demo";
const NODE_AE: &str = "PETCT_NODE";
const SENDER_AE: &str = "DEMO_PACS";
const INBOX_AE: &str = "DEMO_INBOX";

/// The stand-in PACS that receives the results: each instance durably under its SOP Instance UID.
struct Inbox {
    store: Store,
}

impl Inbox {
    fn save(&self, request: StoreRequest) -> Result<(), String> {
        let uid = request.sop_instance_uid.as_deref().unwrap_or_default();
        let uid = Uid::parse(uid.trim_end_matches('\0')).map_err(|e| format!("SOP Instance UID: {e}"))?;
        let class = request.sop_class_uid.unwrap_or(request.context_sop_class_uid);
        let meta = crate::ingest::file_meta(&class, uid.as_str(), &request.transfer_syntax_uid, INBOX_AE)?;
        let temp = self.store.write_temp(&[&meta, &request.data_set]).map_err(|e| e.to_string())?;
        let dir =
            temp.persist(&self.store, &Path::new("dicom").join(format!("{uid}.dcm"))).map_err(|e| e.to_string())?;
        sync_dir(&dir).map_err(|e| e.to_string())
    }
}

impl StoreHandler for Inbox {
    async fn store(&self, request: StoreRequest) -> Status {
        match self.save(request) {
            Ok(()) => Status::success(),
            Err(e) => Status::failure(Status::PROCESSING_FAILURE, e),
        }
    }
}

fn step(n: usize, what: &str) {
    eprintln!("[{n}/5] {what}");
}

/// Runs the demo and prints the lesion table on stdout.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    prepare_dir(&args.dir)?;
    let dir = std::path::absolute(&args.dir).context("resolving the demo folder")?;

    step(1, "writing a synthetic PET/CT study (petct-node phantom)");
    let study_dir = dir.join("study");
    let phantom = crate::phantom::generate(&PhantomOptions::new(args.seed, args.profile), &study_dir)?;
    eprintln!(
        "      {} CT + {} PET slices, {} lesions, in {:.1} s",
        phantom.ct_slices, phantom.pt_slices, phantom.lesions, phantom.elapsed_s
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let models = models_toml(args)?;
    let findings = runtime.block_on(serve_and_process(&dir, &study_dir, &models))?;
    print_findings(&findings.0, &findings.1, &dir, started.elapsed())?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The `[inference]` and `[[models]]` tables for `--models` (empty without it).
fn models_toml(args: &DemoArgs) -> anyhow::Result<String> {
    let Some(folder) = &args.models else { return Ok(String::new()) };
    let library = args.onnxruntime.as_ref().context(
        "--models needs the ONNX Runtime library: --onnxruntime PATH or $ORT_DYLIB_PATH (scripts/onnxruntime.sh fetches it)",
    )?;
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".model.toml"))
        .collect();
    if manifests.is_empty() {
        bail!("no *.model.toml in {}", folder.display());
    }
    manifests.sort();
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
    let mut toml = format!("[inference]\nlibrary = {:?}\n[segmentation]\nclassical = \"always\"\n", absolute(library)?);
    for m in manifests {
        toml.push_str(&format!("[[models]]\nmanifest = {:?}\n", absolute(&m)?));
    }
    Ok(toml)
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!("{} exists and is not an earlier demo's folder: choose another with --dir", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "petct-node demo folder: `petct-node demo` may clear it\n")?;
    Ok(())
}

/// Starts the inbox and the node, sends the study, waits for the results; returns the job's
/// findings and the job row.
async fn serve_and_process(dir: &Path, study_dir: &Path, models_toml: &str) -> anyhow::Result<(Findings, JobRow)> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    let inbox_listener = TcpListener::bind("127.0.0.1:0").await?;
    let inbox_port = inbox_listener.local_addr()?.port();
    let inbox = Arc::new(Inbox { store: Store::open(&dir.join("received"), 0)? });
    let inbox_scp = Scp::new(
        ScpSettings {
            ae_title: AeTitle::parse(INBOX_AE)?,
            allow_any_caller: true,
            peers: Vec::new(),
            max_associations: 4,
            max_pdu_bytes: 1 << 20,
            max_instance_bytes: 1 << 30,
            idle_timeout: Duration::from_secs(60),
            sop_classes: RESULT_SOP_CLASSES,
        },
        inbox,
    );
    {
        let (cancel, tracker2) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move { inbox_scp.serve(inbox_listener, cancel, tracker2).await });
    }

    let node_dir = dir.join("node");
    let toml = format!(
        r#"
[node]
ae_title = "{NODE_AE}"
bind = "127.0.0.1:0"
[[peers]]
ae_title = "{SENDER_AE}"
host = "127.0.0.1"
[storage]
dir = "{storage}"
min_free_mb = 64
[series]
ct_quiet_period_s = 1
[worker]
poll_interval_s = 0.2
[delivery]
initial_backoff_s = 1
[[destinations]]
name = "demo-inbox"
ae_title = "{INBOX_AE}"
host = "127.0.0.1"
port = {inbox_port}
{models_toml}"#,
        storage = node_dir.display()
    );
    let config_path = dir.join("node.toml");
    std::fs::write(&config_path, &toml)?;
    let settings = Config::load(&config_path)?;
    let database_url = settings.database_url.clone();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let node = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            crate::server::run(settings, cancel, |addr| {
                let _ = addr_tx.send(addr);
            })
            .await
        })
    };
    let node_addr = addr_rx.await.context("the node did not start")?;

    step(2, &format!("node listening on {node_addr} (SQLite under {}); sending the study", node_dir.display()));
    let mut files: Vec<PathBuf> = ["CT", "PT"]
        .iter()
        .flat_map(|m| std::fs::read_dir(study_dir.join(m)).into_iter().flatten().flatten().map(|e| e.path()))
        .collect();
    files.sort();
    let t = Instant::now();
    let sent = store_files(
        &ScuSettings {
            calling_ae_title: AeTitle::parse(SENDER_AE)?,
            called_ae_title: AeTitle::parse(NODE_AE)?,
            host: node_addr.ip().to_string(),
            port: node_addr.port(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
        },
        &files,
    )
    .await?;
    eprintln!(
        "      {} instances stored in {:.1} s (C-STORE, each fsynced and indexed)",
        sent.len(),
        t.elapsed().as_secs_f64()
    );

    step(3, "waiting for the series to complete and the job to run");
    let db = Db::connect(&database_url, 2).await?;
    let job = watch_job(&db).await;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    node.await.context("the node task failed")??;
    db.close().await;
    let job = job?;
    let job_dir = node_dir.join(crate::worker::job_dir(job.id));
    let findings: Findings = serde_json::from_slice(
        &std::fs::read(job_dir.join("findings.json"))
            .with_context(|| format!("reading {}/findings.json", job_dir.display()))?,
    )?;
    Ok((findings, job))
}

/// Polls the job until it succeeds or fails, printing each stage as it is entered.
async fn watch_job(db: &Db) -> anyhow::Result<JobRow> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = String::new();
    loop {
        let jobs = db.list_jobs().await?;
        if let Some(job) = jobs.into_iter().next_back() {
            let deliveries: Vec<String> =
                job.deliveries.iter().map(|d| format!("{} {}", d.destination, d.state)).collect();
            let now = format!("{} / {} {}", job.state, job.stage.as_deref().unwrap_or("-"), deliveries.join(", "));
            if now != last {
                eprintln!("      job {}: {now}", job.id);
                last = now;
            }
            match job.state.as_str() {
                "succeeded" => {
                    step(4, "results processed and delivered to the inbox (SEG, SR, MIP)");
                    return Ok(job);
                }
                "failed" | "dead" => bail!("job {} {}: {}", job.id, job.state, job.last_error.unwrap_or_default()),
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("no finished job after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_findings(findings: &Findings, job: &JobRow, dir: &Path, elapsed: Duration) -> Result<(), StdoutError> {
    step(5, &format!("done in {:.1} s", elapsed.as_secs_f64()));
    say!(
        "{:>3}  {:>8}  {:>8}  {:>8}  {:>9}  {:>9}  {:<16}  FOUND BY",
        "#",
        "SUVmax",
        "SUVpeak",
        "SUVmean",
        "MTV mL",
        "TLG g",
        "CENTRE (LPS mm)"
    )?;
    for l in &findings.lesions {
        let centre = format!("{:.0}, {:.0}, {:.0}", l.centroid_mm[0], l.centroid_mm[1], l.centroid_mm[2]);
        say!(
            "{:>3}  {:>8.2}  {:>8.2}  {:>8.2}  {:>9.2}  {:>9.1}  {:<16}  {}",
            l.label,
            l.suv_max,
            l.suv_peak,
            l.suv_mean,
            l.volume_ml,
            l.tlg,
            centre,
            l.detected_by.join(", ")
        )?;
    }
    say!(
        "{} lesion(s), total MTV {:.1} mL, total TLG {:.1} g",
        findings.lesion_count,
        findings.total_mtv_ml,
        findings.total_tlg
    )?;
    if let Some(score) = findings.anomaly_score {
        say!("study abnormality score (anomaly detector): {score:.3}")?;
    }
    let job_dir = dir.join("node").join(crate::worker::job_dir(job.id));
    say!("MIP preview: {}", job_dir.join("mip.png").display())?;
    say!("results received by the destination: {}", dir.join("received").join("dicom").display())?;
    say!("ground truth of the phantom: {}", dir.join("study/truth/truth.json").display())
}
