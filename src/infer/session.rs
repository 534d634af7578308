//! ONNX Runtime sessions: the library loaded once per process from `[inference] library` (or
//! `$ORT_DYLIB_PATH`), one session per model and worker, on the configured device, its real
//! inputs and outputs checked against the manifest before it is used.

use std::path::PathBuf;
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use ort::value::{TensorRef, ValueType};

use super::InferError;
use super::manifest::Manifest;
use super::window::Predictor;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA execution provider (needs the cargo feature `cuda` and a GPU build of ONNX
    /// Runtime with CUDA present).
    Cuda,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// `[inference]` after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceSettings {
    /// `libonnxruntime.so`; `None`: `$ORT_DYLIB_PATH`.
    pub library: Option<PathBuf>,
    pub device: Device,
    /// With `device = cuda`: run on the CPU when the CUDA execution provider cannot be used,
    /// instead of refusing to start.
    pub allow_cpu_fallback: bool,
    /// Intra-op threads of each session.
    pub threads: usize,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        Self { library: None, device: Device::Cpu, allow_cpu_fallback: false, threads: 2 }
    }
}

const HOW_TO_GET_THE_LIBRARY: &str = "set [inference] library (or ORT_DYLIB_PATH) to libonnxruntime.so.1.31.1, \
     e.g. from the PyPI wheel: `python3 -m pip download onnxruntime==1.31.1 --no-deps --only-binary=:all: -d DIR` \
     and `unzip -j DIR/onnxruntime-*.whl 'onnxruntime/capi/libonnxruntime.so*'` (onnxruntime-gpu for CUDA)";

impl InferenceSettings {
    /// The library to load: the configured one, else `$ORT_DYLIB_PATH`.
    pub fn library_path(&self) -> Result<PathBuf, InferError> {
        let path = match &self.library {
            Some(p) => p.clone(),
            None => match std::env::var_os("ORT_DYLIB_PATH") {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => {
                    return Err(InferError::Library(format!(
                        "no ONNX Runtime library: inference.library is empty and ORT_DYLIB_PATH is not set; {HOW_TO_GET_THE_LIBRARY}"
                    )));
                }
            },
        };
        if !path.is_file() {
            return Err(InferError::Library(format!(
                "ONNX Runtime library {} does not exist; {HOW_TO_GET_THE_LIBRARY}",
                path.display()
            )));
        }
        // ort would look for a relative path beside the executable first.
        std::path::absolute(&path).map_err(|e| InferError::Library(format!("{}: {e}", path.display())))
    }
}

/// The process's ONNX Runtime: one library, one environment.
static RUNTIME: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Loads the library on first use; later calls must name the same library.
fn environment(settings: &InferenceSettings) -> Result<Environment, InferError> {
    let path = settings.library_path()?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
    let mut runtime = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((loaded, env)) = runtime.as_ref() {
        if *loaded != canonical {
            return Err(InferError::Library(format!(
                "ONNX Runtime is already loaded from {}; one process cannot load {} as well",
                loaded.display(),
                path.display()
            )));
        }
        return Ok(env.clone());
    }
    let env = ort::init_from(&path)
        .map_err(|e| InferError::Library(format!("loading ONNX Runtime from {}: {e}", path.display())))?
        .with_name("petct-node")
        .with_telemetry(false)
        .build()
        .map_err(|e| InferError::Library(format!("starting ONNX Runtime from {}: {e}", path.display())))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    *runtime = Some((canonical, env.clone()));
    Ok(env)
}

/// One ONNX Runtime session for one model: the production [`Predictor`].
pub struct OrtSession {
    session: Session,
    input_name: String,
    output_name: String,
    out_channels: usize,
    device: Device,
}

impl std::fmt::Debug for OrtSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtSession").field("input", &self.input_name).field("device", &self.device).finish()
    }
}

