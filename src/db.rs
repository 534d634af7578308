//! The index: studies, series, instances and jobs, in PostgreSQL or embedded SQLite through one
//! set of portable SQL statements (sqlx `Any`). Times are epoch milliseconds in both back ends.
//!
//! Every transaction that changes a study starts with a write to its `studies` row: PostgreSQL then
//! serialises writers of that study on the row lock, and SQLite takes its write lock up front
//! instead of failing to upgrade a read transaction.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

use crate::pairing::{SeriesState, pair_ct};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("connecting to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("creating the database directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("running migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{context}: {source}")]
    Query { context: &'static str, source: sqlx::Error },
    #[error("series {series_uid} already belongs to study {existing_study}, not {study_uid}")]
    SeriesInOtherStudy { series_uid: String, study_uid: String, existing_study: String },
    #[error("SOP instance {sop_instance_uid} is already stored in series {existing_series}")]
    InstanceInOtherSeries { sop_instance_uid: String, existing_series: String },
}

impl DbError {
    /// Whether trying again later can succeed (connection trouble, lock timeouts), as opposed to
    /// data that will never fit.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DbError::Connect(_) | DbError::Query { .. })
    }
}

pub(crate) fn q(context: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Query { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// Attributes of one received instance, as `ingest` read them.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub modality: String,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub study_date: Option<String>,
    pub accession_number: Option<String>,
    pub study_description: Option<String>,
    pub series_number: Option<i64>,
    pub series_description: Option<String>,
    pub frame_of_reference_uid: Option<String>,
    pub number_of_slices: Option<i64>,
    pub image_index: Option<i64>,
    pub instance_number: Option<i64>,
    pub acquired_at_ms: Option<i64>,
    pub path: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub calling_ae: String,
    pub received_at_ms: i64,
}

/// What the index knows of a stored instance.
#[derive(Debug, Clone)]
pub struct InstanceDigest {
    pub sha256: String,
    pub series_uid: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new instance, or new bytes for a known one; `superseded_jobs` were waiting on the old
    /// content of its series.
    Stored { replaced: bool, superseded_jobs: u64 },
    /// The same bytes were already indexed: nothing changed.
    Duplicate,
}

/// What a study evaluation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub completed_series: Vec<String>,
    pub queued_jobs: Vec<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SeriesRow {
    pub series_uid: String,
    pub modality: String,
    pub series_number: Option<i64>,
    pub series_description: Option<String>,
    pub frame_of_reference_uid: Option<String>,
    pub number_of_slices: Option<i64>,
    pub instance_count: i64,
    pub complete: bool,
    pub last_received_at_ms: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StudyRow {
    pub study_uid: String,
    pub patient_id: Option<String>,
    pub study_date: Option<String>,
    pub accession_number: Option<String>,
    pub study_description: Option<String>,
    pub updated_at_ms: i64,
    pub series: Vec<SeriesRow>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRow {
    pub id: i64,
    pub state: String,
    pub stage: Option<String>,
    pub study_uid: String,
    pub pet_series_uid: String,
    pub ct_series_uid: String,
    pub pet_revision: i64,
    pub ct_revision: i64,
    pub needs_registration: bool,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub superseded_by: Option<i64>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub run_at_ms: i64,
    /// Milliseconds the pipeline took, once it succeeded.
    pub process_ms: Option<i64>,
    pub deliveries: Vec<DeliveryRow>,
}

/// One destination of a job: pending | sending | sent | failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRow {
    pub destination: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub sent_at_ms: Option<i64>,
}

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

impl Db {
    /// Connects (creating an SQLite file and its directory if needed) and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        if backend == Backend::Sqlite {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|source| DbError::Directory { path: dir.display().to_string(), source })?;
            }
        }
        let options: AnyConnectOptions = url.parse().map_err(DbError::Connect)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL makes each commit durable
                        // before the C-STORE-RSP goes out.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(DbError::Connect)?;
        match backend {
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
        }
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The stored checksum, series and path of an instance, if it is indexed.
    pub async fn instance_digest(&self, sop_instance_uid: &str) -> Result<Option<InstanceDigest>, DbError> {
        let row = sqlx::query("SELECT sha256, series_uid, path FROM instances WHERE sop_instance_uid = $1")
            .bind(sop_instance_uid)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("looking up instance"))?;
        row.map(|r| Ok(InstanceDigest { sha256: r.try_get(0)?, series_uid: r.try_get(1)?, path: r.try_get(2)? }))
            .transpose()
            .map_err(q("reading instance row"))
    }

    /// Indexes an instance whose file is already durable, in one transaction with its study and
    /// series; a changed series supersedes the jobs that were waiting on its old content.
    pub async fn record_instance(&self, r: &InstanceRecord) -> Result<Recorded, DbError> {
        let mut tx = self.pool.begin().await.map_err(q("starting transaction"))?;
        sqlx::query(
            "INSERT INTO studies (study_uid, patient_id, patient_name, study_date, accession_number, study_description, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (study_uid) DO UPDATE SET updated_at = excluded.updated_at",
        )
        .bind(&r.study_uid)
        .bind(&r.patient_id)
        .bind(&r.patient_name)
        .bind(&r.study_date)
        .bind(&r.accession_number)
        .bind(&r.study_description)
        .bind(r.received_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("recording study"))?;

        let existing_series = sqlx::query("SELECT study_uid FROM series WHERE series_uid = $1")
            .bind(&r.series_uid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("looking up series"))?;
        if let Some(row) = existing_series {
            let existing_study: String = row.try_get(0).map_err(q("reading series row"))?;
            if existing_study != r.study_uid {
                return Err(DbError::SeriesInOtherStudy {
                    series_uid: r.series_uid.clone(),
                    study_uid: r.study_uid.clone(),
                    existing_study,
                });
            }
        }
        let existing = sqlx::query("SELECT sha256, series_uid FROM instances WHERE sop_instance_uid = $1")
            .bind(&r.sop_instance_uid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("looking up instance"))?;
        let replaced = match existing {
            Some(row) => {
                let (sha, series): (String, String) =
                    (row.try_get(0).map_err(q("reading instance"))?, row.try_get(1).map_err(q("reading instance"))?);
                if series != r.series_uid {
                    return Err(DbError::InstanceInOtherSeries {
                        sop_instance_uid: r.sop_instance_uid.clone(),
                        existing_series: series,
                    });
                }
                if sha == r.sha256 {
                    tx.commit().await.map_err(q("committing"))?;
                    return Ok(Recorded::Duplicate);
                }
                true
            }
            None => false,
        };

        sqlx::query(
            "INSERT INTO series (series_uid, study_uid, modality, series_number, series_description, frame_of_reference_uid, \
                                 number_of_slices, acquired_at, instance_count, revision, first_received_at, last_received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, 1, $9, $9) \
             ON CONFLICT (series_uid) DO UPDATE SET \
                instance_count = series.instance_count + $10, \
                revision = series.revision + 1, \
                last_received_at = excluded.last_received_at, \
                frame_of_reference_uid = COALESCE(series.frame_of_reference_uid, excluded.frame_of_reference_uid), \
                number_of_slices = COALESCE(series.number_of_slices, excluded.number_of_slices), \
                acquired_at = CASE WHEN series.acquired_at IS NULL OR excluded.acquired_at < series.acquired_at \
                                   THEN excluded.acquired_at ELSE series.acquired_at END",
        )
        .bind(&r.series_uid)
        .bind(&r.study_uid)
        .bind(&r.modality)
        .bind(r.series_number)
        .bind(&r.series_description)
        .bind(&r.frame_of_reference_uid)
        .bind(r.number_of_slices)
        .bind(r.acquired_at_ms)
        .bind(r.received_at_ms)
        .bind(if replaced { 0i64 } else { 1i64 })
        .execute(&mut *tx)
        .await
        .map_err(q("recording series"))?;

        sqlx::query(
            "INSERT INTO instances (sop_instance_uid, series_uid, sop_class_uid, transfer_syntax_uid, instance_number, image_index, \
                                    path, size_bytes, sha256, calling_ae, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (sop_instance_uid) DO UPDATE SET sop_class_uid = excluded.sop_class_uid, \
                transfer_syntax_uid = excluded.transfer_syntax_uid, instance_number = excluded.instance_number, \
                image_index = excluded.image_index, path = excluded.path, size_bytes = excluded.size_bytes, \
                sha256 = excluded.sha256, calling_ae = excluded.calling_ae, received_at = excluded.received_at",
        )
        .bind(&r.sop_instance_uid)
        .bind(&r.series_uid)
        .bind(&r.sop_class_uid)
        .bind(&r.transfer_syntax_uid)
        .bind(r.instance_number)
        .bind(r.image_index)
        .bind(&r.path)
        .bind(r.size_bytes)
        .bind(&r.sha256)
        .bind(&r.calling_ae)
        .bind(r.received_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("recording instance"))?;

        let superseded = sqlx::query(
            "UPDATE jobs SET state = 'superseded', finished_at = $2 \
             WHERE (pet_series_uid = $1 OR ct_series_uid = $1) AND state IN ('queued', 'running')",
        )
        .bind(&r.series_uid)
        .bind(r.received_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("superseding jobs"))?
        .rows_affected();
        tx.commit().await.map_err(q("committing instance"))?;
        Ok(Recorded::Stored { replaced, superseded_jobs: superseded })
    }

    /// Studies with a PET or CT series that is not complete yet: PET ones are re-counted, CT ones
    /// whose last instance is older than `quiet_cutoff_ms` can complete now.
    pub async fn studies_to_evaluate(&self, quiet_cutoff_ms: i64) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT DISTINCT study_uid FROM series \
             WHERE (complete_revision IS NULL OR complete_revision <> revision) \
               AND (modality = 'PT' OR (modality = 'CT' AND last_received_at <= $1))",
        )
        .bind(quiet_cutoff_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("finding studies to evaluate"))?;
        rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(q("reading study uid"))
    }

    /// Decides which series of a study are complete and queues exactly one job per PET series
    /// and its best CT. Idempotent: running it twice, or on two nodes at once, queues nothing new.
    pub async fn evaluate_study(&self, study_uid: &str, now_ms: i64, quiet_ms: i64) -> Result<Evaluation, DbError> {
        let mut tx = self.pool.begin().await.map_err(q("starting transaction"))?;
        // Lock the study (see the module note).
        sqlx::query("UPDATE studies SET updated_at = updated_at WHERE study_uid = $1")
            .bind(study_uid)
            .execute(&mut *tx)
            .await
            .map_err(q("locking study"))?;
        let rows = sqlx::query(
            "SELECT series_uid, modality, frame_of_reference_uid, number_of_slices, acquired_at, instance_count, \
                    revision, complete_revision, last_received_at \
             FROM series WHERE study_uid = $1 ORDER BY series_uid",
        )
        .bind(study_uid)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("reading series"))?;
        let mut series = Vec::with_capacity(rows.len());
        for r in &rows {
            series.push(SeriesState {
                uid: r.try_get(0).map_err(q("reading series"))?,
                modality: r.try_get(1).map_err(q("reading series"))?,
                frame_of_reference_uid: r.try_get(2).map_err(q("reading series"))?,
                number_of_slices: r.try_get(3).map_err(q("reading series"))?,
                acquired_at: r.try_get(4).map_err(q("reading series"))?,
                instance_count: r.try_get(5).map_err(q("reading series"))?,
                revision: r.try_get(6).map_err(q("reading series"))?,
                complete_revision: r.try_get(7).map_err(q("reading series"))?,
                last_received_at: r.try_get(8).map_err(q("reading series"))?,
            });
        }
        let mut evaluation = Evaluation::default();
        for s in series.iter_mut().filter(|s| !s.complete()) {
            let complete = match (s.modality.as_str(), s.number_of_slices) {
                ("PT", Some(n)) => {
                    let distinct: i64 = sqlx::query(
                        "SELECT COUNT(DISTINCT image_index) FROM instances WHERE series_uid = $1 AND image_index IS NOT NULL",
                    )
                    .bind(&s.uid)
                    .fetch_one(&mut *tx)
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(q("counting PET slices"))?;
                    distinct >= n
                }
                ("PT", None) | ("CT", _) => now_ms - s.last_received_at >= quiet_ms,
                _ => false,
            };
            if complete {
                sqlx::query("UPDATE series SET complete_revision = revision, completed_at = $2 WHERE series_uid = $1")
                    .bind(&s.uid)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("marking series complete"))?;
                s.complete_revision = Some(s.revision);
                evaluation.completed_series.push(s.uid.clone());
            }
        }
        for pet in series.iter().filter(|s| s.modality == "PT" && s.complete()) {
            let Some((ct, needs_registration)) = pair_ct(pet, &series) else { continue };
            let inserted = sqlx::query(
                "INSERT INTO jobs (study_uid, pet_series_uid, ct_series_uid, pet_revision, ct_revision, needs_registration, \
                                   state, run_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $7) \
                 ON CONFLICT (pet_series_uid, ct_series_uid, pet_revision, ct_revision) DO NOTHING",
            )
            .bind(study_uid)
            .bind(&pet.uid)
            .bind(&ct.uid)
            .bind(pet.revision)
            .bind(ct.revision)
            .bind(needs_registration as i64)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("queueing job"))?
            .rows_affected();
            if inserted == 0 {
                continue;
            }
            let id: i64 = sqlx::query(
                "SELECT id FROM jobs WHERE pet_series_uid = $1 AND ct_series_uid = $2 AND pet_revision = $3 AND ct_revision = $4",
            )
            .bind(&pet.uid)
            .bind(&ct.uid)
            .bind(pet.revision)
            .bind(ct.revision)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(q("reading job id"))?;
            sqlx::query(
                // Also links jobs that a new instance already superseded to their successor.
                "UPDATE jobs SET state = 'superseded', superseded_by = $2, finished_at = COALESCE(finished_at, $3) \
                 WHERE pet_series_uid = $1 AND id <> $2 \
                   AND (state IN ('queued', 'running') OR (state = 'superseded' AND superseded_by IS NULL))",
            )
            .bind(&pet.uid)
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("superseding older jobs"))?;
            evaluation.queued_jobs.push(id);
        }
        tx.commit().await.map_err(q("committing evaluation"))?;
        Ok(evaluation)
    }

    pub async fn list_studies(&self) -> Result<Vec<StudyRow>, DbError> {
        let studies = sqlx::query(
            "SELECT study_uid, patient_id, study_date, accession_number, study_description, updated_at FROM studies ORDER BY updated_at DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing studies"))?;
        let series = sqlx::query(
            "SELECT study_uid, series_uid, modality, series_number, series_description, frame_of_reference_uid, number_of_slices, \
                    instance_count, revision, complete_revision, last_received_at FROM series ORDER BY series_number, series_uid",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing series"))?;
        let mut out = studies
            .iter()
            .map(|r| {
                Ok(StudyRow {
                    study_uid: r.try_get(0)?,
                    patient_id: r.try_get(1)?,
                    study_date: r.try_get(2)?,
                    accession_number: r.try_get(3)?,
                    study_description: r.try_get(4)?,
                    updated_at_ms: r.try_get(5)?,
                    series: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(q("reading study row"))?;
        for r in &series {
            let study: String = r.try_get(0).map_err(q("reading series row"))?;
            let row = (|| -> Result<SeriesRow, sqlx::Error> {
                let revision: i64 = r.try_get(8)?;
                let complete_revision: Option<i64> = r.try_get(9)?;
                Ok(SeriesRow {
                    series_uid: r.try_get(1)?,
                    modality: r.try_get(2)?,
                    series_number: r.try_get(3)?,
                    series_description: r.try_get(4)?,
                    frame_of_reference_uid: r.try_get(5)?,
                    number_of_slices: r.try_get(6)?,
                    instance_count: r.try_get(7)?,
                    complete: complete_revision == Some(revision),
                    last_received_at_ms: r.try_get(10)?,
                })
            })()
            .map_err(q("reading series row"))?;
            if let Some(s) = out.iter_mut().find(|s| s.study_uid == study) {
                s.series.push(row);
            }
        }
        Ok(out)
    }

    pub async fn list_jobs(&self) -> Result<Vec<JobRow>, DbError> {
        let rows = sqlx::query(
            "SELECT id, state, stage, study_uid, pet_series_uid, ct_series_uid, pet_revision, ct_revision, needs_registration, \
                    attempts, last_error, superseded_by, created_at, started_at, finished_at, run_at, process_ms \
             FROM jobs ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing jobs"))?;
        let deliveries = sqlx::query(
            "SELECT job_id, destination, state, attempts, next_attempt_at, last_error, sent_at \
             FROM deliveries ORDER BY job_id, destination",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing deliveries"))?;
        let mut by_job: std::collections::HashMap<i64, Vec<DeliveryRow>> = std::collections::HashMap::new();
        for r in &deliveries {
            let row = (|| -> Result<(i64, DeliveryRow), sqlx::Error> {
                Ok((
                    r.try_get(0)?,
                    DeliveryRow {
                        destination: r.try_get(1)?,
                        state: r.try_get(2)?,
                        attempts: r.try_get(3)?,
                        next_attempt_at_ms: r.try_get(4)?,
                        last_error: r.try_get(5)?,
                        sent_at_ms: r.try_get(6)?,
                    },
                ))
            })()
            .map_err(q("reading delivery row"))?;
            by_job.entry(row.0).or_default().push(row.1);
        }
        rows.iter()
            .map(|r| {
                Ok(JobRow {
                    id: r.try_get(0)?,
                    state: r.try_get(1)?,
                    stage: r.try_get(2)?,
                    study_uid: r.try_get(3)?,
                    pet_series_uid: r.try_get(4)?,
                    ct_series_uid: r.try_get(5)?,
                    pet_revision: r.try_get(6)?,
                    ct_revision: r.try_get(7)?,
                    needs_registration: r.try_get::<i64, _>(8)? != 0,
                    attempts: r.try_get(9)?,
                    last_error: r.try_get(10)?,
                    superseded_by: r.try_get(11)?,
                    created_at_ms: r.try_get(12)?,
                    started_at_ms: r.try_get(13)?,
                    finished_at_ms: r.try_get(14)?,
                    run_at_ms: r.try_get(15)?,
                    process_ms: r.try_get(16)?,
                    deliveries: by_job.remove(&r.try_get::<i64, _>(0)?).unwrap_or_default(),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q("reading job row"))
    }
}
