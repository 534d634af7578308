//! The node's one TOML file: typed, unknown keys refused, defaults for everything but the peers.
//! Layering: built-in defaults, then the file, then `PETCT_*` environment variables.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ids::AeTitle;
use crate::infer::{Device, InferenceSettings};
use crate::pipeline::RegistrationPolicy;
use crate::segment::SegmentOptions;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Key { path: PathBuf, key: String, message: String },
    #[error("{path}: {}", problems.iter().map(|(k, m)| format!("key `{k}`: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid { path: PathBuf, problems: Vec<(String, String)> },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    /// Calling AEs allowed to associate. Unknown callers are refused unless
    /// `node.allow_any_caller` is true.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub series: SeriesConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Where results are sent by C-STORE, each independently.
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    #[serde(default)]
    pub registration: RegistrationPolicy,
    /// The classical segmentation (always available; used when no model is configured).
    #[serde(default)]
    pub segmentation: SegmentOptions,
    /// ONNX Runtime: where the library is and where the learned models run.
    #[serde(default)]
    pub inference: InferenceConfig,
    /// Learned models, one entry per model manifest; none: the classical segmentation only.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub ae_title: String,
    pub bind: String,
    pub allow_any_caller: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { ae_title: "PETCT_NODE".into(), bind: "127.0.0.1:11112".into(), allow_any_caller: false }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub ae_title: String,
    /// IP address or host name the association must come from; any host when absent.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub dir: PathBuf,
    /// Stores are refused with A700 while less than this is free on the storage volume.
    pub min_free_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("var/petct-node"), min_free_mb: 1024 }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://...` or `sqlite://...`; empty means `sqlite://<storage.dir>/petct-node.db`.
    pub url: String,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeriesConfig {
    /// A CT series (or a PET series without Number of Slices) is complete when no instance
    /// arrived for this long.
    pub ct_quiet_period_s: f64,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        Self { ct_quiet_period_s: 30.0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_associations: usize,
    pub max_pdu_bytes: u32,
    pub max_instance_bytes: u64,
    /// An association that sends nothing for this long is aborted.
    pub idle_timeout_s: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_associations: 32, max_pdu_bytes: 1 << 20, max_instance_bytes: 1 << 30, idle_timeout_s: 120.0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM/SIGINT, in-flight work gets this long before the process exits.
    pub deadline_s: f64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { deadline_s: 20.0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs processed at once by this node; 0 makes a receive-only node.
    pub count: usize,
    /// A running job whose heartbeat is older than this is re-queued by any node's reaper.
    pub lease_timeout_s: f64,
    pub heartbeat_interval_s: f64,
    /// Tries of a job (processing) before a retryable error makes it `dead`.
    pub max_attempts: u32,
    /// How often an idle worker looks for a job.
    pub poll_interval_s: f64,
    /// Backoff before re-running a job after a retryable error: doubles per attempt, capped.
    pub initial_backoff_s: f64,
    pub max_backoff_s: f64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            count: 1,
            lease_timeout_s: 60.0,
            heartbeat_interval_s: 10.0,
            max_attempts: 3,
            poll_interval_s: 1.0,
            initial_backoff_s: 30.0,
            max_backoff_s: 600.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Tries per destination before its delivery is `failed`.
    pub max_attempts: u32,
    /// Wait after a failed try: doubles per attempt, capped at `max_backoff_s`.
    pub initial_backoff_s: f64,
    pub max_backoff_s: f64,
    pub connect_timeout_s: f64,
    /// Longest wait for any one exchange with the destination (association, response, release).
    pub timeout_s: f64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff_s: 10.0,
            max_backoff_s: 600.0,
            connect_timeout_s: 10.0,
            timeout_s: 60.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Unique name, shown by `jobs list`.
    pub name: String,
    /// Called AE title.
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Calling AE title for this destination; `node.ae_title` when absent.
    pub calling_ae_title: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// `libonnxruntime.so`, relative to the config file; empty: `$ORT_DYLIB_PATH`.
    pub library: String,
    pub device: Device,
    /// With `device = "cuda"`: run on the CPU when CUDA cannot be used instead of refusing to start.
    pub allow_cpu_fallback: bool,
    /// Intra-op threads per session.
    pub threads: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        let d = InferenceSettings::default();
        Self { library: String::new(), device: d.device, allow_cpu_fallback: d.allow_cpu_fallback, threads: d.threads }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model's `*.model.toml`, relative to the config file.
    pub manifest: PathBuf,
}

/// Job processing after validation.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub count: usize,
    pub lease_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_attempts: u32,
    pub poll_interval: Duration,
    pub backoff: Backoff,
}

/// Delivery after validation.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// Exponential backoff: `initial * 2^(attempt-1)`, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `attempt`-th failed try (1-based).
    pub fn after(&self, attempt: u32) -> Duration {
        let factor = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        self.initial.mul_f64(factor).min(self.max)
    }
}

