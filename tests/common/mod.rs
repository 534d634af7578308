//! Shared test harness: a real `petct-node` process on SQLite or PostgreSQL, DCMTK clients,
//! and synthetic CT/PET instances written with dicom-rs.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use serde_json::Value;

pub const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const PET_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.128";
pub const MR_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_petct-node")
}

/// The ONNX Runtime library scripts/test.sh fetched; tests that run models fail, not skip,
/// without it.
pub fn ort_library() -> PathBuf {
    let lib = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()).expect(
        "ORT_DYLIB_PATH is not set: run the tests through scripts/test.sh, which fetches ONNX Runtime 1.31.1 \
         into .tools/onnxruntime and sets it",
    );
    assert!(Path::new(&lib).is_file(), "ORT_DYLIB_PATH={lib:?} does not exist: run the tests through scripts/test.sh");
    PathBuf::from(lib)
}

/// The tiny ONNX models of tests/py/make_test_models.py, built once per test process.
pub fn test_models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-models");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/make_test_models.py");
        let out = Command::new("python3").arg(script).arg(&dir).output().expect("python3");
        assert!(
            out.status.success(),
            "building the test models failed (Python `onnx` missing? run the tests through scripts/test.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// dciodvfy's error lines for a file (empty: valid); its warnings are printed.
pub fn dciodvfy_errors(path: &Path) -> Vec<String> {
    require_tool("dciodvfy");
    let out = Command::new("dciodvfy").arg(path).output().expect("run dciodvfy");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("Warning")).collect();
    eprintln!("dciodvfy {}: {warnings:#?}", path.display());
    text.lines().filter(|l| l.starts_with("Error")).map(String::from).collect()
}

/// Fails with a hint instead of a confusing error when a peer tool is missing.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{name} is not installed: run the tests through scripts/test.sh, which installs the DICOM peers");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A globally unique UID in the 2.25 (UUID-derived) arc.
pub fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>() >> 1)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A database for one node: an SQLite file in its directory, or a fresh PostgreSQL database
/// that is dropped afterwards.
pub struct TestDb {
    pub url: String,
    pg: Option<(String, String)>,
}

fn pg_template() -> String {
    std::env::var("PETCT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/{db}".into())
}

impl TestDb {
    pub fn new(backend: Backend, dir: &Path) -> Self {
        match backend {
            Backend::Sqlite => Self { url: format!("sqlite://{}?mode=rwc", dir.join("node.db").display()), pg: None },
            Backend::Postgres => {
                use sqlx::{Connection, Executor};
                let template = pg_template();
                let name = unique("petct_test");
                let admin = template.replace("{db}", "postgres");
                block_on(async {
                    let mut c = sqlx::PgConnection::connect(&admin)
                        .await
                        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} unavailable ({e}); run scripts/test.sh"));
                    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
                });
                Self { url: template.replace("{db}", &name), pg: Some((admin, name)) }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.pg {
            use sqlx::{Connection, Executor};
            block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(admin).await {
                    let _ =
                        c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await;
                }
            });
        }
    }
}

pub struct NodeOptions {
    pub backend: Backend,
    pub quiet_period_s: f64,
    /// `(ae_title, host)` pairs for `[[peers]]`.
    pub peers: Vec<(String, Option<String>)>,
    pub allow_any_caller: bool,
    pub min_free_mb: u64,
    pub max_instance_bytes: u64,
    pub max_associations: usize,
    /// `shutdown.deadline_s`: workers hand a running job back at three quarters of it.
    pub shutdown_deadline_s: f64,
    /// Body of the `[worker]` table. Default: no workers, so jobs stay queued for inspection.
    pub worker: String,
    /// TOML appended to the configuration (`[delivery]`, `[[destinations]]`, ...).
    pub extra_toml: String,
}

impl NodeOptions {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            quiet_period_s: 30.0,
            peers: vec![("STORESCU".into(), None), ("ECHOSCU".into(), None), ("TESTSCU".into(), None)],
            allow_any_caller: false,
            min_free_mb: 1,
            max_instance_bytes: 64 << 20,
            max_associations: 32,
            shutdown_deadline_s: 10.0,
            worker: "count = 0\n".into(),
            extra_toml: String::new(),
        }
    }
}

