//! The node's one TOML file: typed, unknown keys refused, defaults for everything but the peers.
//! Layering: built-in defaults, then the file, then `PETCT_*` environment variables.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ids::AeTitle;

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
}

impl Config {
    /// Parses TOML text; errors name the key at fault.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // Syntax errors surface from the deserializer too; they carry no key path.
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            if key == "." || key.is_empty() {
                ConfigError::Syntax { path: path.into(), message: inner.to_string().trim().to_string() }
            } else {
                ConfigError::Key { path: path.into(), key, message }
            }
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
        match (ae_title, bind, quiet, idle, deadline) {
            (Ok(ae_title), Ok(bind), Ok(ct_quiet_period), Ok(idle_timeout), Ok(shutdown_deadline))
                if problems.is_empty() =>
            {
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
                })
            }
            _ => Err(ConfigError::Invalid { path: path.into(), problems }),
        }
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
        ] {
            assert!(text.lines().any(|l| l.trim_start().starts_with(&format!("{key} ="))), "{key} undocumented");
        }
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
        let e = parse("[series]\nct_quiet_period_s = 0\n").unwrap_err().to_string();
        assert!(e.contains("series.ct_quiet_period_s"), "{e}");
        let e = parse("[storage\n").unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = parse("[node]\nbind = \"x\"\nae_title = \"\"\n[limits]\nmax_associations = 0\n").unwrap_err();
        let ConfigError::Invalid { problems, .. } = e else { panic!("{e}") };
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["node.ae_title", "node.bind", "limits.max_associations"]);
    }

    #[test]
    fn environment_overrides_file() {
        let p = Path::new("t.toml");
        let mut c = Config::parse(p, "[database]\nurl = \"sqlite://a.db\"\n").unwrap();
        c.apply_env(|k| (k == "PETCT_DATABASE_URL").then(|| "postgres://h/db".to_string()));
        assert_eq!(c.settings(p).unwrap().database_url, "postgres://h/db");
    }
}
