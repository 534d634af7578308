//! The job queue and the delivery queue, in the `jobs` and `deliveries` tables.
//!
//! A claim is one `UPDATE ... WHERE id = (SELECT ... LIMIT 1 [FOR UPDATE SKIP LOCKED]) RETURNING`
//! statement, committed at once: PostgreSQL skips rows other workers hold, SQLite serialises
//! writers on its database lock (an UPDATE takes it before reading). Every later write by the
//! worker is fenced by `lease_owner` and `state = 'running'`: a worker whose lease was reaped,
//! or whose job was superseded by new instances, changes nothing and learns it from the row
//! count. Nothing holds a transaction open while the pipeline runs.
//!
//! Jobs: `queued` -> `running` -> `delivering` (outputs recorded, deliveries pending) ->
//! `succeeded` | `failed`; retryable errors go back to `queued` with `run_at` in the future until
//! the attempts run out (`dead`). Deliveries: `pending` -> `sending` (leased until
//! `next_attempt_at`) -> `sent` | `pending` (backoff) | `failed`. `sent` is final, so a crash
//! re-sends at most the destination that was being sent to, with the same UIDs.

use sqlx::Row;

use crate::db::{Backend, Db, DbError, q};

/// A job a worker now holds.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    pub study_uid: String,
    pub pet_series_uid: String,
    pub ct_series_uid: String,
    pub needs_registration: bool,
    /// Including this one.
    pub attempts: i64,
}

/// One DICOM object a job produced.
#[derive(Debug, Clone)]
pub struct ResultFile {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub series_uid: Option<String>,
    /// Relative to the storage root.
    pub path: String,
    pub kind: String,
}

/// What becomes of a job whose try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFate {
    /// Queued again, to run at this time.
    Retry { run_at_ms: i64 },
    /// The input is at fault: retrying cannot help.
    Failed,
    /// Retryable, but the attempts ran out.
    Dead,
}

/// A delivery a sender now holds.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub job_id: i64,
    pub destination: String,
    pub study_uid: String,
    pub attempts: i64,
}

/// How one try of a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Sent,
    Retry { at_ms: i64, error: String },
    Failed { error: String },
}

/// What `jobs retry` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Processing starts over.
    Requeued,
    /// Processing had succeeded: only the failed deliveries go again.
    Redelivering {
        destinations: u64,
    },
    NotFound,
    NotRetryable {
        state: String,
    },
}