/// A running `petct-node serve` with its own storage directory and database.
pub struct Node {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub db: TestDb,
    starts: usize,
}

impl Node {
    pub fn start(opts: NodeOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(opts.backend, dir.path());
        let mut peers = String::new();
        for (ae, host) in &opts.peers {
            peers.push_str(&format!("[[peers]]\nae_title = \"{ae}\"\n"));
            if let Some(h) = host {
                peers.push_str(&format!("host = \"{h}\"\n"));
            }
        }
        let config = dir.path().join("node.toml");
        fs::write(
            &config,
            format!(
                "[node]\nae_title = \"PETCT_NODE\"\nbind = \"127.0.0.1:0\"\nallow_any_caller = {}\n\n{peers}\n\
                 [storage]\ndir = \"{}\"\nmin_free_mb = {}\n\n[database]\nurl = \"{}\"\n\n\
                 [series]\nct_quiet_period_s = {}\n\n[limits]\nmax_instance_bytes = {}\nmax_associations = {}\n\n\
                 [shutdown]\ndeadline_s = {}\n\n[worker]\n{}\n{}\n",
                opts.allow_any_caller,
                dir.path().join("store").display(),
                opts.min_free_mb,
                db.url,
                opts.quiet_period_s,
                opts.max_instance_bytes,
                opts.max_associations,
                opts.shutdown_deadline_s,
                opts.worker,
                opts.extra_toml,
            ),
        )
        .unwrap();
        let mut node = Self { child: None, dir, config, port: 0, db, starts: 0 };
        node.spawn();
        node
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting petct-node");
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            let listening: Vec<&str> = log.lines().filter(|l| l.contains("listening")).collect();
            if listening.len() >= self.starts {
                let line = listening[self.starts - 1];
                let addr = line.rsplit("addr=").next().unwrap().trim();
                self.port = addr.rsplit(':').next().unwrap().parse().unwrap();
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("petct-node exited with {status} before listening:\n{log}");
            }
            assert!(Instant::now() < deadline, "petct-node did not start listening:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait; returns the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("node running");
        let t0 = Instant::now();
        unsafe_kill(c.id(), "TERM");
        let status = c.wait().unwrap();
        (status, t0.elapsed())
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn cli_json(&self, what: &str) -> Value {
        let out = Command::new(bin()).args([what, "list", "--json", "--config"]).arg(&self.config).output().unwrap();
        assert!(out.status.success(), "{what} list failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn jobs(&self) -> Vec<Value> {
        self.cli_json("jobs")["jobs"].as_array().unwrap().clone()
    }

    pub fn studies(&self) -> Vec<Value> {
        self.cli_json("studies")["studies"].as_array().unwrap().clone()
    }

    /// Instance files under the store (not counting the database or temporaries).
    pub fn stored_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.storage().join("dicom"), &mut out);
        out.sort();
        out
    }

    pub fn storescu(&self, calling_ae: &str, files: &[PathBuf], extra: &[&str]) -> Output {
        Command::new("storescu")
            .args(extra)
            .args(["-aet", calling_ae, "-aec", "PETCT_NODE", "127.0.0.1", &self.port.to_string()])
            .args(files)
            .output()
            .expect("running storescu")
    }

    pub fn echoscu(&self, calling_ae: &str) -> Output {
        Command::new("echoscu")
            .args(["-aet", calling_ae, "-aec", "PETCT_NODE", "127.0.0.1", &self.port.to_string()])
            .output()
            .expect("running echoscu")
    }

    /// Polls `cond` on the job list until it holds or `timeout` passes.
    pub fn wait_jobs(&self, timeout: Duration, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let jobs = self.jobs();
            if cond(&jobs) {
                return jobs;
            }
            if Instant::now() > deadline {
                // A read that started before the deadline may be long stale on a loaded machine.
                return self.jobs();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

pub fn unsafe_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -{signal} {pid} failed");
}

/// The data set bytes of a Part 10 file (everything after the file meta group).
pub fn data_set_bytes(file: &[u8]) -> &[u8] {
    assert_eq!(&file[128..132], b"DICM", "not a Part 10 file");
    let group_len = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    &file[144 + group_len..]
}

/// The SOP Instance UID of a Part 10 file (header only).
pub fn sop_uid(file: &Path) -> String {
    let obj = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(file).unwrap();
    obj.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
}

/// What a synthetic series looks like.
#[derive(Clone, Debug)]
pub struct SeriesSpec {
    pub modality: &'static str,
    pub study_uid: String,
    pub series_uid: String,
    pub frame_uid: String,
    pub slices: usize,
    /// Series/acquisition time (HHMMSS) on 2024-05-01.
    pub time: String,
}

impl SeriesSpec {
    pub fn new(modality: &'static str, study_uid: &str, frame_uid: &str, slices: usize) -> Self {
        Self {
            modality,
            study_uid: study_uid.into(),
            series_uid: new_uid(),
            frame_uid: frame_uid.into(),
            slices,
            time: "100000".into(),
        }
    }
}

/// Builds one instance of `spec` (slice `index`, 0-based) as a data set.
pub fn instance(spec: &SeriesSpec, index: usize, sop_uid: &str) -> InMemDicomObject {
    let pet = spec.modality == "PT";
    let class = if pet { PET_IMAGE } else { CT_IMAGE };
    let (rows, cols) = (16u16, 16u16);
    let pixels: Vec<u16> = (0..rows as usize * cols as usize).map(|i| ((i + index) % 4096) as u16).collect();
    let mut obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(class)),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop_uid)),
        DataElement::new(tags::STUDY_DATE, VR::DA, PrimitiveValue::from("20240501")),
        DataElement::new(tags::SERIES_DATE, VR::DA, PrimitiveValue::from("20240501")),
        DataElement::new(tags::SERIES_TIME, VR::TM, PrimitiveValue::from(spec.time.as_str())),
        DataElement::new(tags::ACQUISITION_DATE, VR::DA, PrimitiveValue::from("20240501")),
        DataElement::new(tags::ACQUISITION_TIME, VR::TM, PrimitiveValue::from(spec.time.as_str())),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from(spec.modality)),
        DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("Test^Patient")),
        DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from("TEST001")),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(spec.study_uid.as_str())),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(spec.series_uid.as_str())),
        DataElement::new(tags::SERIES_NUMBER, VR::IS, PrimitiveValue::from(if pet { "2" } else { "1" })),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from((index + 1).to_string())),
        DataElement::new(tags::FRAME_OF_REFERENCE_UID, VR::UI, PrimitiveValue::from(spec.frame_uid.as_str())),
        DataElement::new(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            dicom_value!(Strs, ["0".to_string(), "0".to_string(), format!("{}", index as f64 * -3.0)]),
        ),
        DataElement::new(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, dicom_value!(Strs, ["1", "0", "0", "0", "1", "0"])),
        DataElement::new(tags::PIXEL_SPACING, VR::DS, dicom_value!(Strs, ["2", "2"])),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from("MONOCHROME2")),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16)),
        DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, PrimitiveValue::from(if pet { "0" } else { "-1024" })),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, PrimitiveValue::from("1")),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into())),
    ]);
    if pet {
        obj.put(DataElement::new(tags::NUMBER_OF_SLICES, VR::US, PrimitiveValue::from(spec.slices as u16)));
        obj.put(DataElement::new(tags::IMAGE_INDEX, VR::US, PrimitiveValue::from((index + 1) as u16)));
        obj.put(DataElement::new(tags::UNITS, VR::CS, PrimitiveValue::from("BQML")));
    }
    obj
}