impl OrtSession {
    /// Builds the session on the configured device and checks its interface against the
    /// manifest.
    pub fn new(manifest: &Manifest, settings: &InferenceSettings) -> Result<Self, InferError> {
        let env = environment(settings)?;
        let name = &manifest.name;
        let session_error = |message: String| InferError::Session {
            model: name.clone(),
            file: manifest.onnx_path().to_path_buf(),
            message,
        };
        let builder = || {
            Session::builder(&env)
                .and_then(|b| b.with_intra_threads(settings.threads).map_err(ort::Error::from))
                .map_err(|e| session_error(e.to_string()))
        };
        let commit = |mut b: SessionBuilder| b.commit_from_file(manifest.onnx_path());
        // The CPU arena keeps a session's largest run for the life of the worker. Fixed windows
        // reuse it run after run (the anomaly model runs 12 % faster with it); windows that fit
        // the grid run once or twice a study at its size (1.5 GB for a whole body), so they go
        // without.
        let cpu = |b: SessionBuilder| {
            let arena = !manifest.patch_fits_grid;
            b.with_execution_providers([ort::ep::CPU::default().with_arena_allocator(arena).build()])
                .map_err(|e| session_error(e.to_string()))
        };
        let on_cpu = || commit(cpu(builder()?)?).map_err(|e| session_error(e.to_string()));
        let (session, device) = match settings.device {
            Device::Cpu => (on_cpu()?, Device::Cpu),
            Device::Cuda => {
                let cuda = with_cuda(builder()?)
                    .and_then(|b| commit(b).map_err(|e| format!("creating the session with it: {e}")));
                match cuda {
                    Ok(session) => (session, Device::Cuda),
                    Err(why) if settings.allow_cpu_fallback => {
                        tracing::warn!(model = %name, "CUDA cannot be used ({why}); running on the CPU (inference.allow_cpu_fallback)");
                        (on_cpu()?, Device::Cpu)
                    }
                    Err(why) => {
                        return Err(InferError::Device {
                            model: name.clone(),
                            message: format!(
                                "device = \"cuda\" but the CUDA execution provider cannot be used: {why} \
                                 (set inference.allow_cpu_fallback = true to run on the CPU instead)"
                            ),
                        });
                    }
                }
            }
        };
        let ports = |outlets: &[ort::value::Outlet]| outlets.iter().map(Port::from_outlet).collect::<Vec<_>>();
        check_interface(manifest, &ports(session.inputs()), &ports(session.outputs())).map_err(|message| {
            InferError::Interface { model: name.clone(), file: manifest.onnx_path().to_path_buf(), message }
        })?;
        tracing::info!(model = %name, version = %manifest.version, %device, threads = settings.threads, "model ready");
        Ok(Self {
            session,
            input_name: manifest.input_name.clone(),
            output_name: manifest.output_name.clone(),
            out_channels: manifest.task.output_channels(),
            device,
        })
    }

    /// Where the session runs (the CPU when CUDA was asked for but fell back).
    pub fn device(&self) -> Device {
        self.device
    }
}

/// The builder with the CUDA execution provider registered, or why it cannot be.
#[cfg(feature = "cuda")]
fn with_cuda(builder: SessionBuilder) -> Result<SessionBuilder, String> {
    use ort::ep::ExecutionProvider;
    match ort::ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => return Err("this ONNX Runtime library has no CUDA execution provider".into()),
        Err(e) => return Err(e.to_string()),
    }
    builder.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()]).map_err(|e| e.to_string())
}

/// The builder with the CUDA execution provider registered, or why it cannot be.
#[cfg(not(feature = "cuda"))]
fn with_cuda(_: SessionBuilder) -> Result<SessionBuilder, String> {
    Err("this petct-node was built without CUDA support (cargo feature `cuda`)".into())
}

