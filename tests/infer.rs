//! The ONNX Runtime engine against real ONNX files: tiny models built at test time by
//! tests/py/make_test_models.py, sliding-window inference against whole-volume passes and a
//! reference convolution, manifests and interfaces refused with their reasons, the anomaly maths
//! end to end, and `check-config`. Needs `ORT_DYLIB_PATH` (scripts/test.sh fetches the library)
//! and Python `onnx`.

mod common;

use common::{ort_library, test_models};
use std::path::{Path, PathBuf};
use std::process::Command;

use petct_node::infer::{
    Channels, Device, InferError, InferenceSettings, Manifest, Models, OrtSession, Predictor, Tensor, WindowSpec,
    sliding_window,
};
use petct_node::volume::{Geometry, Volume};
use sha2::{Digest, Sha256};

/// Sessions on the library scripts/test.sh fetched; the tests fail, not skip, without it.
fn settings() -> InferenceSettings {
    ort_library();
    InferenceSettings { library: None, device: Device::Cpu, allow_cpu_fallback: false, threads: 1 }
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

const SUV: &str = "[[inputs]]\nsource = \"suv\"\nclip = [0.0, 20.0]\noffset = 0.0\nscale = 10.0\n";
const CT: &str = "[[inputs]]\nsource = \"ct_hu\"\nclip = [-1000.0, 1000.0]\noffset = 0.0\nscale = 1000.0\n";
const PRIOR: &str = "[[inputs]]\nsource = \"anomaly_prior\"\nclip = [0.0, 1.0]\noffset = 0.0\nscale = 1.0\n";
const SUV_MASKED: &str = "[[inputs]]\nsource = \"suv_masked\"\nclip = [0.0, 20.0]\noffset = 0.0\nscale = 10.0\n";
const SUV_MASK: &str = "[[inputs]]\nsource = \"suv_mask\"\nclip = [0.0, 1.0]\noffset = 0.0\nscale = 1.0\n";
const ANOMALY: &str = "[anomaly]\nmask_threshold_suv = 3.0\nz_low = 0.2\nz_high = 0.6\nscore_volume_ml = 0.128\n";

/// A manifest for `onnx` (a file of the test models) in `dir`; `window` is
/// `(patch z y x, size_multiple, overlap, batch_size)`; `sha` overrides the file's digest.
struct Spec<'a> {
    name: &'a str,
    task: &'a str,
    onnx: &'a str,
    window: ([usize; 3], usize, f64, usize),
    inputs: &'a [&'a str],
    extra: &'a str,
    sha: Option<&'a str>,
}

impl Spec<'_> {
    fn write(&self, dir: &Path) -> PathBuf {
        let onnx = test_models().join(self.onnx);
        let sha = self.sha.map(str::to_string).unwrap_or_else(|| sha256(&onnx));
        let (patch, multiple, overlap, batch) = self.window;
        let task_fields = if self.task == "segmentation" {
            "threshold = 0.5\nannotation_source = \"test reader\"\n".to_string()
        } else {
            String::new()
        };
        let text = format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\ntask = \"{task}\"\nfile = {file:?}\nsha256 = \"{sha}\"\n\
             input_name = \"input\"\noutput_name = \"output\"\nspacing_mm = [4.0, 4.0, 4.0]\n\
             patch_size = {patch:?}\nsize_multiple = {multiple}\noverlap = {overlap:?}\nbatch_size = {batch}\n\
             {task_fields}{extra}\n{inputs}\n{anomaly}",
            name = self.name,
            task = self.task,
            file = onnx.display().to_string(),
            extra = self.extra,
            inputs = self.inputs.join("\n"),
            anomaly = if self.task == "anomaly" { ANOMALY } else { "" },
        );
        let path = dir.join(format!("{}.model.toml", self.name));
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn spec<'a>(name: &'a str, task: &'a str, onnx: &'a str, inputs: &'a [&'a str]) -> Spec<'a> {
    Spec { name, task, onnx, window: ([16, 16, 16], 8, 0.5, 2), inputs, extra: "", sha: None }
}

