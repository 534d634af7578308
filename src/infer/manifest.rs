//! The model manifest `NAME.model.toml` (docs/models.md): typed, unknown keys refused, every
//! value checked, the ONNX file's sha256 verified. Every error names the manifest and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{TomlError, from_toml};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading model manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model manifest {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("model manifest {path}: {}", problems.iter().map(|(k, m)| format!("key `{k}`: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid { path: PathBuf, problems: Vec<(String, String)> },
    #[error("model manifest {path}: key `file`: reading {file}: {source}")]
    File { path: PathBuf, file: PathBuf, source: std::io::Error },
    #[error("model manifest {path}: key `sha256`: {file} has sha256 {actual}, the manifest says {expected}")]
    Sha256 { path: PathBuf, file: PathBuf, expected: String, actual: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Anomaly,
    Segmentation,
}

impl Task {
    /// `K` of the output `[N, K, D, H, W]`: mean and log-variance, or one logit.
    pub fn output_channels(self) -> usize {
        match self {
            Task::Anomaly => 2,
            Task::Segmentation => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Anomaly => "anomaly",
            Task::Segmentation => "segmentation",
        }
    }
}

/// An axis of the model grid, as a manifest's `mirror_axes` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    X,
    Y,
    Z,
}

/// How a segmentation model's probability becomes its mask on the CT grid (docs/models.md,
/// "ONNX interface").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Draw {
    /// Every CT voxel whose linearly interpolated probability is at least `threshold`.
    #[default]
    Threshold,
    /// Each part of the map that reaches `threshold`, drawn with the volume its probabilities
    /// add up to (the most probable CT voxels first): for nets trained on soft targets.
    ExpectedVolume,
    /// The same parts, each drawn where the model's probability and the CT's likeness to the
    /// part's core together make even odds or better (training/README.md, item 53).
    CtRefined,
}

/// What an input channel holds, on the model grid (docs/models.md, "Input channels").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// SUVbw, g/mL.
    Suv,
    /// CT, HU.
    CtHu,
    /// The anomaly model's probability map, 0..1.
    AnomalyPrior,
    /// `suv` with the voxels above the anomaly model's `mask_threshold_suv` set to 0.
    SuvMasked,
    /// 1 where `suv` is above `mask_threshold_suv`, else 0.
    SuvMask,
    /// How much the CT is a bright ball at each voxel, HU (`shape::ct_blob`).
    CtBlob,
}

impl Source {
    /// The physical value of air (outside the body, outside the CT box).
    pub fn air(self) -> f32 {
        match self {
            Source::CtHu => -1000.0,
            Source::Suv | Source::AnomalyPrior | Source::SuvMasked | Source::SuvMask | Source::CtBlob => 0.0,
        }
    }

    /// Channels only an anomaly model can provide: its map or its `mask_threshold_suv`.
    pub fn needs_anomaly_model(self) -> bool {
        matches!(self, Source::AnomalyPrior | Source::SuvMasked | Source::SuvMask)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Suv => "suv",
            Source::CtHu => "ct_hu",
            Source::AnomalyPrior => "anomaly_prior",
            Source::SuvMasked => "suv_masked",
            Source::SuvMask => "suv_mask",
            Source::CtBlob => "ct_blob",
        }
    }
}

/// One `[[inputs]]` entry: a channel and its normalisation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputChannel {
    pub source: Source,
    /// `[lo, hi]`, physical units; `lo < hi`.
    pub clip: [f64; 2],
    pub offset: f64,
    /// Non-zero.
    pub scale: f64,
}

impl InputChannel {
    /// The value the network sees: `(clamp(x, lo, hi) − offset) / scale`.
    pub fn normalise(&self, x: f32) -> f32 {
        (x.clamp(self.clip[0] as f32, self.clip[1] as f32) - self.offset as f32) / self.scale as f32
    }

    /// The normalised value of air: what padding and voxels outside the CT hold.
    pub fn air(&self) -> f32 {
        self.normalise(self.source.air())
    }
}

