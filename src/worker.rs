//! Workers: claim a job, run `pipeline::process` on its PET/CT pair (on a blocking thread, the
//! lease renewed by heartbeats meanwhile), record every `*.dcm` it wrote as the job's results
//! and queue their delivery. The worker knows nothing of what the results are; the pipeline's
//! current stage goes into the job row with each heartbeat.
//!
//! A worker that loses its lease (reaped after a stall, or its job superseded by new instances)
//! stops touching the job; the pipeline thread is left to finish and its output is ignored, so
//! a superseded job never delivers. On shutdown a worker finishes its job or, past `deadline`,
//! hands it back to the queue.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::WorkerSettings;
use crate::db::{Db, DbError};
use crate::infer::Models;
use crate::ingest::now_ms;
use crate::pipeline::{self, PairInput, PipelineError, PipelineOptions, Progress, RunSummary};
use crate::queue::{ClaimedJob, JobFate, ResultFile};

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("series {series_uid} has no stored instances")]
    NoInstances { series_uid: String },
    #[error("preparing {path}: {source}")]
    Output { path: PathBuf, source: std::io::Error },
    #[error("reading result {path}: {message}")]
    Result { path: PathBuf, message: String },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("the pipeline panicked: {0}")]
    Panic(String),
}

impl JobError {
    fn is_retryable(&self) -> bool {
        match self {
            JobError::Db(e) => e.is_retryable(),
            JobError::Output { .. } => true,
            JobError::Pipeline(e) => e.is_retryable(),
            JobError::NoInstances { .. } | JobError::Result { .. } | JobError::Panic(_) => false,
        }
    }
}

/// What every worker of a node shares.
pub struct Workers {
    pub db: Db,
    pub storage_dir: PathBuf,
    pub settings: WorkerSettings,
    /// How every job is processed (`[registration]`, `[segmentation]`); progress is per job.
    pub pipeline: PipelineOptions,
    /// Names of the destinations each job's results go to.
    pub destinations: Vec<String>,
    /// Told when a job's deliveries are queued.
    pub delivery_wake: Arc<Notify>,
}

/// How a claimed job ended for this worker.
enum Ending {
    Done(Box<Result<RunSummary, JobError>>, Duration),
    LeaseLost,
    HandedBack,
}

/// A process-unique id: host, pid and a random part (a restarted container may reuse its pid).
pub fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string());
    format!("{}:{}:{:06x}", host.unwrap_or_else(|_| "node".into()), std::process::id(), rand::random::<u32>() >> 8)
}

/// The output folder of a job, under the storage root.
pub fn job_dir(job_id: i64) -> PathBuf {
    Path::new("results").join(format!("job-{job_id}"))
}