/// Loads models from manifests; the problems (key, message) when they are refused.
fn load(paths: &[PathBuf], settings: &InferenceSettings) -> Result<Models, Vec<(String, String)>> {
    match Models::load(settings, paths) {
        Ok(m) => Ok(m),
        Err(InferError::Invalid { problems }) => Err(problems),
        Err(e) => panic!("expected problems, got {e}"),
    }
}

/// Smooth values of order 1 that differ from voxel to voxel and channel to channel.
fn tensor(channels: usize, dims: [usize; 3], pad: Vec<f32>) -> Tensor {
    let n: usize = dims.iter().product();
    let data = (0..channels * n).map(|i| ((i as f32) * 0.0137).sin() + 0.3 * ((i % 97) as f32 / 97.0)).collect();
    Tensor { data, channels, dims, pad }
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn pointwise_sliding_window_equals_one_whole_volume_pass() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [SUV_MASKED, SUV_MASK, CT];
    let path = spec("pointwise", "anomaly", "pointwise.onnx", &inputs).write(dir.path());
    let mut models = load(std::slice::from_ref(&path), &settings()).unwrap();
    let model = models.anomaly().unwrap();
    assert_eq!(model.device(), Device::Cpu);
    // 37 x 50 x 29 with 16^3 patches and size multiple 8: 4 x 6 x 3 windows over 40 x 56 x 32.
    let input = tensor(3, [37, 50, 29], vec![0.0, 0.0, -1.0]);
    let windowed = model.predict(&input).unwrap();
    let manifest = Manifest::load(&path).unwrap();
    let mut whole = OrtSession::new(&manifest, &settings()).unwrap();
    let mut once = Vec::new();
    whole.predict(&input.data, [1, 3, 37, 50, 29], &mut once).unwrap();
    let off = worst(&windowed, &once);
    assert!(off < 1e-4, "sliding window differs from one pass by {off}");
    // And both from the weights themselves, at one voxel.
    let n = input.voxels();
    let v = 1234;
    let x: Vec<f32> = (0..3).map(|c| input.data[c * n + v]).collect();
    let want = 0.5 * x[0] - 0.25 * x[1] + x[2] + 0.25;
    assert!((windowed[v] - want).abs() < 1e-5, "{} vs {want}", windowed[v]);
}

/// The convolution of conv3.onnx, zero-padded at the window's border as ONNX does it.
fn conv3(batch: &[f32], [n, c, d, h, w]: [usize; 5], out: &mut Vec<f32>) -> Result<(), InferError> {
    let weight =
        |ci: usize, dz: usize, dy: usize, dx: usize| ((ci * 27 + dz * 9 + dy * 3 + dx) % 7) as f32 / 10.0 - 0.3;
    for b in 0..n {
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let mut s = 0.1f32;
                    for ci in 0..c {
                        for dz in 0..3 {
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let (zz, yy, xx) = (z + dz, y + dy, x + dx);
                                    if zz >= 1 && zz <= d && yy >= 1 && yy <= h && xx >= 1 && xx <= w {
                                        s += weight(ci, dz, dy, dx)
                                            * batch[(((b * c + ci) * d + zz - 1) * h + yy - 1) * w + xx - 1];
                                    }
                                }
                            }
                        }
                    }
                    out.push(s);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn a_3x3x3_network_is_padded_to_the_size_multiple_and_cropped_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec("conv3", "segmentation", "conv3.onnx", &[SUV, CT]);
    s.window = ([16, 16, 16], 8, 0.5, 3);
    let mut models = load(&[s.write(dir.path())], &settings()).unwrap();
    let model = models.segmentation().next().unwrap();
    let window = one_channel_windows([16, 16, 16], 3, false);
    // Odd sizes, many windows: ONNX Runtime and the reference convolution through the same windows.
    let input = tensor(2, [37, 50, 29], vec![0.0, -1.0]);
    let got = model.predict(&input).unwrap();
    assert_eq!(got.len(), 37 * 50 * 29);
    let want = sliding_window(&mut conv3, &input, &window).unwrap();
    let off = worst(&got, &want);
    assert!(off < 1e-4, "ONNX Runtime differs from the reference by {off}");
    // Smaller than a patch: one 16^3 window, padded with each channel's pad value, cropped.
    let small = tensor(2, [5, 7, 9], vec![0.5, -1.0]);
    let got = model.predict(&small).unwrap();
    let off = worst(&got, &conv3_once(&small, [16, 16, 16]));
    assert!(off < 1e-4, "a volume smaller than the patch is off by {off}");
}