/// `[anomaly]`: how the anomaly model's output becomes a probability map and a study score.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyParams {
    /// SUV above which voxels are hidden from the reconstruction (`suv_masked`, `suv_mask`).
    pub mask_threshold_suv: f64,
    /// `z` at which the study score's probability starts to rise from 0, and where it reaches 1.
    pub z_low: f64,
    pub z_high: f64,
    /// The same for the voxel map (the segmentation models' `anomaly_prior`), which needs a
    /// lower range than the study score: z_low and z_high when absent.
    #[serde(default)]
    pub prior_z_low: Option<f64>,
    #[serde(default)]
    pub prior_z_high: Option<f64>,
    /// The study score is the mean probability of this much of the body, the most anomalous.
    pub score_volume_ml: f64,
}

impl AnomalyParams {
    /// `[z_low, z_high]` of the study score.
    pub fn score_z(&self) -> [f64; 2] {
        [self.z_low, self.z_high]
    }

    /// `[z_low, z_high]` of the voxel map.
    pub fn prior_z(&self) -> [f64; 2] {
        [self.prior_z_low.unwrap_or(self.z_low), self.prior_z_high.unwrap_or(self.z_high)]
    }
}

/// A model manifest, checked: built only by [`Manifest::parse`] and [`Manifest::load`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique among the configured models; the SEG segment and the SR name it.
    pub name: String,
    /// Part of every output UID.
    pub version: String,
    pub task: Task,
    /// The ONNX file as the manifest writes it; [`Manifest::onnx_path`] resolves it.
    pub file: PathBuf,
    pub sha256: String,
    pub input_name: String,
    pub output_name: String,
    /// Voxel spacing of the model grid, x, y, z.
    pub spacing_mm: [f64; 3],
    /// Window size, z, y, x.
    pub patch_size: [usize; 3],
    pub size_multiple: usize,
    pub overlap: f64,
    pub batch_size: usize,
    /// `patch_size` is the largest window: along an axis where the grid, padded to
    /// `size_multiple`, is smaller, the window is that padded extent. Only for a net without
    /// per-window statistics (batch normalisation, folded at export); an instance-normalised net
    /// must see the patch it was trained on.
    #[serde(default)]
    pub patch_fits_grid: bool,
    /// Segmentation only: axes the net was trained mirrored along; each window is also run
    /// mirrored along every combination of them and the logits averaged (nnU-Net's test-time
    /// mirroring).
    #[serde(default)]
    pub mirror_axes: Vec<Axis>,
    /// Segmentation only: foreground where the probability is at least this.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Segmentation only: how the probability becomes the mask ([`Manifest::draw`]).
    #[serde(default)]
    draw: Option<Draw>,
    /// Segmentation only: whose annotations the model learned.
    #[serde(default)]
    pub annotation_source: Option<String>,
    #[serde(default)]
    pub description: String,
    pub inputs: Vec<InputChannel>,
    /// Anomaly only.
    #[serde(default)]
    pub anomaly: Option<AnomalyParams>,
    #[serde(skip)]
    manifest_path: PathBuf,
    #[serde(skip)]
    onnx_path: PathBuf,
}