/// Writes `obj` as a Part 10 file (Explicit VR Little Endian).
pub fn write_part10(obj: InMemDicomObject, path: &Path) {
    let class = obj.element(tags::SOP_CLASS_UID).unwrap().to_str().unwrap().to_string();
    let sop = obj.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().to_string();
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_LE)
                .media_storage_sop_class_uid(class.trim_end_matches('\0'))
                .media_storage_sop_instance_uid(sop.trim_end_matches('\0')),
        )
        .unwrap();
    file.write_to_file(path).unwrap();
}

/// Writes every slice of `spec` into `dir`; returns the files in slice order.
pub fn write_series(spec: &SeriesSpec, dir: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    (0..spec.slices)
        .map(|i| {
            let sop = new_uid();
            let path = dir.join(format!("{}_{i:04}.dcm", spec.modality));
            write_part10(instance(spec, i, &sop), &path);
            path
        })
        .collect()
}

/// The files storescu reported as stored with Success, from its `-v` log.
pub fn storescu_successes(log: &str) -> Vec<PathBuf> {
    let mut current: Option<PathBuf> = None;
    let mut ok = Vec::new();
    for line in log.lines() {
        if let Some(f) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(f.trim()));
        } else if line.starts_with("I: Received Store Response (Success)") {
            if let Some(f) = current.take() {
                ok.push(f);
            }
        }
    }
    ok
}