/// conv3.onnx as a segmentation model on windows of up to 64³ fitted to the grid, with the
/// manifest lines `extra` besides.
fn conv3_on_fitted_windows(dir: &Path, extra: &str) -> Models {
    let mut s = spec("conv3", "segmentation", "conv3.onnx", &[SUV, CT]);
    s.window = ([64, 64, 64], 8, 0.5, 1);
    let extra = format!("patch_fits_grid = true\n{extra}");
    s.extra = &extra;
    load(&[s.write(dir)], &settings()).unwrap()
}

/// `input` reversed along x (each channel).
fn flip_x(input: &Tensor) -> Tensor {
    let w = input.dims[2];
    let data = input.data.chunks_exact(w).flat_map(|row| row.iter().rev().copied()).collect();
    Tensor { data, ..input.clone() }
}

#[test]
fn a_mirrored_model_averages_the_net_with_its_left_right_mirror_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut models = conv3_on_fitted_windows(dir.path(), "mirror_axes = [\"x\"]\n");
    let model = models.segmentation().next().unwrap();
    // One window of exactly the volume, so its mirror image is the volume's: the output is the
    // mean of conv3 over the volume and conv3 over the mirrored volume, mirrored back.
    let input = tensor(2, [40, 56, 32], vec![0.0, -1.0]);
    let plain = conv3_once(&input, [40, 56, 32]);
    let output = |data| Tensor { data, channels: 1, pad: vec![0.0], dims: input.dims };
    let mirrored = flip_x(&output(conv3_once(&flip_x(&input), [40, 56, 32]))).data;
    let want: Vec<f32> = plain.iter().zip(&mirrored).map(|(a, b)| (a + b) / 2.0).collect();
    let got = model.predict(&input).unwrap();
    let off = worst(&got, &want);
    assert!(off < 1e-4, "the mirrored model is off by {off}");
    assert!(worst(&got, &plain) > 0.01, "conv3 is not symmetric: mirroring must change its output");
}

/// Windows of a one-output network, size multiple 8, overlap 0.5.
fn one_channel_windows(patch: [usize; 3], batch_size: usize, fits_grid: bool) -> WindowSpec {
    WindowSpec { patch, size_multiple: 8, overlap: 0.5, batch_size, out_channels: 1, fits_grid }
}

/// conv3 in one pass over `input` padded (with each channel's pad value) to `padded`, cropped back.
fn conv3_once(input: &Tensor, padded: [usize; 3]) -> Vec<f32> {
    let [d, h, w] = input.dims;
    let [pd, ph, pw] = padded;
    let c = input.channels;
    let mut volume = vec![0f32; c * pd * ph * pw];
    for (i, v) in volume.iter_mut().enumerate() {
        let (x, y, z, ci) = (i % pw, i / pw % ph, i / (pw * ph) % pd, i / (pw * ph * pd));
        *v = if z < d && y < h && x < w { input.data[((ci * d + z) * h + y) * w + x] } else { input.pad[ci] };
    }
    let mut full = Vec::new();
    conv3(&volume, [1, c, pd, ph, pw], &mut full).unwrap();
    (0..d)
        .flat_map(|z| (0..h).flat_map(move |y| (0..w).map(move |x| (z, y, x))))
        .map(|(z, y, x)| full[(z * ph + y) * pw + x])
        .collect()
}