#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub ae_title: AeTitle,
    pub calling_ae_title: AeTitle,
    pub host: String,
    pub port: u16,
}

/// A peer after validation: its AE title and the addresses it may come from.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ae_title: AeTitle,
    pub hosts: Option<Vec<IpAddr>>,
}

/// The configuration after every check: what the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ae_title: AeTitle,
    pub bind: SocketAddr,
    pub allow_any_caller: bool,
    pub peers: Vec<Peer>,
    pub storage_dir: PathBuf,
    pub min_free_bytes: u64,
    pub database_url: String,
    pub database_max_connections: u32,
    pub ct_quiet_period: Duration,
    pub max_associations: usize,
    pub max_pdu_bytes: u32,
    pub max_instance_bytes: u64,
    pub idle_timeout: Duration,
    pub shutdown_deadline: Duration,
    pub worker: WorkerSettings,
    pub delivery: DeliverySettings,
    pub destinations: Vec<Destination>,
    pub registration: RegistrationPolicy,
    pub segmentation: SegmentOptions,
    pub inference: InferenceSettings,
    /// Model manifests, resolved against the config file's folder; loaded and checked by
    /// [`crate::infer::Models::load`].
    pub models: Vec<PathBuf>,
}

impl Config {
    /// Parses TOML text; errors name the key at fault.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        from_toml(text).map_err(|e| match e {
            TomlError::Syntax(message) => ConfigError::Syntax { path: path.into(), message },
            TomlError::Key { key, message } => ConfigError::Key { path: path.into(), key, message },
        })
    }

    /// Reads the file, applies `PETCT_*` environment overrides, and checks every value.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Self::parse(path, &text)?;
        config.apply_env(|k| std::env::var(k).ok());
        config.settings(path)
    }

    /// Environment wins over the file for the keys a deployment most often sets per host.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("PETCT_DATABASE_URL") {
            self.database.url = v;
        }
        if let Some(v) = get("PETCT_BIND") {
            self.node.bind = v;
        }
        if let Some(v) = get("PETCT_STORAGE_DIR") {
            self.storage.dir = v.into();
        }
        if let Some(v) = get("PETCT_AE_TITLE") {
            self.node.ae_title = v;
        }
    }

    /// Checks values that types alone cannot: addresses, AE titles, ranges.
    pub fn settings(&self, path: &Path) -> Result<Settings, ConfigError> {
        // Every problem is collected, so an admin fixes the file in one pass.
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut check = |key: &str, r: Result<(), String>| {
            if let Err(m) = r {
                problems.push((key.to_string(), m));
            }
        };
        let ae_title = AeTitle::parse(&self.node.ae_title);
        check("node.ae_title", ae_title.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        let bind = self.node.bind.parse::<SocketAddr>();
        check("node.bind", bind.as_ref().map(|_| ()).map_err(|e| format!("{:?} is not IP:port ({e})", self.node.bind)));
        let mut peers = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.iter().enumerate() {
            let ae = AeTitle::parse(&p.ae_title);
            check(&format!("peers[{i}].ae_title"), ae.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let hosts = p.host.as_deref().map(resolve_host).transpose();
            check(&format!("peers[{i}].host"), hosts.as_ref().map(|_| ()).map_err(Clone::clone));
            if let (Ok(ae_title), Ok(hosts)) = (ae, hosts) {
                peers.push(Peer { ae_title, hosts });
            }
        }
        let seconds = |v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!("must be a positive number of seconds, got {v}"))
            }
        };
        let quiet = seconds(self.series.ct_quiet_period_s);
        check("series.ct_quiet_period_s", quiet.as_ref().map(|_| ()).map_err(Clone::clone));
        let idle = seconds(self.limits.idle_timeout_s);
        check("limits.idle_timeout_s", idle.as_ref().map(|_| ()).map_err(Clone::clone));
        let deadline = seconds(self.shutdown.deadline_s);
        check("shutdown.deadline_s", deadline.as_ref().map(|_| ()).map_err(Clone::clone));
        let l = &self.limits;
        check(
            "limits.max_associations",
            if l.max_associations == 0 { Err("must be at least 1".into()) } else { Ok(()) },
        );
        // PS3.8 allows any PDU size; below 4 kB or above 64 MB is almost surely a typo.
        check(
            "limits.max_pdu_bytes",
            if (4096..=64 << 20).contains(&l.max_pdu_bytes) {
                Ok(())
            } else {
                Err(format!("{} is outside 4096..=67108864", l.max_pdu_bytes))
            },
        );
        check(
            "limits.max_instance_bytes",
            if l.max_instance_bytes < 1024 {
                Err(format!("{} is too small for any DICOM instance", l.max_instance_bytes))
            } else {
                Ok(())
            },
        );
        for (key, message) in self.registration.problems() {
            check(&format!("registration.{key}"), Err(message));
        }
        for (key, message) in self.segmentation.problems() {
            check(&format!("segmentation.{key}"), Err(message));
        }
        if self.segmentation.classical == crate::segment::ClassicalUse::Never && self.models.is_empty() {
            check("segmentation.classical", Err("\"never\" needs a segmentation model in [[models]]".into()));
        }
        let url = &self.database.url;
        let database_url = if url.is_empty() {
            format!("sqlite://{}?mode=rwc", self.storage.dir.join("petct-node.db").display())
        } else {
            url.clone()
        };
        let known_scheme = ["postgres://", "postgresql://", "sqlite:"].iter().any(|p| database_url.starts_with(p));
        check(
            "database.url",
            if known_scheme { Ok(()) } else { Err("must start with postgres://, postgresql:// or sqlite:".into()) },
        );
        let jobs = self.jobs_settings(ae_title.as_ref().ok(), &mut problems);
        let (inference, models) = self.inference_settings(path, &mut problems);
        match (ae_title, bind, quiet, idle, deadline, jobs) {
            (
                Ok(ae_title),
                Ok(bind),
                Ok(ct_quiet_period),
                Ok(idle_timeout),
                Ok(shutdown_deadline),
                Some((worker, delivery, destinations)),
            ) if problems.is_empty() => {
                if peers.is_empty() && !self.node.allow_any_caller {
                    tracing::warn!(
                        "no [[peers]] configured and node.allow_any_caller is false: every association will be rejected"
                    );
                }
                Ok(Settings {
                    ae_title,
                    bind,
                    allow_any_caller: self.node.allow_any_caller,
                    peers,
                    storage_dir: self.storage.dir.clone(),
                    min_free_bytes: self.storage.min_free_mb.saturating_mul(1 << 20),
                    database_url,
                    database_max_connections: self.database.max_connections.unwrap_or(16).max(2),
                    ct_quiet_period,
                    max_associations: l.max_associations,
                    max_pdu_bytes: l.max_pdu_bytes,
                    max_instance_bytes: l.max_instance_bytes,
                    idle_timeout,
                    shutdown_deadline,
                    worker,
                    delivery,
                    destinations,
                    registration: self.registration.clone(),
                    segmentation: self.segmentation.clone(),
                    inference,
                    models,
                })
            }
            _ => Err(ConfigError::Invalid { path: path.into(), problems }),
        }
    }
}