impl Predictor for OrtSession {
    fn predict(&mut self, batch: &[f32], shape: [usize; 5], out: &mut Vec<f32>) -> Result<(), InferError> {
        let run = |e: ort::Error| InferError::Run(format!("ONNX Runtime: {e}"));
        let tensor = TensorRef::from_array_view((shape, batch)).map_err(run)?;
        let outputs = self.session.run(ort::inputs![self.input_name.as_str() => tensor]).map_err(run)?;
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| InferError::Run(format!("the network gave no output `{}`", self.output_name)))?;
        let (got, data) = value.try_extract_tensor::<f32>().map_err(run)?;
        let [n, _, d, h, w] = shape;
        let want = [n, self.out_channels, d, h, w].map(|v| v as i64);
        if **got != want {
            return Err(InferError::Run(format!("the network returned shape {got}, expected {want:?}")));
        }
        out.extend_from_slice(data);
        Ok(())
    }
}

/// One input or output of a network, as the ONNX file declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    /// `f32`, `f64`, ... or what else it is (`sequence`, `map`).
    pub element: String,
    /// Dimensions, `-1` where dynamic; empty for a value that is not a tensor.
    pub shape: Vec<i64>,
}

impl Port {
    fn from_outlet(o: &ort::value::Outlet) -> Self {
        let (element, shape) = match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => (ty.to_string(), shape.to_vec()),
            ValueType::Sequence(_) => ("sequence".into(), Vec::new()),
            ValueType::Map { .. } => ("map".into(), Vec::new()),
            ValueType::Optional(_) => ("optional".into(), Vec::new()),
        };
        Self { name: o.name().to_string(), element, shape }
    }

    fn describe(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
        format!("`{}` {} [{}]", self.name, self.element, dims.join(", "))
    }
}