#[test]
fn a_net_without_window_statistics_gets_windows_no_larger_than_the_padded_grid() {
    let dir = tempfile::tempdir().unwrap();
    let mut models = conv3_on_fitted_windows(dir.path(), "");
    let model = models.segmentation().next().unwrap();
    // 40 x 56 x 32, multiples of the size multiple and under the patch on every axis: one window
    // of exactly the volume, whose border voxels see the network's zero padding, as one pass over
    // the volume does (a 64^3 window would show them the CT channel's pad value, -1, instead).
    let input = tensor(2, [40, 56, 32], vec![0.0, -1.0]);
    let off = worst(&model.predict(&input).unwrap(), &conv3_once(&input, [40, 56, 32]));
    assert!(off < 1e-4, "one window over the grid is off by {off}");
    // 37 x 50 x 29 pads to 40 x 56 x 32: the same as one pass over the volume padded to that.
    let odd = tensor(2, [37, 50, 29], vec![0.0, -1.0]);
    let off = worst(&model.predict(&odd).unwrap(), &conv3_once(&odd, [40, 56, 32]));
    assert!(off < 1e-4, "one window over the padded grid is off by {off}");
    // Longer than the patch along z: 64 x 24 x 16 windows slide along z only.
    let tall = tensor(2, [150, 24, 16], vec![0.0, -1.0]);
    let spec = one_channel_windows([64, 64, 64], 1, true);
    assert_eq!(spec.window(tall.dims), [64, 24, 16]);
    let mut shapes = Vec::new();
    let mut recorded = |batch: &[f32], shape: [usize; 5], out: &mut Vec<f32>| {
        shapes.push(shape);
        conv3(batch, shape, out)
    };
    let want = sliding_window(&mut recorded, &tall, &spec).unwrap();
    // 152 slices: windows at 0, 29, 59, 88 (step at most 32).
    assert_eq!(shapes, vec![[1, 2, 64, 24, 16]; 4]);
    let off = worst(&model.predict(&tall).unwrap(), &want);
    assert!(off < 1e-4, "ONNX Runtime differs from the reference by {off}");
}

fn grid(dims: [usize; 3]) -> Geometry {
    Geometry {
        dims,
        spacing_mm: [4.0, 4.0, 4.0],
        origin_mm: [0.0; 3],
        direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        frame_of_reference_uid: None,
    }
}