impl Config {
    /// `[worker]`, `[delivery]` and `[[destinations]]`; problems are appended with their key.
    fn jobs_settings(
        &self,
        node_ae: Option<&AeTitle>,
        problems: &mut Vec<(String, String)>,
    ) -> Option<(WorkerSettings, DeliverySettings, Vec<Destination>)> {
        let before = problems.len();
        let mut seconds = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Duration::from_secs_f64(v)
            } else {
                problems.push((key.to_string(), format!("must be a positive number of seconds, got {v}")));
                Duration::ZERO
            }
        };
        let w = &self.worker;
        let worker = WorkerSettings {
            count: w.count,
            lease_timeout: seconds("worker.lease_timeout_s", w.lease_timeout_s),
            heartbeat_interval: seconds("worker.heartbeat_interval_s", w.heartbeat_interval_s),
            max_attempts: w.max_attempts,
            poll_interval: seconds("worker.poll_interval_s", w.poll_interval_s),
            backoff: Backoff {
                initial: seconds("worker.initial_backoff_s", w.initial_backoff_s),
                max: seconds("worker.max_backoff_s", w.max_backoff_s),
            },
        };
        let d = &self.delivery;
        let delivery = DeliverySettings {
            max_attempts: d.max_attempts,
            backoff: Backoff {
                initial: seconds("delivery.initial_backoff_s", d.initial_backoff_s),
                max: seconds("delivery.max_backoff_s", d.max_backoff_s),
            },
            connect_timeout: seconds("delivery.connect_timeout_s", d.connect_timeout_s),
            timeout: seconds("delivery.timeout_s", d.timeout_s),
        };
        // A heartbeat at least twice per lease, so one late beat does not lose the job.
        if worker.heartbeat_interval.mul_f64(2.0) > worker.lease_timeout {
            problems.push((
                "worker.heartbeat_interval_s".into(),
                format!("must be at most half of worker.lease_timeout_s ({})", w.lease_timeout_s),
            ));
        }
        for (key, v) in [("worker.max_attempts", w.max_attempts), ("delivery.max_attempts", d.max_attempts)] {
            if v == 0 {
                problems.push((key.into(), "must be at least 1".into()));
            }
        }
        let mut destinations = Vec::with_capacity(self.destinations.len());
        for (i, c) in self.destinations.iter().enumerate() {
            let mut ae = |key: &str, raw: &str| {
                AeTitle::parse(raw).map_err(|e| problems.push((format!("destinations[{i}].{key}"), e.to_string()))).ok()
            };
            let ae_title = ae("ae_title", &c.ae_title);
            let calling = match &c.calling_ae_title {
                Some(raw) => ae("calling_ae_title", raw),
                None => node_ae.cloned(),
            };
            if c.name.trim().is_empty() || self.destinations[..i].iter().any(|o| o.name == c.name) {
                problems.push((format!("destinations[{i}].name"), format!("{:?} is empty or not unique", c.name)));
            }
            if c.port == 0 {
                problems.push((format!("destinations[{i}].port"), "must be 1..=65535".into()));
            }
            if let (Some(ae_title), Some(calling_ae_title)) = (ae_title, calling) {
                destinations.push(Destination {
                    name: c.name.clone(),
                    ae_title,
                    calling_ae_title,
                    host: c.host.clone(),
                    port: c.port,
                });
            }
        }
        (problems.len() == before).then_some((worker, delivery, destinations))
    }
}