/// The network must have exactly the manifest's input and output: `[N, C, D, H, W]` and
/// `[N, K, D, H, W]` float32, C the number of `[[inputs]]`, K 1 (segmentation) or 2 (anomaly),
/// both fixed; N, D, H, W dynamic (or fixed to what the node feeds: 1 window per run with
/// `batch_size = 1`, the patch size unless `patch_fits_grid`). The message says what the
/// manifest says and what the file has.
pub fn check_interface(manifest: &Manifest, inputs: &[Port], outputs: &[Port]) -> Result<(), String> {
    let c = manifest.inputs.len() as i64;
    let k = manifest.task.output_channels() as i64;
    let [pz, py, px] = manifest.patch_size.map(|v| v as i64);
    let n = manifest.batch_size as i64;
    let check = |what: &str, name: &str, channels: i64, ports: &[Port]| -> Result<(), String> {
        let expected = format!("`{name}` f32 [N, {channels}, D, H, W] (N, D, H, W dynamic)");
        let has = || ports.iter().map(Port::describe).collect::<Vec<_>>().join(", ");
        let [port] = ports else {
            return Err(format!(
                "the manifest says one {what} {expected}; the file has {} {what}s: {}",
                ports.len(),
                has()
            ));
        };
        let mut wrong = Vec::new();
        if port.name != name {
            wrong.push(format!("its name is `{}`", port.name));
        }
        if port.element != "f32" {
            wrong.push(format!("its type is {}", port.element));
        }
        if port.shape.len() != 5 {
            wrong.push(format!("its rank is {}", port.shape.len()));
        } else {
            let s = &port.shape;
            if s[1] != channels {
                wrong.push(if s[1] < 0 {
                    "its channel dimension is dynamic".to_string()
                } else {
                    format!("it has {} channels", s[1])
                });
            }
            // A fixed batch must be the manifest's batch size, and only with batch_size = 1,
            // since the last batch of a volume may be smaller.
            if s[0] >= 0 && !(s[0] == 1 && n == 1) {
                wrong.push(format!("its batch dimension is fixed to {} (batch_size = {n})", s[0]));
            }
            for (axis, (&got, want)) in ["D", "H", "W"].iter().zip(s[2..].iter().zip([pz, py, px])) {
                if got >= 0 && manifest.patch_fits_grid {
                    wrong.push(format!("its {axis} is fixed to {got} (patch_fits_grid = true feeds smaller windows)"));
                } else if got >= 0 && got != want {
                    wrong.push(format!("its {axis} is fixed to {got} (patch {want})"));
                }
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("the manifest says {what} {expected}; the file has {}: {}", port.describe(), wrong.join(", ")))
        }
    };
    let mut problems = Vec::new();
    problems.extend(check("input", &manifest.input_name, c, inputs).err());
    problems.extend(check("output", &manifest.output_name, k, outputs).err());
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::infer::manifest::tests::{ANOMALY, SEGMENTATION};

    fn port(name: &str, element: &str, shape: &[i64]) -> Port {
        Port { name: name.into(), element: element.into(), shape: shape.to_vec() }
    }

    fn seg() -> Manifest {
        Manifest::parse(Path::new("m.model.toml"), SEGMENTATION).unwrap()
    }

    #[test]
    fn a_matching_interface_passes() {
        let m = seg();
        let out = [port("output", "f32", &[-1, 1, -1, -1, -1])];
        assert_eq!(check_interface(&m, &[port("input", "f32", &[-1, 2, -1, -1, -1])], &out), Ok(()));
        // Fixed to the patch (z, y, x) is as good as dynamic.
        assert_eq!(check_interface(&m, &[port("input", "f32", &[-1, 2, 32, 32, 16])], &out), Ok(()));
        let a = Manifest::parse(Path::new("a.model.toml"), ANOMALY).unwrap();
        let (i, o) = (port("input", "f32", &[1, 3, -1, -1, -1]), port("output", "f32", &[1, 2, -1, -1, -1]));
        assert_eq!(check_interface(&a, &[i], &[o]), Ok(()));
    }

    #[test]
    fn a_mismatch_says_what_the_manifest_says_and_what_the_file_has() {
        let m = seg();
        let out = [port("output", "f32", &[-1, 1, -1, -1, -1])];
        let e = check_interface(&m, &[port("x", "f32", &[-1, 3, -1, -1, -1])], &out).unwrap_err();
        assert!(e.contains("input `input`") && e.contains("`x`") && e.contains("has 3 channels"), "{e}");
        assert!(e.contains("[N, 2, D, H, W]"), "{e}");
        let e = check_interface(&m, &[port("input", "f64", &[-1, 2, -1, -1])], &out).unwrap_err();
        assert!(e.contains("type is f64") && e.contains("rank is 4"), "{e}");
        let e = check_interface(&m, &[port("input", "f32", &[-1, -1, -1, 20, -1])], &out).unwrap_err();
        assert!(e.contains("channel dimension is dynamic") && e.contains("H is fixed to 20"), "{e}");
        let e = check_interface(&m, &[port("input", "f32", &[2, 2, -1, -1, -1])], &out).unwrap_err();
        assert!(e.contains("batch dimension is fixed to 2"), "{e}");
        // Windows that fit the grid can be smaller than the patch: a fixed patch size will not do.
        let mut fits = seg();
        fits.patch_fits_grid = true;
        let e = check_interface(&fits, &[port("input", "f32", &[-1, 2, 32, 32, 16])], &out).unwrap_err();
        assert!(e.contains("D is fixed to 32") && e.contains("patch_fits_grid"), "{e}");
        let inputs = [port("input", "f32", &[-1, 2, -1, -1, -1])];
        let e = check_interface(&m, &inputs, &[port("output", "f32", &[-1, 2, -1, -1, -1])]).unwrap_err();
        assert!(e.contains("output `output`") && e.contains("has 2 channels"), "{e}");
        let two = [port("output", "f32", &[-1, 1, -1, -1, -1]), port("extra", "f32", &[-1, 1, -1, -1, -1])];
        let e = check_interface(&m, &inputs, &two).unwrap_err();
        assert!(e.contains("2 outputs") && e.contains("`extra`"), "{e}");
        let e = check_interface(&m, &inputs, &[port("output", "sequence", &[])]).unwrap_err();
        assert!(e.contains("type is sequence"), "{e}");
    }

    #[test]
    fn without_a_library_the_error_says_how_to_get_one() {
        let s = InferenceSettings { library: Some("/nonexistent/libonnxruntime.so".into()), ..Default::default() };
        let e = s.library_path().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/libonnxruntime.so") && e.contains("pip download onnxruntime"), "{e}");
    }
}