impl Workers {
    /// One worker loop with its own model sessions: claims jobs until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        id: String,
        models: Arc<Mutex<Models>>,
        cancel: CancellationToken,
        deadline: Duration,
    ) {
        while !cancel.is_cancelled() {
            match self.db.claim_job(&id, now_ms()).await {
                Ok(Some(job)) => {
                    let span = info_span!("job", job_id = job.id, study_uid = %job.study_uid, attempt = job.attempts);
                    self.run_job(&id, job, &models, &cancel, deadline).instrument(span).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, worker = %id, "claiming a job failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// Re-queues expired leases every quarter lease until `cancel`.
    pub async fn reap(self: Arc<Self>, cancel: CancellationToken) {
        let every = (self.settings.lease_timeout / 4).max(Duration::from_millis(100));
        let lease_ms = self.settings.lease_timeout.as_millis() as i64;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.db.reap_expired(now_ms(), lease_ms, i64::from(self.settings.max_attempts)).await {
                Ok(reaped) => {
                    for (job_id, state) in reaped {
                        warn!(job_id, %state, "job lease expired (worker gone or stalled)");
                    }
                }
                Err(e) => warn!(error = %e, "reaping expired leases failed"),
            }
        }
    }

    async fn run_job(
        &self,
        worker: &str,
        job: ClaimedJob,
        models: &Arc<Mutex<Models>>,
        cancel: &CancellationToken,
        deadline: Duration,
    ) {
        info!("job started");
        let ending = self.process(worker, &job, models, cancel, deadline).await;
        let now = now_ms();
        let recorded = match ending {
            Ending::LeaseLost => {
                warn!("lease lost (reaped or superseded); leaving the job alone");
                return;
            }
            Ending::HandedBack => {
                let r = self.db.hand_back(job.id, worker, now).await;
                info!("job handed back at shutdown");
                r
            }
            Ending::Done(r, took) => match (*r).and_then(|summary| Ok((summary, self.results(job.id)?))) {
                Ok((summary, results)) => {
                    let r = self
                        .db
                        .finish_processing(job.id, worker, now, took.as_millis() as i64, &results, &self.destinations)
                        .await;
                    if matches!(r, Ok(true)) {
                        info!(
                            results = results.len(),
                            destinations = self.destinations.len(),
                            seconds = took.as_secs_f64(),
                            suv_rule = %summary.suv_rule,
                            "job processed"
                        );
                        self.delivery_wake.notify_one();
                    }
                    r
                }
                Err(e) => self.fail(worker, &job, now, e).await,
            },
        };
        match recorded {
            Ok(true) => {}
            Ok(false) => warn!("lease lost before the outcome was recorded; outcome dropped"),
            Err(e) => warn!(error = %e, "recording the job outcome failed; the reaper re-queues it"),
        }
    }

    async fn fail(&self, worker: &str, job: &ClaimedJob, now: i64, e: JobError) -> Result<bool, DbError> {
        let fate = if !e.is_retryable() {
            JobFate::Failed
        } else if job.attempts < i64::from(self.settings.max_attempts) {
            let wait = self.settings.backoff.after(job.attempts as u32);
            JobFate::Retry { run_at_ms: now + wait.as_millis() as i64 }
        } else {
            JobFate::Dead
        };
        warn!(error = %e, ?fate, "job failed");
        self.db.fail_job(job.id, worker, now, &e.to_string(), fate).await
    }

    /// Runs the pipeline with heartbeats; see the module note for lease loss and shutdown.
    async fn process(
        &self,
        worker: &str,
        job: &ClaimedJob,
        models: &Arc<Mutex<Models>>,
        cancel: &CancellationToken,
        deadline: Duration,
    ) -> Ending {
        let t0 = Instant::now();
        let input = match self.input(job).await {
            Ok(i) => i,
            Err(e) => return Ending::Done(Box::new(Err(e)), t0.elapsed()),
        };
        let out = self.storage_dir.join(job_dir(job.id));
        // Fresh on every attempt: a crashed try may have left partial files.
        if out.exists()
            && let Err(source) = std::fs::remove_dir_all(&out)
        {
            return Ending::Done(Box::new(Err(JobError::Output { path: out, source })), t0.elapsed());
        }
        let progress = Arc::new(Progress::default());
        let options = PipelineOptions { progress: Some(progress.clone()), ..self.pipeline.clone() };
        let models = models.clone();
        let task = tokio::task::spawn_blocking(move || {
            // A try left running after its lease was lost holds the sessions until it ends; a
            // panic in one leaves them usable.
            let mut models = models.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            pipeline::process(&input, &out, &options, &mut models)
        });
        tokio::pin!(task);
        let mut beat = tokio::time::interval(self.settings.heartbeat_interval);
        beat.tick().await;
        // Armed when shutdown starts: past it the job is handed back.
        let give_up = tokio::time::sleep(deadline);
        tokio::pin!(give_up);
        let mut stopping = false;
        loop {
            let stage = progress.current().as_str();
            tokio::select! {
                r = &mut task => {
                    let r = match r {
                        Ok(r) => r.map_err(JobError::from),
                        Err(e) => Err(JobError::Panic(e.to_string())),
                    };
                    return Ending::Done(Box::new(r), t0.elapsed());
                }
                _ = beat.tick() => match self.db.heartbeat(job.id, worker, now_ms(), Some(stage)).await {
                    Ok(true) => {}
                    Ok(false) => return Ending::LeaseLost,
                    // The database may come back before the lease runs out.
                    Err(e) => warn!(error = %e, "heartbeat failed"),
                },
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                    give_up.as_mut().reset(tokio::time::Instant::now() + deadline);
                }
                _ = &mut give_up, if stopping => return Ending::HandedBack,
            }
        }
    }

    async fn input(&self, job: &ClaimedJob) -> Result<PairInput, JobError> {
        let paths = |series_uid: String| async move {
            let paths = self.db.series_paths(&series_uid).await?;
            if paths.is_empty() {
                return Err(JobError::NoInstances { series_uid });
            }
            Ok(paths.iter().map(|p| self.storage_dir.join(p)).collect::<Vec<_>>())
        };
        Ok(PairInput {
            pet_paths: paths(job.pet_series_uid.clone()).await?,
            ct_paths: paths(job.ct_series_uid.clone()).await?,
            pet_series_uid: job.pet_series_uid.clone(),
            ct_series_uid: job.ct_series_uid.clone(),
            needs_registration: job.needs_registration,
        })
    }

    /// Every `*.dcm` the pipeline left in the job's folder, in name order.
    fn results(&self, job_id: i64) -> Result<Vec<ResultFile>, JobError> {
        let relative_dir = job_dir(job_id);
        let dir = self.storage_dir.join(&relative_dir);
        let entries = std::fs::read_dir(&dir).map_err(|source| JobError::Output { path: dir.clone(), source })?;
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".dcm"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let path = dir.join(&name);
                let err = |message: String| JobError::Result { path: path.clone(), message };
                let obj = dicom_object::OpenFileOptions::new()
                    .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
                    .open_file(&path)
                    .map_err(|e| err(e.to_string()))?;
                let series_uid = obj
                    .get(dicom_dictionary_std::tags::SERIES_INSTANCE_UID)
                    .and_then(|e| e.to_str().ok())
                    .map(|s| s.trim_end_matches(['\0', ' ']).to_string());
                let meta = obj.meta();
                Ok(ResultFile {
                    sop_instance_uid: meta.media_storage_sop_instance_uid().to_string(),
                    sop_class_uid: meta.media_storage_sop_class_uid().to_string(),
                    series_uid,
                    path: relative_dir.join(&name).to_string_lossy().into_owned(),
                    kind: name.trim_end_matches(".dcm").to_string(),
                })
            })
            .collect()
    }
}