/// Why a TOML document did not deserialise: a syntax error, or the key path at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TomlError {
    Syntax(String),
    Key { key: String, message: String },
}

/// Deserialises TOML text (the config, model manifests); errors name the key at fault.
pub fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    // Syntax errors surface from the deserializer too; they carry no key path.
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if key == "." || key.is_empty() {
            TomlError::Syntax(inner.to_string().trim().to_string())
        } else {
            TomlError::Key { key, message: inner.message().trim().to_string() }
        }
    })
}

impl Config {
    /// `[inference]` and `[[models]]`: paths resolved against the config file's folder.
    fn inference_settings(
        &self,
        path: &Path,
        problems: &mut Vec<(String, String)>,
    ) -> (InferenceSettings, Vec<PathBuf>) {
        let dir = path.parent().unwrap_or(Path::new(""));
        let i = &self.inference;
        if i.threads == 0 {
            problems.push(("inference.threads".into(), "must be at least 1".into()));
        }
        let mut models = Vec::with_capacity(self.models.len());
        for (n, m) in self.models.iter().enumerate() {
            if m.manifest.as_os_str().is_empty() {
                problems.push((format!("models[{n}].manifest"), "must name a model manifest (*.model.toml)".into()));
            }
            models.push(dir.join(&m.manifest));
        }
        let library = (!i.library.is_empty()).then(|| dir.join(&i.library));
        let settings = InferenceSettings {
            library,
            device: i.device,
            allow_cpu_fallback: i.allow_cpu_fallback,
            threads: i.threads,
        };
        (settings, models)
    }
}

