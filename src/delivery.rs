//! Delivery: sends each job's results to every `[[destinations]]` by C-STORE, one destination
//! at a time per claim, with exponential backoff per destination and without re-running the
//! pipeline. State lives in the `deliveries` table (see `queue`), so any node can pick up a
//! delivery, a `sent` destination is never sent again, and a re-send after a crash mid-send is
//! harmless: the results carry deterministic UIDs, so the destination replaces, not duplicates.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{DeliverySettings, Destination};
use crate::db::Db;
use crate::dimse::scu::{self, ScuSettings};
use crate::ingest::now_ms;
use crate::queue::{ClaimedDelivery, DeliveryOutcome};

/// Exchanges one send may take before it is cut off. The lease is longer, so a send never
/// outlives its lease and two senders never hold one delivery.
const SEND_EXCHANGES: u32 = 9;
const LEASE_EXCHANGES: u32 = 10;

pub struct Deliverer {
    pub db: Db,
    pub storage_dir: PathBuf,
    pub settings: DeliverySettings,
    pub destinations: Vec<Destination>,
    /// This node's sender id, recorded as the delivery's lease owner.
    pub id: String,
    /// How often to look for due deliveries when nobody calls `wake`.
    pub poll_interval: Duration,
    /// Signalled when a job's deliveries are queued.
    pub wake: Arc<Notify>,
}

impl Deliverer {
    fn lease(&self) -> Duration {
        self.settings.connect_timeout + self.settings.timeout * LEASE_EXCHANGES
    }

    /// Sends due deliveries until `cancel`; an interrupted send is put back after `deadline`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken, deadline: Duration) {
        loop {
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                let now = now_ms();
                let claimed = self.db.claim_delivery(&self.id, now, now + self.lease().as_millis() as i64).await;
                match claimed {
                    Ok(Some(d)) => {
                        let span = info_span!(
                            "delivery",
                            job_id = d.job_id,
                            study_uid = %d.study_uid,
                            destination = %d.destination
                        );
                        self.deliver(d, &cancel, deadline).instrument(span).await;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "claiming a delivery failed");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.poll_interval) => {},
            }
        }
    }

    async fn deliver(&self, d: ClaimedDelivery, cancel: &CancellationToken, deadline: Duration) {
        let outcome = match self.destinations.iter().find(|x| x.name == d.destination) {
            None => DeliveryOutcome::Failed {
                error: format!("destination {:?} is not in this node's configuration", d.destination),
            },
            Some(dest) => {
                let send = self.send(dest, d.job_id);
                tokio::pin!(send);
                let interrupted = async {
                    cancel.cancelled().await;
                    tokio::time::sleep(deadline).await;
                };
                tokio::select! {
                    r = &mut send => self.outcome(&d, r),
                    _ = interrupted => {
                        // Given back now rather than when the lease runs out; this try counts.
                        DeliveryOutcome::Retry { at_ms: now_ms(), error: "interrupted by shutdown".into() }
                    }
                }
            }
        };
        match &outcome {
            DeliveryOutcome::Sent => info!(attempt = d.attempts, "results delivered"),
            DeliveryOutcome::Retry { at_ms, error } => {
                let retry_in_s = (at_ms - now_ms()) as f64 / 1000.0;
                warn!(attempt = d.attempts, retry_in_s, %error, "delivery failed, will retry")
            }
            DeliveryOutcome::Failed { error } => warn!(attempt = d.attempts, %error, "delivery failed for good"),
        }
        match self.db.finish_delivery(&d, &self.id, now_ms(), &outcome).await {
            Ok(true) => {}
            Ok(false) => warn!("delivery lease expired before the outcome was recorded; another sender took it"),
            Err(e) => warn!(error = %e, "recording the delivery failed; it is retried when its lease expires"),
        }
    }

    async fn send(&self, dest: &Destination, job_id: i64) -> Result<usize, SendError> {
        let paths = self
            .db
            .result_paths(job_id)
            .await
            .map_err(|e| SendError { retryable: e.is_retryable(), message: e.to_string() })?;
        let files: Vec<PathBuf> = paths.iter().map(|p| self.storage_dir.join(p)).collect();
        let settings = ScuSettings {
            calling_ae_title: dest.calling_ae_title.clone(),
            called_ae_title: dest.ae_title.clone(),
            host: dest.host.clone(),
            port: dest.port,
            connect_timeout: self.settings.connect_timeout,
            timeout: self.settings.timeout,
        };
        let limit = self.settings.connect_timeout + self.settings.timeout * SEND_EXCHANGES;
        match tokio::time::timeout(limit, scu::store_files(&settings, &files)).await {
            Err(_) => Err(SendError {
                retryable: true,
                message: format!("sending took longer than {} s", limit.as_secs_f64()),
            }),
            Ok(Ok(sent)) => Ok(sent.len()),
            Ok(Err(e)) => Err(SendError { retryable: e.is_retryable(), message: e.to_string() }),
        }
    }

    fn outcome(&self, d: &ClaimedDelivery, r: Result<usize, SendError>) -> DeliveryOutcome {
        match r {
            Ok(_) => DeliveryOutcome::Sent,
            Err(SendError { retryable: true, message }) if d.attempts < i64::from(self.settings.max_attempts) => {
                let wait = self.settings.backoff.after(d.attempts as u32);
                DeliveryOutcome::Retry { at_ms: now_ms() + wait.as_millis() as i64, error: message }
            }
            Err(SendError { retryable: true, message }) => {
                DeliveryOutcome::Failed { error: format!("{message} (gave up after {} attempts)", d.attempts) }
            }
            Err(SendError { message, .. }) => DeliveryOutcome::Failed { error: message },
        }
    }
}

/// Why a send failed, and whether a later try can succeed.
struct SendError {
    retryable: bool,
    message: String,
}