#[test]
fn the_anomaly_map_and_score_and_the_prior_fed_segmentation_match_hand_computed_values() {
    let dir = tempfile::tempdir().unwrap();
    let anomaly = spec("anomaly", "anomaly", "anomaly.onnx", &[SUV_MASKED, SUV_MASK, CT]).write(dir.path());
    let seg = spec("seg-prior", "segmentation", "seg_prior.onnx", &[SUV, CT, PRIOR]).write(dir.path());
    let mut models = load(&[anomaly, seg], &settings()).unwrap();
    // mean 0.1, log-variance ln 4: z = (SUV / 10 - 0.1) / 2; p = (z - 0.2) / 0.4, clipped.
    let suv_values = [5.0, 9.0, 13.0, 30.0, 7.0, 9.0];
    let body = [1u8, 1, 1, 1, 1, 0];
    let want_p = [0.0, 0.5, 1.0, 1.0, 0.25, 0.0];
    let suv = Volume::new(grid([3, 2, 1]), suv_values.to_vec()).unwrap();
    let ct = Volume::new(grid([3, 2, 1]), vec![0.0; 6]).unwrap();
    let body = Volume::new(grid([3, 2, 1]), body.to_vec()).unwrap();
    let channels = Channels { suv: &suv, ct_hu: &ct, anomaly_prior: None, ct_blob: None };
    let map = models.anomaly().unwrap().anomaly(&channels, &body).unwrap();
    let off = worst(map.probability.data(), &want_p);
    assert!(off < 1e-5, "{:?} vs {want_p:?}", map.probability.data());
    // 4 mm voxels are 0.064 mL: the score is the mean of the two highest body voxels.
    assert!((map.score - 1.0).abs() < 1e-6, "score {}", map.score);
    assert_eq!(map.probability.geometry(), suv.geometry());

    // The segmentation model reads the prior: logit 4 p - 2, probability sigmoid.
    let channels = Channels { anomaly_prior: Some(&map.probability), ..channels };
    let seg = models.segmentation().next().unwrap();
    let p = seg.segment(&channels).unwrap();
    let want: Vec<f32> = want_p.iter().map(|&q| 1.0 / (1.0 + (-(4.0 * q - 2.0f32)).exp())).collect();
    assert!(worst(p.data(), &want) < 1e-5, "{:?} vs {want:?}", p.data());
    // Without the prior, or on another grid, the model refuses.
    let e = seg.segment(&Channels { anomaly_prior: None, ..channels }).unwrap_err().to_string();
    assert!(e.contains("seg-prior") && e.contains("anomaly_prior"), "{e}");
    let mut coarse = grid([3, 2, 1]);
    coarse.spacing_mm = [2.0, 4.0, 4.0];
    let other = Volume::new(coarse, suv_values.to_vec()).unwrap();
    let e =
        seg.segment(&Channels { suv: &other, ct_hu: &other, anomaly_prior: Some(&other), ct_blob: None }).unwrap_err();
    assert!(e.to_string().contains("expects [4.0, 4.0, 4.0] mm"), "{e}");
}

#[test]
fn the_map_has_a_calibration_of_its_own_when_the_manifest_gives_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = spec("anomaly", "anomaly", "anomaly.onnx", &[SUV_MASKED, SUV_MASK, CT]).write(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("z_high = 0.6\n", "z_high = 0.6\nprior_z_low = 0.3\nprior_z_high = 1.1\n"))
        .unwrap();
    let mut models = load(&[path], &settings()).unwrap();
    // z as above: 0.2, 0.4, 0.6, 0.95 (SUV clipped at 20), 0.3; the map is (z - 0.3) / 0.8.
    let suv = Volume::new(grid([3, 2, 1]), vec![5.0, 9.0, 13.0, 30.0, 7.0, 9.0]).unwrap();
    let ct = Volume::new(grid([3, 2, 1]), vec![0.0; 6]).unwrap();
    let body = Volume::new(grid([3, 2, 1]), vec![1u8, 1, 1, 1, 1, 0]).unwrap();
    let channels = Channels { suv: &suv, ct_hu: &ct, anomaly_prior: None, ct_blob: None };
    let map = models.anomaly().unwrap().anomaly(&channels, &body).unwrap();
    let want_p = [0.0, 0.125, 0.375, 0.8125, 0.0, 0.0];
    assert!(worst(map.probability.data(), &want_p) < 1e-5, "{:?} vs {want_p:?}", map.probability.data());
    // The score keeps z_low and z_high: 1.0, where the map's range would give (0.8125 + 0.375) / 2.
    assert!((map.score - 1.0).abs() < 1e-6, "score {}", map.score);
}