impl Db {
    fn skip_locked(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Takes the oldest due queued job for `worker`, counting the attempt.
    pub async fn claim_job(&self, worker: &str, now_ms: i64) -> Result<Option<ClaimedJob>, DbError> {
        let sql = format!(
            "UPDATE jobs SET state = 'running', lease_owner = $2, heartbeat_at = $1, attempts = attempts + 1, \
                    started_at = $1, finished_at = NULL, stage = 'assemble' \
             WHERE state = 'queued' AND id = (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= $1 \
                                              ORDER BY run_at, id LIMIT 1{}) \
             RETURNING id, study_uid, pet_series_uid, ct_series_uid, needs_registration, attempts",
            self.skip_locked()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(worker)
            .fetch_optional(self.pool())
            .await
            .map_err(q("claiming a job"))?;
        row.map(|r| {
            Ok(ClaimedJob {
                id: r.try_get(0)?,
                study_uid: r.try_get(1)?,
                pet_series_uid: r.try_get(2)?,
                ct_series_uid: r.try_get(3)?,
                needs_registration: r.try_get::<i64, _>(4)? != 0,
                attempts: r.try_get(5)?,
            })
        })
        .transpose()
        .map_err(q("reading claimed job"))
    }

    /// Renews the lease (and records the stage when given). False: the lease is lost (reaped,
    /// superseded): the worker must stop touching the job.
    pub async fn heartbeat(
        &self,
        job_id: i64,
        worker: &str,
        now_ms: i64,
        stage: Option<&str>,
    ) -> Result<bool, DbError> {
        let n = sqlx::query(
            "UPDATE jobs SET heartbeat_at = $3, stage = COALESCE($4, stage) \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job_id)
        .bind(worker)
        .bind(now_ms)
        .bind(stage)
        .execute(self.pool())
        .await
        .map_err(q("renewing a job lease"))?
        .rows_affected();
        Ok(n == 1)
    }

    /// Stored instance files of a series, relative to the storage root, in path order.
    pub async fn series_paths(&self, series_uid: &str) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT path FROM instances WHERE series_uid = $1 ORDER BY path")
            .bind(series_uid)
            .fetch_all(self.pool())
            .await
            .map_err(q("listing series instances"))?;
        rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(q("reading instance path"))
    }

    /// Records the outputs of a successful run and queues one delivery per destination, in one
    /// transaction fenced by the lease. Returns false (and changes nothing) if the lease is lost.
    pub async fn finish_processing(
        &self,
        job_id: i64,
        worker: &str,
        now_ms: i64,
        process_ms: i64,
        results: &[ResultFile],
        destinations: &[String],
    ) -> Result<bool, DbError> {
        let delivering = !results.is_empty() && !destinations.is_empty();
        let mut tx = self.pool().begin().await.map_err(q("starting transaction"))?;
        let n = sqlx::query(
            "UPDATE jobs SET state = $4, stage = $5, processed_at = $3, process_ms = $6, lease_owner = NULL, \
                    last_error = NULL, finished_at = $7 \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job_id)
        .bind(worker)
        .bind(now_ms)
        .bind(if delivering { "delivering" } else { "succeeded" })
        .bind(if delivering { "deliver" } else { "done" })
        .bind(process_ms)
        .bind(if delivering { None } else { Some(now_ms) })
        .execute(&mut *tx)
        .await
        .map_err(q("recording job outputs"))?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM results WHERE job_id = $1")
            .bind(job_id)
            .execute(&mut *tx)
            .await
            .map_err(q("clearing old results"))?;
        for r in results {
            sqlx::query(
                "INSERT INTO results (job_id, sop_instance_uid, sop_class_uid, series_uid, path, kind, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(job_id)
            .bind(&r.sop_instance_uid)
            .bind(&r.sop_class_uid)
            .bind(&r.series_uid)
            .bind(&r.path)
            .bind(&r.kind)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("recording a result"))?;
        }
        if delivering {
            for d in destinations {
                sqlx::query(
                    "INSERT INTO deliveries (job_id, destination, state, attempts, next_attempt_at, created_at) \
                     VALUES ($1, $2, 'pending', 0, $3, $3) ON CONFLICT (job_id, destination) DO NOTHING",
                )
                .bind(job_id)
                .bind(d)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(q("queueing a delivery"))?;
            }
        }
        tx.commit().await.map_err(q("committing job outputs"))?;
        Ok(true)
    }

    /// Ends a failed try (fenced by the lease). False if the lease was already lost.
    pub async fn fail_job(
        &self,
        job_id: i64,
        worker: &str,
        now_ms: i64,
        error: &str,
        fate: JobFate,
    ) -> Result<bool, DbError> {
        let (state, run_at, finished_at) = match fate {
            JobFate::Retry { run_at_ms } => ("queued", Some(run_at_ms), None),
            JobFate::Failed => ("failed", None, Some(now_ms)),
            JobFate::Dead => ("dead", None, Some(now_ms)),
        };
        let n = sqlx::query(
            "UPDATE jobs SET state = $3, run_at = COALESCE($4, run_at), last_error = $5, lease_owner = NULL, \
                    finished_at = $6 \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job_id)
        .bind(worker)
        .bind(state)
        .bind(run_at)
        .bind(error)
        .bind(finished_at)
        .execute(self.pool())
        .await
        .map_err(q("recording a job failure"))?
        .rows_affected();
        Ok(n == 1)
    }

    /// Gives a job back at shutdown: queued again at once, the interrupted try not counted.
    pub async fn hand_back(&self, job_id: i64, worker: &str, now_ms: i64) -> Result<bool, DbError> {
        let n = sqlx::query(
            "UPDATE jobs SET state = 'queued', run_at = $3, lease_owner = NULL, attempts = attempts - 1 \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job_id)
        .bind(worker)
        .bind(now_ms)
        .execute(self.pool())
        .await
        .map_err(q("handing back a job"))?
        .rows_affected();
        Ok(n == 1)
    }

    /// Re-queues running jobs whose heartbeat is older than `lease_ms` (their try counts), or
    /// marks them dead when the attempts ran out. Returns `(id, new state)` per job.
    pub async fn reap_expired(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max_attempts: i64,
    ) -> Result<Vec<(i64, String)>, DbError> {
        let rows = sqlx::query(
            "UPDATE jobs SET state = CASE WHEN attempts >= $3 THEN 'dead' ELSE 'queued' END, \
                    finished_at = CASE WHEN attempts >= $3 THEN $1 ELSE NULL END, \
                    run_at = $1, \
                    last_error = 'worker ' || lease_owner || ' lost its lease (no heartbeat)', \
                    lease_owner = NULL \
             WHERE state = 'running' AND heartbeat_at < $2 \
             RETURNING id, state",
        )
        .bind(now_ms)
        .bind(now_ms - lease_ms)
        .bind(max_attempts)
        .fetch_all(self.pool())
        .await
        .map_err(q("reaping expired leases"))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q("reading reaped job"))
    }

    /// `jobs retry`: a failed or dead job runs again; if its processing had succeeded, only its
    /// failed deliveries go again.
    pub async fn retry_job(&self, job_id: i64, now_ms: i64) -> Result<RetryOutcome, DbError> {
        let mut tx = self.pool().begin().await.map_err(q("starting transaction"))?;
        let redeliver = sqlx::query(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $2, lease_owner = NULL \
             WHERE job_id = $1 AND state = 'failed' \
               AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND state IN ('failed', 'dead'))",
        )
        .bind(job_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("re-queueing deliveries"))?
        .rows_affected();
        let (sql, outcome) = if redeliver > 0 {
            (
                "UPDATE jobs SET state = 'delivering', finished_at = NULL, run_at = $2 \
                 WHERE id = $1 AND state IN ('failed', 'dead')",
                RetryOutcome::Redelivering { destinations: redeliver },
            )
        } else {
            (
                "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $2, lease_owner = NULL, finished_at = NULL \
                 WHERE id = $1 AND state IN ('failed', 'dead')",
                RetryOutcome::Requeued,
            )
        };
        let n = sqlx::query(sql)
            .bind(job_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("re-queueing a job"))?
            .rows_affected();
        if n == 1 {
            tx.commit().await.map_err(q("committing retry"))?;
            return Ok(outcome);
        }
        let state = sqlx::query("SELECT state FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("reading job state"))?;
        Ok(match state {
            Some(r) => RetryOutcome::NotRetryable { state: r.try_get(0).map_err(q("reading job state"))? },
            None => RetryOutcome::NotFound,
        })
    }

    /// Takes the oldest due delivery (pending, or sending with an expired lease) until
    /// `lease_until_ms`, counting the attempt.
    pub async fn claim_delivery(
        &self,
        worker: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<ClaimedDelivery>, DbError> {
        let sql = format!(
            "UPDATE deliveries SET state = 'sending', lease_owner = $2, attempts = attempts + 1, next_attempt_at = $3 \
             WHERE state IN ('pending', 'sending') AND next_attempt_at <= $1 \
               AND (job_id, destination) = (SELECT job_id, destination FROM deliveries \
                                            WHERE state IN ('pending', 'sending') AND next_attempt_at <= $1 \
                                            ORDER BY next_attempt_at, job_id, destination LIMIT 1{}) \
             RETURNING job_id, destination, attempts",
            self.skip_locked()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(worker)
            .bind(lease_until_ms)
            .fetch_optional(self.pool())
            .await
            .map_err(q("claiming a delivery"))?;
        let Some(r) = row else { return Ok(None) };
        let (job_id, destination, attempts): (i64, String, i64) =
            (|| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))().map_err(q("reading claimed delivery"))?;
        let study_uid: String = sqlx::query("SELECT study_uid FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(self.pool())
            .await
            .and_then(|r| r.try_get(0))
            .map_err(q("reading delivery's job"))?;
        Ok(Some(ClaimedDelivery { job_id, destination, study_uid, attempts }))
    }

    /// The files a job produced, relative to the storage root, in path order.
    pub async fn result_paths(&self, job_id: i64) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT path FROM results WHERE job_id = $1 ORDER BY path")
            .bind(job_id)
            .fetch_all(self.pool())
            .await
            .map_err(q("listing job results"))?;
        rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(q("reading result path"))
    }

    /// Records how a delivery try ended (fenced by its lease) and, once no delivery of the job
    /// is left to try, ends the job: `succeeded` if all were sent, else `failed`. False if the
    /// lease had expired and someone else took the delivery.
    pub async fn finish_delivery(
        &self,
        d: &ClaimedDelivery,
        worker: &str,
        now_ms: i64,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, DbError> {
        let (state, next, error, sent_at) = match outcome {
            DeliveryOutcome::Sent => ("sent", now_ms, None, Some(now_ms)),
            DeliveryOutcome::Retry { at_ms, error } => ("pending", *at_ms, Some(error.as_str()), None),
            DeliveryOutcome::Failed { error } => ("failed", now_ms, Some(error.as_str()), None),
        };
        let mut tx = self.pool().begin().await.map_err(q("starting transaction"))?;
        let n = sqlx::query(
            "UPDATE deliveries SET state = $4, next_attempt_at = $5, last_error = COALESCE($6, last_error), \
                    sent_at = $7, lease_owner = NULL \
             WHERE job_id = $1 AND destination = $2 AND lease_owner = $3 AND state = 'sending'",
        )
        .bind(d.job_id)
        .bind(&d.destination)
        .bind(worker)
        .bind(state)
        .bind(next)
        .bind(error)
        .bind(sent_at)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a delivery"))?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE jobs SET \
                state = CASE WHEN EXISTS (SELECT 1 FROM deliveries WHERE job_id = $1 AND state = 'failed') \
                             THEN 'failed' ELSE 'succeeded' END, \
                last_error = (SELECT 'delivery to ' || destination || ': ' || last_error FROM deliveries \
                              WHERE job_id = $1 AND state = 'failed' ORDER BY destination LIMIT 1), \
                stage = 'done', finished_at = $2 \
             WHERE id = $1 AND state = 'delivering' \
               AND NOT EXISTS (SELECT 1 FROM deliveries WHERE job_id = $1 AND state IN ('pending', 'sending'))",
        )
        .bind(d.job_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("ending a delivered job"))?;
        tx.commit().await.map_err(q("committing delivery"))?;
        Ok(true)
    }
}
