//! `serve`: wires configuration, store, database, ingest and the SCP together, runs the series
//! sweep, the job workers, the lease reaper and the delivery loop, and shuts down gracefully on
//! SIGTERM/SIGINT (workers finish or hand back their job within the deadline).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use tokio::sync::Notify;

use crate::config::Settings;
use crate::db::{Db, DbError};
use crate::delivery::Deliverer;
use crate::dimse::{Scp, ScpSettings};
use crate::infer::{InferError, Models};
use crate::ingest::Ingest;
use crate::pipeline::PipelineOptions;
use crate::store::{Store, StoreError};
use crate::worker::{self, Workers};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("listening on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("loading the models: {0}")]
    Models(#[from] InferError),
}

/// Runs the node until SIGTERM or SIGINT.
pub async fn serve(settings: Settings) -> Result<(), ServeError> {
    let cancel = CancellationToken::new();
    let signals = shutdown_signal().map_err(ServeError::Signals)?;
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        signals.await;
        info!("shutdown requested: no new associations; finishing in-flight instances");
        on_signal.cancel();
    });
    run(settings, cancel, |addr| info!(%addr, "listening")).await
}

/// The node's main loop, stopped by `cancel`. `on_listen` sees the bound address (port 0 works).
pub async fn run(
    settings: Settings,
    cancel: CancellationToken,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let models = load_models(&settings).await?;
    let store = Arc::new(Store::open(&settings.storage_dir, settings.min_free_bytes)?);
    let db = Db::connect(&settings.database_url, settings.database_max_connections).await?;
    info!(backend = ?db.backend(), storage = %settings.storage_dir.display(), "store and database ready");
    let ingest = Arc::new(Ingest::new(store, db.clone(), settings.ct_quiet_period));
    let listener =
        TcpListener::bind(settings.bind).await.map_err(|source| ServeError::Bind { addr: settings.bind, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: settings.bind, source })?;
    on_listen(addr);

    let tracker = TaskTracker::new();
    let sweeper = {
        let ingest = ingest.clone();
        let cancel = cancel.clone();
        // Check often enough that a CT completes within a quarter period of going quiet.
        let every = (settings.ct_quiet_period / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => ingest.sweep().await,
                }
            }
        })
    };
    spawn_jobs(&settings, &db, models, &cancel, &tracker);
    let scp = Scp::new(ScpSettings::from(&settings), ingest);
    scp.serve(listener, cancel.clone(), tracker.clone()).await;
    tracker.close();
    if tokio::time::timeout(settings.shutdown_deadline, tracker.wait()).await.is_err() {
        warn!(
            deadline_s = settings.shutdown_deadline.as_secs_f64(),
            "associations still open at the shutdown deadline; exiting"
        );
    }
    let _ = sweeper.await;
    db.close().await;
    info!("stopped");
    Ok(())
}

/// Workers, the reaper and the delivery loop, on `tracker` so shutdown waits for them. A node
/// with `worker.count = 0` only receives.
fn spawn_jobs(settings: &Settings, db: &Db, models: Vec<Models>, cancel: &CancellationToken, tracker: &TaskTracker) {
    if settings.worker.count == 0 {
        return;
    }
    let node = worker::node_id();
    // Workers hand back their job early enough for the process to exit within the deadline.
    let hand_back_after = settings.shutdown_deadline.mul_f64(0.75);
    let wake = Arc::new(Notify::new());
    let workers = Arc::new(Workers {
        db: db.clone(),
        storage_dir: settings.storage_dir.clone(),
        settings: settings.worker.clone(),
        pipeline: PipelineOptions::from_settings(settings),
        destinations: settings.destinations.iter().map(|d| d.name.clone()).collect(),
        delivery_wake: wake.clone(),
    });
    for (n, models) in models.into_iter().enumerate() {
        let models = Arc::new(std::sync::Mutex::new(models));
        tracker.spawn(workers.clone().run(format!("{node}/w{n}"), models, cancel.clone(), hand_back_after));
    }
    tracker.spawn(workers.reap(cancel.clone()));
    let deliverer = Arc::new(Deliverer {
        db: db.clone(),
        storage_dir: settings.storage_dir.clone(),
        settings: settings.delivery.clone(),
        destinations: settings.destinations.clone(),
        id: format!("{node}/d"),
        poll_interval: settings.worker.poll_interval,
        wake,
    });
    tracker.spawn(deliverer.run(cancel.clone(), hand_back_after));
    let (workers, destinations) = (settings.worker.count, settings.destinations.len());
    info!(node = %node, workers, destinations, "job workers started");
}

/// One set of model sessions per worker, checked before anything else starts.
async fn load_models(settings: &Settings) -> Result<Vec<Models>, ServeError> {
    let (inference, manifests, count) = (settings.inference.clone(), settings.models.clone(), settings.worker.count);
    let models = tokio::task::spawn_blocking(move || {
        (0..count).map(|_| Models::load(&inference, &manifests)).collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ServeError::Models(InferError::Library(format!("loading the models panicked: {e}"))))??;
    if let Some(first) = models.first() {
        for m in first.iter() {
            info!(model = m.name(), version = %m.manifest().version, task = m.manifest().task.as_str(), device = ?m.device(), "model loaded");
        }
    }
    Ok(models)
}

fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