#[test]
fn manifests_that_do_not_match_their_file_are_refused_with_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings();
    let problem = |spec: Spec| {
        let problems = load(&[spec.write(dir.path())], &s).expect_err("refused");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "models[0].manifest");
        problems[0].1.clone()
    };
    let e = problem(spec("renamed", "segmentation", "renamed.onnx", &[SUV, CT, CT]));
    assert!(e.contains("input `input`") && e.contains("its name is `x`"), "{e}");
    assert!(e.contains("output `output`") && e.contains("its name is `y`"), "{e}");
    let e = problem(spec("channels", "segmentation", "four_channels.onnx", &[SUV, CT, CT]));
    assert!(e.contains("[N, 3, D, H, W]") && e.contains("it has 4 channels"), "{e}");
    let e = problem(spec("k", "segmentation", "pointwise.onnx", &[SUV, CT, CT]));
    assert!(e.contains("output `output` f32 [N, 1, D, H, W]") && e.contains("it has 2 channels"), "{e}");
    let wrong = "ab".repeat(32);
    let e = problem(Spec { sha: Some(&wrong), ..spec("sha", "segmentation", "conv3.onnx", &[SUV, CT]) });
    assert!(
        e.contains("sha256") && e.contains(&wrong) && e.contains(&sha256(&test_models().join("conv3.onnx"))),
        "{e}"
    );
    let e = problem(Spec { extra: "colour = \"blue\"\n", ..spec("key", "segmentation", "conv3.onnx", &[SUV, CT]) });
    assert!(e.contains("key.model.toml") && e.contains("colour"), "{e}");
    let e = problem(Spec {
        onnx: "missing.onnx",
        sha: Some(&wrong),
        ..spec("gone", "segmentation", "conv3.onnx", &[SUV, CT])
    });
    assert!(e.contains("key `file`") && e.contains("missing.onnx"), "{e}");
}

#[test]
fn the_set_of_models_is_checked_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings();
    let a = spec("anomaly", "anomaly", "anomaly.onnx", &[SUV_MASKED, SUV_MASK, CT]).write(dir.path());
    let seg = spec("seg-prior", "segmentation", "seg_prior.onnx", &[SUV, CT, PRIOR]).write(dir.path());
    let twin = dir.path().join("twin");
    std::fs::create_dir(&twin).unwrap();
    let a2 = spec("anomaly-2", "anomaly", "anomaly.onnx", &[SUV_MASKED, SUV_MASK, CT]).write(&twin);
    let dup = spec("seg-prior", "segmentation", "conv3.onnx", &[SUV, CT]).write(&twin);
    let keys =
        |problems: Vec<(String, String)>| problems.into_iter().map(|(k, m)| format!("{k}: {m}")).collect::<Vec<_>>();
    let e = keys(load(std::slice::from_ref(&seg), &s).err().unwrap());
    assert!(e.len() == 1 && e[0].contains("models[0].manifest") && e[0].contains("no anomaly model"), "{e:?}");
    let e = keys(load(&[a.clone(), a2, seg.clone(), dup], &s).err().unwrap());
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("models[1].manifest") && e[0].contains("second anomaly model"), "{e:?}");
    assert!(e[1].starts_with("models[3].manifest") && e[1].contains("already the name of models[2]"), "{e:?}");
    let models = load(&[a, seg], &s).unwrap();
    let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
    assert_eq!(names, ["anomaly", "seg-prior"]);
}

#[test]
fn cuda_without_cuda_is_refused_unless_cpu_fallback_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = spec("conv3", "segmentation", "conv3.onnx", &[SUV, CT]).write(dir.path());
    let cuda = InferenceSettings { device: Device::Cuda, ..settings() };
    let problems = load(std::slice::from_ref(&path), &cuda).expect_err("no CUDA here");
    assert_eq!(problems[0].0, "inference.device", "{problems:?}");
    assert!(problems[0].1.contains("CUDA") && problems[0].1.contains("allow_cpu_fallback"), "{problems:?}");
    let fallback = InferenceSettings { allow_cpu_fallback: true, ..cuda };
    let models = load(&[path], &fallback).unwrap();
    assert_eq!(models.iter().next().unwrap().device(), Device::Cpu);
}

