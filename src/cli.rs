//! The command line: parsing and the small admin commands. `main.rs` only calls [`main`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::db::Db;
use crate::infer::{InferError, Models};

/// A failed write to standard output, kept apart so that a closed pipe (`petct-node jobs list |
/// head`) ends the command quietly instead of panicking as `println!` does.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub struct StdoutError(pub std::io::Error);

/// `println!` that returns a [`StdoutError`] instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::StdoutError)
    }};
}
pub(crate) use say;

#[derive(Parser)]
#[command(name = "petct-node", version, about = "DICOM-native PET/CT AI node")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct ConfigArg {
    /// The node's TOML configuration.
    #[arg(long, short, env = "PETCT_CONFIG", default_value = "/etc/petct-node/petct-node.toml")]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the DICOM node: receive, store, track series and queue jobs.
    Serve(ConfigArg),
    /// Check a configuration file and explain every error with the key that caused it.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Studies the node has received.
    Studies {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Jobs: one per PET series and its CT.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// The whole job on this machine: a phantom study sent to the node over DICOM, processed,
    /// the results received back on a local destination, the lesions printed.
    Demo(crate::demo::DemoArgs),
    /// Write a synthetic whole-body FDG PET/CT study with ground truth.
    Phantom(crate::phantom::PhantomArgs),
    /// The offline pipeline on a folder: PET and CT to aligned SUV and HU volumes.
    Run {
        /// Folder holding the PET and CT series (scanned recursively).
        dir: PathBuf,
        /// Output folder (created): seg.dcm, sr.dcm, mip.dcm, mip.png, findings.json, run.json
        /// and, with --export-volumes, NIfTI volumes.
        #[arg(long)]
        out: PathBuf,
        /// Write ct_hu.nii.gz, suv.nii.gz (native PET grid), suv_on_ct.nii.gz, mask.nii.gz and
        /// lesions.nii.gz.
        #[arg(long)]
        export_volumes: bool,
        /// Also write the models' input channels (suv, ct_hu, body) on the model grid of this
        /// spacing under OUT/model_grid/ (mm: one value, or x,y,z); what training reads.
        #[arg(long, value_parser = parse_spacing)]
        model_spacing: Option<[f64; 3]>,
        /// Take the processing settings ([registration], [segmentation]) from this node
        /// configuration; built-in defaults without it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Predicted lesion masks against reference masks, patient by patient: Dice, false-positive
    /// and false-negative volume, lesion-wise sensitivity and precision (Mean ± SD), for every
    /// predicted source against every reference source.
    Evaluate(crate::evaluate::EvaluateArgs),
    /// Every series under a folder (files or the node's store): geometry, completeness, pairing.
    Inspect {
        /// Folder to scan recursively.
        dir: PathBuf,
        /// One JSON object with a `series` array, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ListAction {
    /// List them, newest first (studies) or by id (jobs).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON document on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum JobsAction {
    /// List them by id, with stage, attempts, last error and delivery state per destination.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON document on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed or dead job again (only its failed deliveries, if processing succeeded).
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        /// The job's id, as `jobs list` shows it.
        id: i64,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<StdoutError>().is_some_and(|s| s.0.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into());
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(c) => {
            let settings = Config::load(&c.config)?;
            let rt = runtime()?;
            let served = rt.block_on(crate::server::serve(settings));
            // `serve` returns once every association and worker has ended, so what may still run
            // is the pipeline thread of a handed-back job: waiting for it would break the
            // deadline, and its next try starts from a fresh folder.
            rt.shutdown_background();
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => match Config::load(&file).map(|s| {
            // The models are loaded as at start-up: manifests, sha256, the networks' interfaces.
            let models = Models::load(&s.inference, &s.models);
            (s, models)
        }) {
            Ok((_, Err(InferError::Invalid { problems }))) => {
                for (key, message) in problems {
                    eprintln!("{}: key `{key}`: {message}", file.display());
                }
                Ok(ExitCode::from(2))
            }
            Ok((_, Err(e))) => {
                eprintln!("{}: {e}", file.display());
                Ok(ExitCode::from(2))
            }
            Ok((s, Ok(models))) => {
                say!(
                    "{}: OK (AE {} on {}, {} peer(s){}, storage {}, database {}, {} worker(s), destinations: {}, models: {})",
                    file.display(),
                    s.ae_title,
                    s.bind,
                    s.peers.len(),
                    if s.allow_any_caller { ", any caller allowed" } else { "" },
                    s.storage_dir.display(),
                    redact_url(&s.database_url),
                    s.worker.count,
                    destinations(&s.destinations),
                    describe_models(&models)
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Err(ConfigError::Invalid { path, problems }) => {
                for (key, message) in problems {
                    eprintln!("{}: key `{key}`: {message}", path.display());
                }
                Ok(ExitCode::from(2))
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Studies { action: ListAction::List { config, json } } => {
            let rows = runtime()?
                .block_on(async { open_db(&config.config).await?.list_studies().await.map_err(anyhow::Error::from) })?;
            if json {
                say!("{}", serde_json::json!({ "studies": rows }))?;
            } else {
                say!(
                    "{:<64}  {:<10}  {:<8}  SERIES (modality instances[/expected] state)",
                    "STUDY UID",
                    "DATE",
                    "PATIENT"
                )?;
                for s in rows {
                    let series: Vec<String> = s
                        .series
                        .iter()
                        .map(|r| {
                            let expected = r.number_of_slices.map(|n| format!("/{n}")).unwrap_or_default();
                            format!(
                                "{} {}{} {}",
                                r.modality,
                                r.instance_count,
                                expected,
                                if r.complete { "complete" } else { "receiving" }
                            )
                        })
                        .collect();
                    say!(
                        "{:<64}  {:<10}  {:<8}  {}",
                        s.study_uid,
                        s.study_date.unwrap_or_default(),
                        s.patient_id.unwrap_or_default(),
                        series.join(", ")
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { dir, out, export_volumes, model_spacing, config } => {
            let (options, mut models) = match config {
                Some(path) => {
                    let settings = Config::load(&path)?;
                    let models = crate::infer::Models::load(&settings.inference, &settings.models)?;
                    (crate::pipeline::PipelineOptions::from_settings(&settings), models)
                }
                None => Default::default(),
            };
            let options =
                crate::pipeline::PipelineOptions { export_volumes, model_spacing_mm: model_spacing, ..options };
            let summary = crate::pipeline::run(&dir, &out, &options, &mut models)?;
            say!("{}", serde_json::to_string_pretty(&summary)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { dir, json } => {
            let report = crate::inspect::inspect(&dir)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                print_inspection(&report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Evaluate(args) => match crate::evaluate::run(&args) {
            Ok(text) => {
                use std::io::Write as _;
                std::io::stdout().lock().write_all(text.as_bytes()).map_err(StdoutError)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) if e.is_input() => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
            Err(e) => Err(e.into()),
        },
        Command::Demo(args) => {
            crate::demo::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Phantom(args) => {
            let summary = crate::phantom::run(&args)?;
            say!("{}", serde_json::to_string_pretty(&summary)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { action: JobsAction::List { config, json } } => {
            let rows = runtime()?
                .block_on(async { open_db(&config.config).await?.list_jobs().await.map_err(anyhow::Error::from) })?;
            if json {
                say!("{}", serde_json::json!({ "jobs": rows }))?;
            } else {
                print_jobs(&rows)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { action: JobsAction::Retry { config, id } } => {
            use crate::queue::RetryOutcome;
            let outcome = runtime()?.block_on(async {
                open_db(&config.config).await?.retry_job(id, crate::ingest::now_ms()).await.map_err(anyhow::Error::from)
            })?;
            match outcome {
                RetryOutcome::Requeued => say!("job {id} queued again")?,
                RetryOutcome::Redelivering { destinations } => {
                    say!("job {id}: delivery to {destinations} destination(s) queued again")?
                }
                RetryOutcome::NotFound => anyhow::bail!("no job {id}"),
                RetryOutcome::NotRetryable { state } => {
                    anyhow::bail!("job {id} is {state}: only failed or dead jobs can be retried")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_jobs(rows: &[crate::db::JobRow]) -> Result<(), StdoutError> {
    say!(
        "{:>5}  {:<10}  {:<8}  {:<3}  {:<20}  {:<20}  {:<8}  DELIVERIES / PET SERIES -> CT SERIES",
        "ID",
        "STATE",
        "STAGE",
        "TRY",
        "CREATED",
        "FINISHED",
        "REG"
    )?;
    for j in rows {
        let deliveries: Vec<String> = j
            .deliveries
            .iter()
            .map(|d| {
                let retry = if d.state == "pending" {
                    format!(", next {}", format_ms(Some(d.next_attempt_at_ms)))
                } else {
                    String::new()
                };
                let error = d.last_error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default();
                format!("{}: {} (tries {}{retry}{error})", d.destination, d.state, d.attempts)
            })
            .collect();
        say!(
            "{:>5}  {:<10}  {:<8}  {:<3}  {:<20}  {:<20}  {:<8}  {}{} -> {}{}",
            j.id,
            j.state,
            j.stage.as_deref().unwrap_or("-"),
            j.attempts,
            format_ms(Some(j.created_at_ms)),
            format_ms(j.finished_at_ms),
            if j.needs_registration { "needed" } else { "same FoR" },
            if deliveries.is_empty() { String::new() } else { format!("[{}] ", deliveries.join("; ")) },
            j.pet_series_uid,
            j.ct_series_uid,
            j.last_error.as_ref().map(|e| format!("  error: {e}")).unwrap_or_default()
        )?;
    }
    Ok(())
}

fn print_inspection(report: &crate::inspect::Report) -> Result<(), StdoutError> {
    for s in &report.series {
        let dims = s.dims.map(|d| format!("{}x{}x{}", d[0], d[1], d[2])).unwrap_or_else(|| "-".into());
        let spacing =
            s.spacing_mm.map(|v| format!("{:.3}x{:.3}x{:.3} mm", v[0], v[1], v[2])).unwrap_or_else(|| "-".into());
        say!(
            "{} {:<3} {:>5} instances  {dims:<12} {spacing:<24} {}",
            s.series_instance_uid,
            s.modality,
            s.instances,
            if s.complete { "complete" } else { "INCOMPLETE" }
        )?;
        if let Some(d) = s.direction {
            say!("    orientation row {:?} col {:?} normal {:?}", d[0], d[1], d[2])?;
        }
        if let Some(ct) = &s.paired_ct_series_uid {
            let how = if s.needs_registration == Some(true) { "needs registration" } else { "same frame of reference" };
            say!("    paired with CT {ct} ({how})")?;
        }
        for w in &s.warnings {
            say!("    warning: {w}")?;
        }
    }
    for f in &report.skipped_files {
        say!("skipped {f}")?;
    }
    Ok(())
}

async fn open_db(config: &Path) -> anyhow::Result<Db> {
    let s = Config::load(config)?;
    Ok(Db::connect(&s.database_url, 2).await?)
}

fn format_ms(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn describe_models(models: &Models) -> String {
    if models.is_empty() {
        return "none (classical segmentation only)".into();
    }
    let each = models.iter().map(|m| {
        let manifest = m.manifest();
        format!("{} {} ({}, {})", m.name(), manifest.version, manifest.task.as_str(), m.device())
    });
    each.collect::<Vec<_>>().join(", ")
}

fn destinations(d: &[crate::config::Destination]) -> String {
    if d.is_empty() {
        return "none".into();
    }
    d.iter().map(|d| format!("{} ({}@{}:{})", d.name, d.ae_title, d.host, d.port)).collect::<Vec<_>>().join(", ")
}

/// Hides a password in a database URL before printing it.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `4` or `4,4,3`: positive millimetres, one for every axis or x, y, z.
fn parse_spacing(s: &str) -> Result<[f64; 3], String> {
    let v: Vec<f64> =
        s.split(',').map(|p| p.trim().parse::<f64>().map_err(|e| format!("{p:?}: {e}"))).collect::<Result<_, _>>()?;
    let spacing = match v[..] {
        [a] => [a; 3],
        [x, y, z] => [x, y, z],
        _ => return Err(format!("expected one value or three (x,y,z), got {}", v.len())),
    };
    if spacing.iter().all(|&a| a.is_finite() && a > 0.0) {
        Ok(spacing)
    } else {
        Err(format!("spacing must be positive millimetres, got {s}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact_url("sqlite://var/x.db"), "sqlite://var/x.db");
    }
}