impl Manifest {
    /// Reads and checks the manifest, then verifies the ONNX file's sha256 (streamed).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.into(), source })?;
        let manifest = Self::parse(path, &text)?;
        let file_error = |source| ManifestError::File { path: path.into(), file: manifest.onnx_path.clone(), source };
        let mut file = std::fs::File::open(&manifest.onnx_path).map_err(file_error)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(file_error)?;
        let actual = hex::encode(hasher.finalize());
        if !actual.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(ManifestError::Sha256 {
                path: path.into(),
                file: manifest.onnx_path.clone(),
                expected: manifest.sha256.clone(),
                actual,
            });
        }
        Ok(manifest)
    }

    /// Parses and checks manifest text (no file access); `path` is where it came from, for
    /// messages and to resolve `file`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let mut manifest: Manifest = from_toml(text).map_err(|e| match e {
            TomlError::Syntax(message) => ManifestError::Syntax { path: path.into(), message },
            TomlError::Key { key, message } => {
                ManifestError::Invalid { path: path.into(), problems: vec![(key, message)] }
            }
        })?;
        let problems = manifest.problems();
        if !problems.is_empty() {
            return Err(ManifestError::Invalid { path: path.into(), problems });
        }
        manifest.manifest_path = path.into();
        manifest.onnx_path = path.parent().unwrap_or(Path::new("")).join(&manifest.file);
        Ok(manifest)
    }

    /// Where the manifest was read from.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The ONNX file, `file` resolved relative to the manifest.
    pub fn onnx_path(&self) -> &Path {
        &self.onnx_path
    }

    /// The input whose normalisation gives the anomaly model's `x` (the SUV it reconstructs):
    /// its `suv` input if it has one, else its `suv_masked` input.
    pub fn reconstruction_input(&self) -> Option<&InputChannel> {
        let find = |s: Source| self.inputs.iter().find(|c| c.source == s);
        find(Source::Suv).or_else(|| find(Source::SuvMasked))
    }

    /// Which of the window's axes (z, y, x) are mirrored at inference.
    pub fn mirrored(&self) -> [bool; 3] {
        [Axis::Z, Axis::Y, Axis::X].map(|a| self.mirror_axes.contains(&a))
    }

    /// How a segmentation model's probability becomes its mask (`threshold` unless the manifest
    /// says otherwise).
    pub fn draw(&self) -> Draw {
        self.draw.unwrap_or_default()
    }

    /// Whether the model needs the configured anomaly model (its map or its SUV threshold).
    pub fn needs_anomaly_model(&self) -> bool {
        self.inputs.iter().any(|c| c.source.needs_anomaly_model())
    }

    /// Problems with the values, as (key, message); empty when the manifest can be honoured.
    fn problems(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut bad = |key: &str, message: String| p.push((key.to_string(), message));
        let finite_positive = |v: f64| v.is_finite() && v > 0.0;
        let identifier = |s: &str| {
            (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !identifier(&self.name) {
            bad("name", format!("{:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'", self.name));
        }
        if self.version.trim().is_empty() || self.version.len() > 64 || self.version.chars().any(char::is_whitespace) {
            bad("version", format!("{:?} must be 1 to 64 characters without spaces", self.version));
        }
        if self.file.as_os_str().is_empty() {
            bad("file", "must name the ONNX file".into());
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bad("sha256", format!("{:?} is not 64 hexadecimal digits", self.sha256));
        }
        for (key, v) in [("input_name", &self.input_name), ("output_name", &self.output_name)] {
            if v.is_empty() {
                bad(key, "must not be empty".into());
            }
        }
        if !self.spacing_mm.iter().all(|&s| finite_positive(s)) {
            bad("spacing_mm", format!("{:?} must be three positive numbers of mm", self.spacing_mm));
        }
        if self.size_multiple == 0 {
            bad("size_multiple", "must be at least 1".into());
        } else if self.patch_size.iter().any(|&n| n == 0 || n % self.size_multiple != 0) {
            bad(
                "patch_size",
                format!("{:?} must be positive multiples of size_multiple ({})", self.patch_size, self.size_multiple),
            );
        }
        if !(0.0..1.0).contains(&self.overlap) {
            bad("overlap", format!("must be in [0, 1), got {}", self.overlap));
        }
        if self.batch_size == 0 {
            bad("batch_size", "must be at least 1".into());
        }
        if self.mirrored().iter().filter(|&&m| m).count() != self.mirror_axes.len() {
            bad("mirror_axes", format!("{:?} names an axis twice", self.mirror_axes));
        }
        if self.inputs.is_empty() {
            bad("inputs", "at least one [[inputs]] channel is needed".into());
        }
        for (i, c) in self.inputs.iter().enumerate() {
            let [lo, hi] = c.clip;
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                bad(
                    &format!("inputs[{i}].clip"),
                    format!("{:?} must be two numbers, the first below the second", c.clip),
                );
            }
            if !c.offset.is_finite() {
                bad(&format!("inputs[{i}].offset"), format!("must be a number, got {}", c.offset));
            }
            if !(c.scale.is_finite() && c.scale != 0.0) {
                bad(&format!("inputs[{i}].scale"), format!("must be a non-zero number, got {}", c.scale));
            }
        }
        match self.task {
            Task::Segmentation => {
                match self.threshold {
                    None => bad("threshold", "a segmentation model needs a probability threshold".into()),
                    Some(t) if !(t > 0.0 && t < 1.0) => bad("threshold", format!("must be in (0, 1), got {t}")),
                    Some(_) => {}
                }
                match &self.annotation_source {
                    None => bad("annotation_source", "a segmentation model needs its annotation source".into()),
                    Some(s) if s.trim().is_empty() => bad("annotation_source", "must not be empty".into()),
                    Some(_) => {}
                }
                if self.anomaly.is_some() {
                    bad("anomaly", "only an anomaly model has an [anomaly] section".into());
                }
            }
            Task::Anomaly => {
                if !self.mirror_axes.is_empty() {
                    bad(
                        "mirror_axes",
                        "an anomaly model is calibrated on its unmirrored output: only a segmentation model mirrors"
                            .into(),
                    );
                }
                if self.threshold.is_some() {
                    bad("threshold", "only a segmentation model has a threshold".into());
                }
                if self.annotation_source.is_some() {
                    bad("annotation_source", "only a segmentation model has an annotation source".into());
                }
                if self.draw.is_some() {
                    bad("draw", "only a segmentation model draws a mask".into());
                }
                if let Some(i) = self.inputs.iter().position(|c| c.source == Source::AnomalyPrior) {
                    bad(&format!("inputs[{i}].source"), "an anomaly model cannot take its own map as input".into());
                }
                if self.reconstruction_input().is_none() && !self.inputs.is_empty() {
                    bad("inputs", "an anomaly model needs a suv_masked (or suv) input: its normalisation gives the SUV it reconstructs".into());
                }
                match &self.anomaly {
                    None => bad("anomaly", "an anomaly model needs an [anomaly] section".into()),
                    Some(a) => {
                        if !finite_positive(a.mask_threshold_suv) {
                            bad(
                                "anomaly.mask_threshold_suv",
                                format!("must be a positive SUV, got {}", a.mask_threshold_suv),
                            );
                        }
                        if !(a.z_low.is_finite() && a.z_high.is_finite() && a.z_low < a.z_high) {
                            bad(
                                "anomaly.z_high",
                                format!("must be a number above z_low ({}), got {}", a.z_low, a.z_high),
                            );
                        }
                        match (a.prior_z_low, a.prior_z_high) {
                            (None, None) => {}
                            (Some(low), Some(high)) if low.is_finite() && high.is_finite() && low < high => {}
                            (Some(low), Some(high)) => bad(
                                "anomaly.prior_z_high",
                                format!("must be a number above prior_z_low ({low}), got {high}"),
                            ),
                            (low, _) => bad(
                                if low.is_some() { "anomaly.prior_z_high" } else { "anomaly.prior_z_low" },
                                "prior_z_low and prior_z_high go together: give both or neither".into(),
                            ),
                        }
                        if !finite_positive(a.score_volume_ml) {
                            bad(
                                "anomaly.score_volume_ml",
                                format!("must be a positive number of mL, got {}", a.score_volume_ml),
                            );
                        }
                    }
                }
            }
        }
        p
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid segmentation manifest; tests edit its lines.
    pub(crate) const SEGMENTATION: &str = r#"
name = "seg-test"
version = "1.0.0"
task = "segmentation"
file = "seg.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
input_name = "input"
output_name = "output"
spacing_mm = [4.0, 4.0, 4.0]
patch_size = [32, 32, 16]
size_multiple = 16
overlap = 0.5
batch_size = 2
threshold = 0.5
annotation_source = "high-specificity reader"
description = "test"

[[inputs]]
source = "suv"
clip = [0.0, 20.0]
offset = 0.0
scale = 10.0

[[inputs]]
source = "ct_hu"
clip = [-1000.0, 1000.0]
offset = 0.0
scale = 1000.0
"#;

    pub(crate) const ANOMALY: &str = r#"
name = "anomaly-test"
version = "0.1"
task = "anomaly"
file = "anomaly.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
input_name = "input"
output_name = "output"
spacing_mm = [4.0, 4.0, 4.0]
patch_size = [16, 16, 16]
size_multiple = 8
overlap = 0.5
batch_size = 1

[[inputs]]
source = "suv_masked"
clip = [0.0, 20.0]
offset = 0.0
scale = 10.0

[[inputs]]
source = "suv_mask"
clip = [0.0, 1.0]
offset = 0.0
scale = 1.0

[[inputs]]
source = "ct_hu"
clip = [-1000.0, 1000.0]
offset = 0.0
scale = 1000.0

[anomaly]
mask_threshold_suv = 3.0
z_low = 2.0
z_high = 6.0
score_volume_ml = 1.0
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("models/m.model.toml"), text)
    }

    /// The keys the checks complain about.
    fn keys(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ManifestError::Invalid { problems, .. }) => problems.into_iter().map(|(k, _)| k).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn valid_manifests_parse_and_resolve_the_file_beside_the_manifest() {
        let m = parse(SEGMENTATION).unwrap();
        assert_eq!(m.task, Task::Segmentation);
        assert_eq!(m.onnx_path(), Path::new("models/seg.onnx"));
        assert_eq!(m.inputs[1].source, Source::CtHu);
        assert!(!m.needs_anomaly_model());
        let a = parse(ANOMALY).unwrap();
        assert_eq!(a.task.output_channels(), 2);
        assert_eq!(a.reconstruction_input().unwrap().source, Source::SuvMasked);
        assert!(a.needs_anomaly_model());
        // Without prior_z_* the map shares the score's range; with them it has its own.
        let params = a.anomaly.unwrap();
        assert_eq!((params.score_z(), params.prior_z()), ([2.0, 6.0], [2.0, 6.0]));
        let own =
            parse(&ANOMALY.replace("z_high = 6.0", "z_high = 6.0\nprior_z_low = 1.0\nprior_z_high = 3.5")).unwrap();
        let params = own.anomaly.unwrap();
        assert_eq!((params.score_z(), params.prior_z()), ([2.0, 6.0], [1.0, 3.5]));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let e = parse(&SEGMENTATION.replace("overlap = 0.5", "overlap = 0.5\noverlapp = 0.5")).unwrap_err().to_string();
        assert!(e.contains("models/m.model.toml") && e.contains("overlapp"), "{e}");
        let e = parse(&SEGMENTATION.replace("source = \"ct_hu\"", "source = \"mri\"")).unwrap_err().to_string();
        assert!(e.contains("inputs[1].source") && e.contains("mri"), "{e}");
        let e = parse(&SEGMENTATION.replace("batch_size = 2", "batch_size = \"two\"")).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = parse(&SEGMENTATION.replace("scale = 1000.0", "scale = 1000.0\nwindow = 3")).unwrap_err().to_string();
        assert!(e.contains("inputs[1]") && e.contains("window"), "{e}");
        let e =
            parse(&SEGMENTATION.replace("task = \"segmentation\"", "task = \"detection\"")).unwrap_err().to_string();
        assert!(e.contains("task"), "{e}");
        assert!(matches!(parse("name = "), Err(ManifestError::Syntax { .. })));
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let text = SEGMENTATION
            .replace("\"seg-test\"", "\"seg test\"")
            .replace("[4.0, 4.0, 4.0]", "[4.0, 0.0, 4.0]")
            .replace("[32, 32, 16]", "[32, 24, 16]")
            .replace("overlap = 0.5", "overlap = 1.0")
            .replace("batch_size = 2", "batch_size = 0")
            .replace("threshold = 0.5", "threshold = 1.0")
            .replace("clip = [0.0, 20.0]", "clip = [20.0, 0.0]")
            .replace("scale = 10.0", "scale = 0.0")
            .replace("sha256 = \"0000", "sha256 = \"zz00");
        assert_eq!(
            keys(&text),
            [
                "name",
                "sha256",
                "spacing_mm",
                "patch_size",
                "overlap",
                "batch_size",
                "inputs[0].clip",
                "inputs[0].scale",
                "threshold"
            ]
        );
        assert_eq!(keys(&SEGMENTATION.replace("size_multiple = 16", "size_multiple = 0")), ["size_multiple"]);
    }

    #[test]
    fn task_specific_fields_must_match_the_task() {
        let no_threshold = SEGMENTATION
            .replace("threshold = 0.5\n", "")
            .replace("annotation_source = \"high-specificity reader\"\n", "");
        assert_eq!(keys(&no_threshold), ["threshold", "annotation_source"]);
        let with_anomaly = format!(
            "{SEGMENTATION}\n[anomaly]\nmask_threshold_suv = 3.0\nz_low = 2.0\nz_high = 6.0\nscore_volume_ml = 1.0\n"
        );
        assert_eq!(keys(&with_anomaly), ["anomaly"]);
        let anomaly_with_seg_fields =
            ANOMALY.replace("batch_size = 1", "batch_size = 1\nthreshold = 0.5\nannotation_source = \"x\"");
        assert_eq!(keys(&anomaly_with_seg_fields), ["threshold", "annotation_source"]);
        let no_section = &ANOMALY[..ANOMALY.find("[anomaly]").unwrap()];
        assert_eq!(keys(no_section), ["anomaly"]);
        let bad_section = ANOMALY
            .replace("z_high = 6.0", "z_high = 2.0")
            .replace("mask_threshold_suv = 3.0", "mask_threshold_suv = 0.0")
            .replace("score_volume_ml = 1.0", "score_volume_ml = -1.0");
        assert_eq!(keys(&bad_section), ["anomaly.mask_threshold_suv", "anomaly.z_high", "anomaly.score_volume_ml"]);
        let half_prior = ANOMALY.replace("z_high = 6.0", "z_high = 6.0\nprior_z_low = 1.0");
        assert_eq!(keys(&half_prior), ["anomaly.prior_z_high"]);
        let inverted_prior = ANOMALY.replace("z_high = 6.0", "z_high = 6.0\nprior_z_low = 3.0\nprior_z_high = 1.0");
        assert_eq!(keys(&inverted_prior), ["anomaly.prior_z_high"]);
        let own_prior = ANOMALY.replace("source = \"suv_mask\"", "source = \"anomaly_prior\"");
        assert_eq!(keys(&own_prior), ["inputs[1].source"]);
        let nothing_to_reconstruct = ANOMALY.replace("source = \"suv_masked\"", "source = \"ct_hu\"");
        assert_eq!(keys(&nothing_to_reconstruct), ["inputs"]);
    }

    #[test]
    fn mirror_axes_are_a_segmentation_models_distinct_axes() {
        let mirror =
            |text: &str, axes: &str| text.replace("batch_size = ", &format!("mirror_axes = {axes}\nbatch_size = "));
        let m = parse(&mirror(SEGMENTATION, r#"["x", "z"]"#)).unwrap();
        assert_eq!(m.mirrored(), [true, false, true]);
        assert_eq!(parse(SEGMENTATION).unwrap().mirrored(), [false; 3]);
        assert_eq!(keys(&mirror(SEGMENTATION, r#"["x", "x"]"#)), ["mirror_axes"]);
        assert_eq!(keys(&mirror(ANOMALY, r#"["x"]"#)), ["mirror_axes"]);
        let e = parse(&mirror(SEGMENTATION, r#"["w"]"#)).unwrap_err().to_string();
        assert!(e.contains("mirror_axes") && e.contains('w'), "{e}");
    }

    #[test]
    fn draw_is_a_segmentation_models_and_defaults_to_the_threshold() {
        let draw = |text: &str, how: &str| text.replace("batch_size = ", &format!("draw = {how}\nbatch_size = "));
        assert_eq!(parse(SEGMENTATION).unwrap().draw(), Draw::Threshold);
        assert_eq!(parse(&draw(SEGMENTATION, r#""expected_volume""#)).unwrap().draw(), Draw::ExpectedVolume);
        assert_eq!(parse(&draw(SEGMENTATION, r#""threshold""#)).unwrap().draw(), Draw::Threshold);
        assert_eq!(parse(&draw(SEGMENTATION, r#""ct_refined""#)).unwrap().draw(), Draw::CtRefined);
        assert_eq!(keys(&draw(ANOMALY, r#""threshold""#)), ["draw"]);
        let e = parse(&draw(SEGMENTATION, r#""largest""#)).unwrap_err().to_string();
        assert!(e.contains("draw") && e.contains("largest"), "{e}");
    }

    #[test]
    fn normalisation_clips_then_shifts_and_scales() {
        let c = InputChannel { source: Source::CtHu, clip: [-1000.0, 1000.0], offset: 40.0, scale: 400.0 };
        assert_eq!(c.normalise(440.0), 1.0);
        assert_eq!(c.normalise(5000.0), (1000.0 - 40.0) / 400.0);
        assert_eq!(c.normalise(-3000.0), (-1000.0 - 40.0) / 400.0);
        assert_eq!(c.air(), (-1000.0 - 40.0) / 400.0);
        let s = InputChannel { source: Source::Suv, clip: [0.0, 20.0], offset: 0.0, scale: 10.0 };
        assert_eq!(s.normalise(25.0), 2.0);
        assert_eq!(s.air(), 0.0);
    }
}