fn resolve_host(host: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs: Vec<IpAddr> =
        (host, 0).to_socket_addrs().map_err(|e| format!("cannot resolve {host:?}: {e}"))?.map(|a| a.ip()).collect();
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        let p = Path::new("test.toml");
        Config::parse(p, text)?.settings(p)
    }

    #[test]
    fn example_config_parses_and_documents_every_section() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let s = Config::parse(&path, &text).unwrap().settings(&path).unwrap();
        assert_eq!(s.bind, "127.0.0.1:11112".parse().unwrap());
        assert!(!s.allow_any_caller);
        assert!(!s.peers.is_empty());
        // Every key of every section appears in the example, so the documentation never drifts.
        for key in [
            "ae_title",
            "bind",
            "allow_any_caller",
            "host",
            "dir",
            "min_free_mb",
            "url",
            "max_connections",
            "ct_quiet_period_s",
            "max_associations",
            "max_pdu_bytes",
            "max_instance_bytes",
            "idle_timeout_s",
            "deadline_s",
            "count",
            "lease_timeout_s",
            "heartbeat_interval_s",
            "max_attempts",
            "poll_interval_s",
            "initial_backoff_s",
            "max_backoff_s",
            "connect_timeout_s",
            "timeout_s",
            "name",
            "port",
            "calling_ae_title",
            "always",
            "max_translation_mm",
            "max_rotation_deg",
            "min_overlap_fraction",
            "suv_threshold",
            "relative_threshold",
            "connectivity",
            "min_volume_ml",
            "growth_mm",
            "min_prominence",
            "body_hu_threshold",
            "library",
            "device",
            "allow_cpu_fallback",
            "threads",
            "manifest",
        ] {
            // `[[models]]` is shown commented out: none run by default.
            let documented = |l: &str| {
                let l = l.trim_start();
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("#{key} ="))
            };
            assert!(text.lines().any(documented), "{key} undocumented");
        }
        assert!(s.models.is_empty());
        // The commented `[[models]]` example parses once uncommented, relative to the file, and
        // names the models that ship in models/.
        let uncommented = text.replace("#[[models]]", "[[models]]").replace("#manifest =", "manifest =");
        let s = Config::parse(&path, &uncommented).unwrap().settings(&path).unwrap();
        let shipped = ["anomaly-ae", "seg-high-sensitivity", "seg-high-specificity"]
            .map(|m| path.parent().unwrap().join(format!("../models/{m}.model.toml")));
        assert_eq!(s.models, shipped);
        assert!(shipped.iter().all(|m| m.is_file()), "{shipped:?}");
    }

    #[test]
    fn defaults_deny_unknown_callers_and_bind_loopback() {
        let s = parse("").unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:11112");
        assert!(!s.allow_any_caller && s.peers.is_empty());
        assert!(s.database_url.starts_with("sqlite://var/petct-node/petct-node.db"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[node]\nae_titel = \"X\"\n").unwrap_err().to_string();
        assert!(e.contains("ae_titel"), "{e}");
        let e = parse("[limits]\nmax_pdu_bytes = \"big\"\n").unwrap_err().to_string();
        assert!(e.contains("limits.max_pdu_bytes"), "{e}");
        let e = parse("[[peers]]\nae_title = \"WAY_TOO_LONG_AE_TITLE\"\n").unwrap_err().to_string();
        assert!(e.contains("peers[0].ae_title"), "{e}");
        let e = parse("[node]\nbind = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.contains("node.bind"), "{e}");
        let e = parse("[database]\nurl = \"mysql://x\"\n").unwrap_err().to_string();
        assert!(e.contains("database.url"), "{e}");
        let e = parse("[registration]\nmin_overlap_fraction = 1.5\n").unwrap_err().to_string();
        assert!(e.contains("registration.min_overlap_fraction"), "{e}");
        let e = parse("[series]\nct_quiet_period_s = 0\n").unwrap_err().to_string();
        assert!(e.contains("series.ct_quiet_period_s"), "{e}");
        let e = parse("[segmentation]\nconnectivity = 8\n").unwrap_err().to_string();
        assert!(e.contains("segmentation.connectivity") && e.contains("6, 18 or 26"), "{e}");
        let e = parse("[segmentation]\nrelative_threshold = 1.5\n").unwrap_err().to_string();
        assert!(e.contains("segmentation.relative_threshold"), "{e}");
        let e = parse("[storage\n").unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn segmentation_connectivity_is_a_number_or_its_text() {
        use crate::quantify::Connectivity;
        assert_eq!(parse("").unwrap().segmentation, SegmentOptions::default());
        assert_eq!(
            parse("[segmentation]\nconnectivity = 26\n").unwrap().segmentation.connectivity,
            Connectivity::Corners26
        );
        assert_eq!(
            parse("[segmentation]\nconnectivity = \"6\"\n").unwrap().segmentation.connectivity,
            Connectivity::Faces6
        );
        assert!(parse("[segmentation]\nconnectivity = \"x\"\n").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = parse("[node]\nbind = \"x\"\nae_title = \"\"\n[limits]\nmax_associations = 0\n").unwrap_err();
        let ConfigError::Invalid { problems, .. } = e else { panic!("{e}") };
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["node.ae_title", "node.bind", "limits.max_associations"]);
    }

    #[test]
    fn worker_and_destinations_are_checked() {
        let s = parse("[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n")
            .unwrap();
        assert_eq!(s.destinations[0].calling_ae_title.as_str(), "PETCT_NODE");
        assert_eq!(s.worker.count, 1);
        let e = parse(
            "[worker]\nheartbeat_interval_s = 40\n\
             [[destinations]]\nname = \"a\"\nae_title = \"A\"\nhost = \"h\"\nport = 1\n\
             [[destinations]]\nname = \"a\"\nae_title = \"B\"\nhost = \"h\"\nport = 0\ncalling_ae_title = \"\"\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = e else { panic!("{e}") };
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "worker.heartbeat_interval_s",
                "destinations[1].calling_ae_title",
                "destinations[1].name",
                "destinations[1].port"
            ]
        );
    }

    #[test]
    fn inference_keys_are_checked_and_paths_resolved_against_the_config_file() {
        let p = Path::new("/etc/petct/node.toml");
        let text = "[inference]\nlibrary = \"lib/libonnxruntime.so\"\ndevice = \"cuda\"\nthreads = 1\n\
                    [[models]]\nmanifest = \"models/a.model.toml\"\n[[models]]\nmanifest = \"/abs/b.model.toml\"\n";
        let s = Config::parse(p, text).unwrap().settings(p).unwrap();
        assert_eq!(s.inference.library.as_deref(), Some(Path::new("/etc/petct/lib/libonnxruntime.so")));
        assert_eq!(s.inference.device, Device::Cuda);
        assert!(!s.inference.allow_cpu_fallback);
        assert_eq!(s.models, [PathBuf::from("/etc/petct/models/a.model.toml"), PathBuf::from("/abs/b.model.toml")]);
        let d = parse("").unwrap();
        assert_eq!((d.inference.library, d.inference.device, d.inference.threads), (None, Device::Cpu, 2));
        let e = parse("[inference]\ndevice = \"tpu\"\n").unwrap_err().to_string();
        assert!(e.contains("inference.device") && e.contains("tpu"), "{e}");
        let e = parse("[inference]\nthreads = 0\n[[models]]\nmanifest = \"\"\n").unwrap_err();
        let ConfigError::Invalid { problems, .. } = e else { panic!("{e}") };
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["inference.threads", "models[0].manifest"]);
        let e = parse("[[models]]\nmanifest = \"a\"\nname = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("models[0]") && e.contains("name"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff { initial: Duration::from_secs(2), max: Duration::from_secs(10) };
        let waits: Vec<u64> = (1..=5).map(|a| b.after(a).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 10, 10]);
    }

    #[test]
    fn environment_overrides_file() {
        let p = Path::new("t.toml");
        let mut c = Config::parse(p, "[database]\nurl = \"sqlite://a.db\"\n").unwrap();
        c.apply_env(|k| (k == "PETCT_DATABASE_URL").then(|| "postgres://h/db".to_string()));
        assert_eq!(c.settings(p).unwrap().database_url, "postgres://h/db");
    }
}