/// Writes a phantom study into `dir` with `petct-node phantom ARGS --out DIR`; returns its
/// summary and its `truth/truth.json`.
pub fn write_phantom(dir: &Path, args: &[&str]) -> (Value, Value) {
    let out = Command::new(bin()).arg("phantom").args(args).arg("--out").arg(dir).output().unwrap();
    assert_success(&out, "petct-node phantom");
    let truth = serde_json::from_slice(&fs::read(dir.join("truth/truth.json")).unwrap()).unwrap();
    (serde_json::from_slice(&out.stdout).unwrap(), truth)
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn append_line(path: &Path, line: &str) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "{line}").unwrap();
}

/// Servers such as Orthanc bind every interface. Tests that start them run in a private network
/// namespace with only loopback: when not already in one, this re-runs the named test inside
/// `unshare -n` and returns false (the caller then returns; the child's result is asserted).
pub fn in_private_network(test_name: &str) -> bool {
    let links = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip (iproute2)");
    let links = String::from_utf8_lossy(&links.stdout);
    if links.lines().all(|l| l.contains(": lo:")) {
        return true;
    }
    let me = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "--", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"]).arg(me).args([
        "--exact",
        test_name,
        "--nocapture",
    ]);
    if std::env::var("PETCT_TEST_POSTGRES_URL").is_err() {
        // Inside the namespace PostgreSQL is reachable only through its Unix socket.
        cmd.env("PETCT_TEST_POSTGRES_URL", "postgres://postgres@localhost/{db}?host=/var/run/postgresql&port=5432");
    }
    let out = cmd.output().expect("unshare");
    assert_success(&out, &format!("{test_name} in a private network namespace"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "{test_name} did not run in the namespace");
    false
}

/// A free TCP port on loopback (a tiny race with other binders is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real Orthanc PACS on loopback with its own storage.
pub struct Orthanc {
    child: Child,
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    pub dicom_port: u16,
}

impl Orthanc {
    /// Starts Orthanc with `modalities` as `(name, ae, port)` it may send to.
    pub fn start(modalities: &[(&str, &str, u16)]) -> Self {
        require_tool("Orthanc");
        let dir = tempfile::tempdir().unwrap();
        let (http_port, dicom_port) = (free_port(), free_port());
        let mods: serde_json::Map<String, Value> = modalities
            .iter()
            .map(|(name, ae, port)| (name.to_string(), serde_json::json!([ae, "127.0.0.1", port])))
            .collect();
        let config = serde_json::json!({
            "Name": "petct-test",
            "StorageDirectory": dir.path().join("storage"),
            "IndexDirectory": dir.path().join("index"),
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomModalities": mods,
            "DicomScuTimeout": 60,
            "Plugins": [],
        });
        let path = dir.path().join("orthanc.json");
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = fs::File::create(dir.path().join("orthanc.log")).unwrap();
        let child = Command::new("Orthanc")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting Orthanc");
        let o = Self { child, dir, http_port, dicom_port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while o.get("/system").is_none() {
            assert!(Instant::now() < deadline, "Orthanc did not start: {}", o.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        o
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        let out = Command::new("curl").args(["-sf", &self.url(path)]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// POSTs `body` (a file with `@path`, or literal text) and returns the JSON answer.
    pub fn post(&self, path: &str, body: &str) -> Value {
        let out =
            Command::new("curl").args(["-sfS", "-X", "POST", &self.url(path), "--data-binary", body]).output().unwrap();
        assert_success(&out, &format!("POST {path}"));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pydicom's bundled test files (one per transfer syntax, among others).
pub fn pydicom_test_files() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))",
        ])
        .output()
        .expect("python3");
    assert_success(&out, "locating pydicom's test files (pip install pydicom)");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