fn check_config(config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_petct-node")).arg("check-config").arg(config).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn check_config_loads_the_models_and_names_what_is_wrong() {
    settings();
    let dir = tempfile::tempdir().unwrap();
    spec("conv3", "segmentation", "conv3.onnx", &[SUV, CT]).write(dir.path());
    let wrong = "0".repeat(64);
    Spec { sha: Some(&wrong), ..spec("bad-sha", "segmentation", "conv3.onnx", &[SUV, CT]) }.write(dir.path());
    spec("renamed", "segmentation", "renamed.onnx", &[SUV, CT, CT]).write(dir.path());
    let config = dir.path().join("node.toml");
    let models = |names: &[&str]| {
        names.iter().map(|n| format!("[[models]]\nmanifest = \"{n}.model.toml\"\n")).collect::<String>()
    };

    std::fs::write(&config, models(&["conv3"])).unwrap();
    let (code, out, err) = check_config(&config);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("models: conv3 1.0.0 (segmentation, cpu)"), "{out}");

    std::fs::write(&config, models(&["conv3", "bad-sha", "renamed", "absent"])).unwrap();
    let (code, _, err) = check_config(&config);
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(": key `")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].contains("key `models[1].manifest`") && lines[0].contains("key `sha256`"), "{err}");
    assert!(lines[1].contains("key `models[2].manifest`") && lines[1].contains("its name is `x`"), "{err}");
    assert!(lines[2].contains("key `models[3].manifest`") && lines[2].contains("absent.model.toml"), "{err}");

    let text = format!("[inference]\nlibrary = \"/nonexistent/libonnxruntime.so\"\n{}", models(&["conv3"]));
    std::fs::write(&config, text).unwrap();
    let (code, _, err) = check_config(&config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("key `inference.library`") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
}

#[test]
fn a_model_that_takes_the_ct_shape_gets_the_nodes_own_channel_through_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let blob = "[[inputs]]\nsource = \"ct_blob\"\nclip = [0.0, 40.0]\noffset = 0.0\nscale = 20.0\n";
    // logit 4 ct_blob / 20 - 2: probability 0.5 where the channel is 10 HU.
    let seg = spec("seg-shape", "segmentation", "seg_prior.onnx", &[SUV, CT, blob]).write(dir.path());
    let mut models = load(&[seg], &settings()).unwrap();
    // A 40 HU ball of 12 mm radius and a tube of the same radius in fat, on a 4 mm CT grid.
    let n = 32;
    let (mut ct, mut inside) = (Vec::new(), Vec::new());
    for k in 0..n {
        for j in 0..n {
            for i in 0..n {
                let [x, y, z] = [i, j, k].map(|v| (v as f64 - 15.5) * 4.0);
                let ball = x * x + y * y + (z - 30.0).powi(2) <= 144.0;
                let tube = (x - 30.0).powi(2) + y * y <= 144.0;
                ct.push(if ball || tube { 40.0 } else { -90.0 });
                inside.push(u8::from([i, j, k].iter().all(|&v| (2..n - 2).contains(&v))));
            }
        }
    }
    let ct = Volume::new(grid([n; 3]), ct).unwrap();
    let body = Volume::new(grid([n; 3]), inside).unwrap();
    let suv = Volume::new(grid([n; 3]), vec![1.0f32; n * n * n]).unwrap();
    let inferred = petct_node::infer::stage::run_models(&mut models, &suv, &ct, &body).unwrap();
    let mask = &inferred.segmentations[0].mask;
    let want = petct_node::infer::shape::ct_blob(&ct, &body);
    let marked = mask.data().iter().filter(|&&m| m != 0).count();
    let differ = mask.data().iter().zip(want.data()).filter(|(m, w)| (**m != 0) != (**w >= 10.0)).count();
    assert!(marked > 20 && differ == 0, "{marked} marked, {differ} differ from the channel at 10 HU");
    // The ball, not the tube: nothing marked more than 20 mm from the ball's centre.
    for (v, _) in mask.data().iter().enumerate().filter(|(_, m)| **m != 0) {
        let [x, y, z] = [v % n, v / n % n, v / (n * n)].map(|c| (c as f64 - 15.5) * 4.0);
        assert!(x * x + y * y + (z - 30.0).powi(2) <= 400.0, "marked at {x}, {y}, {z}");
    }
}
