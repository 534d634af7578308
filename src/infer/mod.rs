//! Learned models (docs/models.md): manifests checked against their ONNX files at start-up,
//! channels normalised as each manifest says, sliding-window inference with Gaussian blending
//! on ONNX Runtime, and the anomaly model's output turned into a probability map and a study
//! score. Everything here works on volumes already on the model's grid (`geometry` builds the
//! grid and resamples the channels onto it).

pub mod draw;
pub mod manifest;
pub mod session;
pub mod shape;
pub mod stage;
pub mod window;

use std::path::PathBuf;

use rayon::prelude::*;

pub use manifest::{AnomalyParams, InputChannel, Manifest, ManifestError, Source, Task};
pub use session::{Device, InferenceSettings, OrtSession};
use window::Mirrored;
pub use window::{Predictor, Tensor, WindowSpec, sliding_window};

use crate::quantify::Mask;
use crate::volume::Volume;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Library(String),
    #[error("model `{model}`: {message}")]
    Device { model: String, message: String },
    #[error("model `{model}` ({file}): building the ONNX Runtime session: {message}")]
    Session { model: String, file: PathBuf, message: String },
    #[error("model `{model}` ({file}): the ONNX file does not match its manifest: {message}")]
    Interface { model: String, file: PathBuf, message: String },
    /// Problems with the configured set of models, as (configuration key, message).
    #[error("{}", problems.iter().map(|(k, m)| format!("key `{k}`: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid { problems: Vec<(String, String)> },
    #[error("model inputs: {0}")]
    Input(String),
    #[error("running the network: {0}")]
    Run(String),
    #[error("model `{model}`: {source}")]
    Model { model: String, source: Box<InferError> },
}

impl InferError {
    /// Never: loading errors are configuration, and a network that fails on a volume fails on it
    /// again.
    pub fn is_retryable(&self) -> bool {
        false
    }

    fn in_model(self, model: &str) -> Self {
        InferError::Model { model: model.to_string(), source: Box::new(self) }
    }
}

/// The physical channels on one model's grid: SUVbw (g/mL), CT (HU) and, for models that take
/// them, the anomaly model's probability map resampled onto this grid and the CT's shape
/// (`shape::ct_blob`).
#[derive(Debug, Clone, Copy)]
pub struct Channels<'a> {
    pub suv: &'a Volume<f32>,
    pub ct_hu: &'a Volume<f32>,
    pub anomaly_prior: Option<&'a Volume<f32>>,
    pub ct_blob: Option<&'a Volume<f32>>,
}

/// The anomaly model's result on its grid.
#[derive(Debug, Clone)]
pub struct AnomalyMap {
    /// Voxel anomaly probability, 0..1, 0 outside the body.
    pub probability: Volume<f32>,
    /// Study-level abnormality score: the mean probability of the `score_volume_ml` of the body
    /// with the highest probability.
    pub score: f64,
}

/// The network input of `inputs` from `channels`: each channel `(clamp(x, lo, hi) − offset) /
/// scale` of its source; `suv_masked` is `suv` with voxels above `mask_threshold_suv` set to 0,
/// `suv_mask` is 1 there and 0 elsewhere. Pad values are each channel's normalised air.
pub fn normalise(
    inputs: &[InputChannel],
    channels: &Channels,
    mask_threshold_suv: Option<f32>,
) -> Result<Tensor, InferError> {
    let dims = channels.suv.geometry().dims;
    if channels.ct_hu.geometry().dims != dims {
        return Err(InferError::Input(format!(
            "CT grid {:?} differs from the SUV grid {dims:?}",
            channels.ct_hu.geometry().dims
        )));
    }
    for (name, v) in [("anomaly prior", channels.anomaly_prior), ("ct_blob", channels.ct_blob)] {
        if let Some(v) = v.filter(|v| v.geometry().dims != dims) {
            return Err(InferError::Input(format!(
                "{name} grid {:?} differs from the SUV grid {dims:?}",
                v.geometry().dims
            )));
        }
    }
    let mut sources: Vec<(&InputChannel, &[f32])> = Vec::with_capacity(inputs.len());
    for c in inputs {
        let data = match c.source {
            Source::Suv | Source::SuvMasked | Source::SuvMask => channels.suv.data(),
            Source::CtHu => channels.ct_hu.data(),
            Source::AnomalyPrior => channels
                .anomaly_prior
                .ok_or_else(|| InferError::Input("the model takes anomaly_prior but none was given".into()))?
                .data(),
            Source::CtBlob => channels
                .ct_blob
                .ok_or_else(|| InferError::Input("the model takes ct_blob but none was given".into()))?
                .data(),
        };
        if matches!(c.source, Source::SuvMasked | Source::SuvMask) && mask_threshold_suv.is_none() {
            return Err(InferError::Input(format!(
                "{} needs the anomaly model's mask_threshold_suv",
                c.source.as_str()
            )));
        }
        sources.push((c, data));
    }
    let [nx, ny, nz] = dims;
    let plane = nx * ny;
    let threshold = mask_threshold_suv.unwrap_or(f32::INFINITY);
    let mut data = vec![0f32; inputs.len() * plane * nz];
    data.par_chunks_mut(plane).enumerate().for_each(|(cz, out)| {
        let (c, z) = (cz / nz, cz % nz);
        let (channel, source) = sources[c];
        let from = &source[z * plane..(z + 1) * plane];
        let value: fn(f32, f32) -> f32 = match channel.source {
            Source::SuvMasked => |x, t| if x > t { 0.0 } else { x },
            Source::SuvMask => |x, t| if x > t { 1.0 } else { 0.0 },
            Source::Suv | Source::CtHu | Source::AnomalyPrior | Source::CtBlob => |x, _| x,
        };
        for (o, &x) in out.iter_mut().zip(from) {
            *o = channel.normalise(value(x, threshold));
        }
    });
    Ok(Tensor { data, channels: inputs.len(), dims: [nz, ny, nx], pad: inputs.iter().map(InputChannel::air).collect() })
}

/// The voxel anomaly probability: `z = (x − mean) · exp(−logvar / 2)`, `p = clamp((z − z_low) /
/// (z_high − z_low), 0, 1)` inside the body, 0 outside. `x` is the normalised SUV; `[z_low,
/// z_high]` is [`AnomalyParams::score_z`] or [`AnomalyParams::prior_z`].
pub fn anomaly_probability(x: &[f32], mean: &[f32], logvar: &[f32], body: &[u8], [low, high]: [f64; 2]) -> Vec<f32> {
    let span = high - low;
    x.par_iter()
        .zip(mean)
        .zip(logvar)
        .zip(body)
        .map(|(((&x, &m), &lv), &inside)| {
            let z = (f64::from(x) - f64::from(m)) * (-f64::from(lv) / 2.0).exp();
            // A zero residual over a zero variance is no evidence of anything.
            if inside == 0 || z.is_nan() { 0.0 } else { ((z - low) / span).clamp(0.0, 1.0) as f32 }
        })
        .collect()
}

/// The study score: the mean of the highest probabilities within the body over
/// `score_volume_ml` (at least one voxel, at most the whole body); 0 for an empty body.
pub fn anomaly_score(probability: &[f32], body: &[u8], voxel_volume_ml: f64, score_volume_ml: f64) -> f64 {
    let mut inside: Vec<f32> = probability.iter().zip(body).filter(|(_, b)| **b != 0).map(|(p, _)| *p).collect();
    if inside.is_empty() {
        return 0.0;
    }
    let count = ((score_volume_ml / voxel_volume_ml).round() as usize).clamp(1, inside.len());
    inside.select_nth_unstable_by(count - 1, |a, b| b.total_cmp(a));
    inside[..count].iter().map(|&p| f64::from(p)).sum::<f64>() / count as f64
}

/// One configured model: its manifest and its session.
#[derive(Debug)]
pub struct Model {
    manifest: Manifest,
    session: OrtSession,
    /// The anomaly model's `mask_threshold_suv`, for `suv_masked` and `suv_mask` channels.
    mask_threshold_suv: Option<f32>,
}

impl Model {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Where it runs.
    pub fn device(&self) -> Device {
        self.session.device()
    }

    /// The network input from the channels, which must lie on a grid of the manifest's spacing.
    pub fn normalise(&self, channels: &Channels) -> Result<Tensor, InferError> {
        let spacing = channels.suv.geometry().spacing_mm;
        let want = self.manifest.spacing_mm;
        if spacing.iter().zip(want).any(|(s, w)| (s - w).abs() > 1e-3 * w) {
            return Err(InferError::Input(format!("channels on a {spacing:?} mm grid; the model expects {want:?} mm"))
                .in_model(self.name()));
        }
        normalise(&self.manifest.inputs, channels, self.mask_threshold_suv).map_err(|e| e.in_model(self.name()))
    }

    /// The network's output `[K, D, H, W]` over the whole input, window by window.
    pub fn predict(&mut self, input: &Tensor) -> Result<Vec<f32>, InferError> {
        let m = &self.manifest;
        let spec = WindowSpec {
            patch: m.patch_size,
            size_multiple: m.size_multiple,
            overlap: m.overlap,
            batch_size: m.batch_size,
            fits_grid: m.patch_fits_grid,
            out_channels: m.task.output_channels(),
        };
        let mirrored = m.mirrored();
        if mirrored.contains(&true) {
            sliding_window(&mut Mirrored::new(&mut self.session, mirrored), input, &spec)
        } else {
            sliding_window(&mut self.session, input, &spec)
        }
        .map_err(|e| e.in_model(&m.name))
    }

    /// A segmentation model's foreground probability (sigmoid of the logit) on the grid of the
    /// channels.
    pub fn segment(&mut self, channels: &Channels) -> Result<Volume<f32>, InferError> {
        self.require_task(Task::Segmentation)?;
        let input = self.normalise(channels)?;
        let mut p = self.predict(&input)?;
        p.par_iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
        Volume::new(channels.suv.geometry().clone(), p)
            .map_err(|e| InferError::Run(e.to_string()).in_model(self.name()))
    }

    /// The anomaly model's probability map and study score; `body` (on the same grid) limits
    /// both.
    pub fn anomaly(&mut self, channels: &Channels, body: &Mask) -> Result<AnomalyMap, InferError> {
        self.require_task(Task::Anomaly)?;
        let geometry = channels.suv.geometry();
        if body.geometry().dims != geometry.dims {
            return Err(InferError::Input(format!(
                "body mask grid {:?} differs from the SUV grid {:?}",
                body.geometry().dims,
                geometry.dims
            ))
            .in_model(self.name()));
        }
        let (Some(params), Some(reconstructed)) = (&self.manifest.anomaly, self.manifest.reconstruction_input()) else {
            return Err(InferError::Input("the manifest has no [anomaly] section".into()).in_model(self.name()));
        };
        let (params, reconstructed) = (params.clone(), reconstructed.clone());
        let input = self.normalise(channels)?;
        let out = self.predict(&input)?;
        let x: Vec<f32> = channels.suv.data().par_iter().map(|&v| reconstructed.normalise(v)).collect();
        let (mean, logvar) = out.split_at(x.len());
        let p = anomaly_probability(&x, mean, logvar, body.data(), params.score_z());
        let voxel_volume_ml = geometry.spacing_mm.iter().product::<f64>() / 1000.0;
        let score = anomaly_score(&p, body.data(), voxel_volume_ml, params.score_volume_ml);
        // The map has a calibration of its own when the manifest gives one.
        let p = if params.prior_z() == params.score_z() {
            p
        } else {
            anomaly_probability(&x, mean, logvar, body.data(), params.prior_z())
        };
        let probability = Volume::new(geometry.clone(), p).map_err(|e| InferError::Run(e.to_string()))?;
        Ok(AnomalyMap { probability, score })
    }

    fn require_task(&self, task: Task) -> Result<(), InferError> {
        if self.manifest.task == task {
            Ok(())
        } else {
            Err(InferError::Input(format!("is a {} model, not a {} model", self.manifest.task.as_str(), task.as_str()))
                .in_model(self.name()))
        }
    }
}

/// The configured models, each with its own session (one `Models` per worker).
#[derive(Debug, Default)]
pub struct Models {
    models: Vec<Model>,
}

impl Models {
    /// Loads and checks every manifest, then builds and checks a session per model. Everything
    /// wrong is reported at once, each problem with its configuration key (`models[i].manifest`,
    /// `inference.library`, `inference.device`). With no models the library is not needed.
    pub fn load(settings: &InferenceSettings, manifests: &[PathBuf]) -> Result<Self, InferError> {
        // Problems per model (reported in configuration order), then those of `[inference]`.
        let mut of_model: Vec<Vec<String>> = vec![Vec::new(); manifests.len()];
        let mut of_inference: Vec<(String, String)> = Vec::new();
        let loaded: Vec<Option<Manifest>> = manifests
            .iter()
            .zip(&mut of_model)
            .map(|(path, problems)| Manifest::load(path).map_err(|e| problems.push(e.to_string())).ok())
            .collect();
        let anomaly: Vec<usize> =
            (0..loaded.len()).filter(|&i| loaded[i].as_ref().is_some_and(|m| m.task == Task::Anomaly)).collect();
        for (i, m) in loaded.iter().enumerate() {
            let Some(m) = m else { continue };
            if let Some(first) = loaded[..i].iter().position(|o| o.as_ref().is_some_and(|o| o.name == m.name)) {
                of_model[i].push(format!("name `{}` is already the name of models[{first}]", m.name));
            }
            if m.task == Task::Anomaly && anomaly[0] != i {
                of_model[i]
                    .push(format!("a second anomaly model (models[{}] is one); at most one is allowed", anomaly[0]));
            }
            if m.task == Task::Segmentation && m.needs_anomaly_model() && anomaly.is_empty() {
                let sources: Vec<&str> =
                    m.inputs.iter().filter(|c| c.source.needs_anomaly_model()).map(|c| c.source.as_str()).collect();
                of_model[i].push(format!(
                    "model `{}` takes {} but no anomaly model is configured",
                    m.name,
                    sources.join(", ")
                ));
            }
        }
        let mask_threshold_suv = anomaly
            .first()
            .and_then(|&i| loaded[i].as_ref())
            .and_then(|m| m.anomaly.as_ref())
            .map(|a| a.mask_threshold_suv as f32);
        let mut models = Vec::with_capacity(manifests.len());
        if !manifests.is_empty() {
            match settings.library_path() {
                Err(e) => of_inference.push(("inference.library".into(), e.to_string())),
                Ok(_) => {
                    for (i, m) in loaded.into_iter().enumerate() {
                        let Some(manifest) = m else { continue };
                        match OrtSession::new(&manifest, settings) {
                            Ok(session) => models.push(Model { manifest, session, mask_threshold_suv }),
                            Err(e @ (InferError::Library(_) | InferError::Device { .. })) => {
                                let key = if matches!(e, InferError::Library(_)) {
                                    "inference.library"
                                } else {
                                    "inference.device"
                                };
                                if !of_inference.iter().any(|(k, _)| k == key) {
                                    of_inference.push((key.into(), e.to_string()));
                                }
                            }
                            Err(e) => of_model[i].push(e.to_string()),
                        }
                    }
                }
            }
        }
        let mut problems: Vec<(String, String)> = of_model
            .into_iter()
            .enumerate()
            .flat_map(|(i, messages)| messages.into_iter().map(move |m| (format!("models[{i}].manifest"), m)))
            .collect();
        problems.extend(of_inference);
        if problems.is_empty() { Ok(Self { models }) } else { Err(InferError::Invalid { problems }) }
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// In configuration order.
    pub fn iter(&self) -> std::slice::Iter<'_, Model> {
        self.models.iter()
    }

    /// The anomaly model, if one is configured.
    pub fn anomaly(&mut self) -> Option<&mut Model> {
        self.models.iter_mut().find(|m| m.manifest.task == Task::Anomaly)
    }

    /// The segmentation models, in configuration order.
    pub fn segmentation(&mut self) -> impl Iterator<Item = &mut Model> {
        self.models.iter_mut().filter(|m| m.manifest.task == Task::Segmentation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    fn volume(dims: [usize; 3], data: Vec<f32>) -> Volume<f32> {
        let geometry = Geometry {
            dims,
            spacing_mm: [4.0, 4.0, 4.0],
            origin_mm: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        };
        Volume::new(geometry, data).unwrap()
    }

    fn channel(source: Source, clip: [f64; 2], offset: f64, scale: f64) -> InputChannel {
        InputChannel { source, clip, offset, scale }
    }

    #[test]
    fn normalisation_matches_hand_computed_values() {
        let suv = volume([2, 1, 2], vec![0.0, 2.5, 5.0, 40.0]);
        let ct = volume([2, 1, 2], vec![-2000.0, 0.0, 400.0, 1500.0]);
        let prior = volume([2, 1, 2], vec![0.0, 0.25, 0.5, 1.0]);
        let inputs = [
            channel(Source::Suv, [0.0, 20.0], 0.0, 10.0),
            channel(Source::CtHu, [-1000.0, 1000.0], -200.0, 500.0),
            channel(Source::AnomalyPrior, [0.0, 1.0], 0.5, 0.5),
        ];
        let channels = Channels { suv: &suv, ct_hu: &ct, anomaly_prior: Some(&prior), ct_blob: None };
        let t = normalise(&inputs, &channels, None).unwrap();
        assert_eq!(t.dims, [2, 1, 2]);
        assert_eq!(t.channels, 3);
        #[rustfmt::skip]
        assert_eq!(t.data, [
            0.0, 0.25, 0.5, 2.0,          // SUV / 10, clipped at 20
            -1.6, 0.4, 1.2, 2.4,          // (HU + 200) / 500, clipped to -1000..1000
            -1.0, -0.5, 0.0, 1.0,         // (p - 0.5) / 0.5
        ]);
        // Padding is air: SUV 0, -1000 HU, p 0.
        assert_eq!(t.pad, [0.0, -1.6, -1.0]);
    }

    #[test]
    fn suv_masked_and_suv_mask_change_only_the_voxels_above_the_threshold() {
        let values = vec![0.5, 2.9, 3.0, 3.1, 8.0, 1.0];
        let suv = volume([3, 2, 1], values.clone());
        let ct = volume([3, 2, 1], vec![0.0; 6]);
        let inputs = [
            channel(Source::SuvMasked, [0.0, 20.0], 0.0, 1.0),
            channel(Source::SuvMask, [0.0, 1.0], 0.0, 1.0),
            channel(Source::Suv, [0.0, 20.0], 0.0, 1.0),
        ];
        let channels = Channels { suv: &suv, ct_hu: &ct, anomaly_prior: None, ct_blob: None };
        let t = normalise(&inputs, &channels, Some(3.0)).unwrap();
        assert_eq!(&t.data[..6], [0.5, 2.9, 3.0, 0.0, 0.0, 1.0]);
        assert_eq!(&t.data[6..12], [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
        assert_eq!(&t.data[12..], values);
        let e = normalise(&inputs, &channels, None).unwrap_err().to_string();
        assert!(e.contains("suv_masked") && e.contains("mask_threshold_suv"), "{e}");
    }

    #[test]
    fn channels_on_different_grids_or_a_missing_prior_are_refused() {
        let suv = volume([2, 2, 2], vec![0.0; 8]);
        let ct = volume([2, 2, 1], vec![0.0; 4]);
        let inputs = [channel(Source::Suv, [0.0, 20.0], 0.0, 10.0)];
        assert!(
            normalise(&inputs, &Channels { suv: &suv, ct_hu: &ct, anomaly_prior: None, ct_blob: None }, None).is_err()
        );
        let prior = [channel(Source::AnomalyPrior, [0.0, 1.0], 0.0, 1.0)];
        let e = normalise(&prior, &Channels { suv: &suv, ct_hu: &suv, anomaly_prior: None, ct_blob: None }, None)
            .unwrap_err();
        assert!(e.to_string().contains("anomaly_prior"), "{e}");
    }

    const Z: [f64; 2] = [2.0, 6.0];

    #[test]
    fn anomaly_probability_matches_hand_computed_values() {
        // logvar = ln 4: sigma 2, so z = (x - mean) / 2.
        let lv = 4f32.ln();
        let x = [1.0, 5.0, 9.0, 13.0, 20.0, 9.0, 0.0];
        let mean = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0];
        let logvar = [lv, lv, lv, lv, lv, 0.0, lv];
        let body = [1, 1, 1, 1, 1, 1, 1];
        let p = anomaly_probability(&x, &mean, &logvar, &body, Z);
        // z:          0    2    4     6    9.5  8 (sigma 1)  -2.5
        let want = [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0];
        for (g, w) in p.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{p:?}");
        }
        // z = 3 -> p = 0.25; outside the body 0.
        let p = anomaly_probability(&[7.0, 7.0], &[1.0, 1.0], &[lv, lv], &[1, 0], Z);
        assert!((p[0] - 0.25).abs() < 1e-6 && p[1] == 0.0, "{p:?}");
        // No residual and no variance: no evidence.
        assert_eq!(anomaly_probability(&[1.0], &[1.0], &[-1e6], &[1], Z), [0.0]);
    }

    #[test]
    fn the_score_is_the_mean_of_the_most_anomalous_volume_of_the_body() {
        // 4 mm voxels: 0.064 mL; 0.128 mL is the two highest body voxels.
        let p = [0.9, 1.0, 0.2, 0.6, 0.0, 0.8];
        let body = [0, 1, 1, 1, 1, 1];
        assert!((anomaly_score(&p, &body, 0.064, 0.128) - 0.9).abs() < 1e-6);
        // Less than one voxel: the hottest voxel; more than the body: the whole body.
        assert!((anomaly_score(&p, &body, 0.064, 0.01) - 1.0).abs() < 1e-6);
        assert!((anomaly_score(&p, &body, 0.064, 100.0) - 0.52).abs() < 1e-6);
        assert_eq!(anomaly_score(&p, &[0; 6], 0.064, 1.0), 0.0);
    }

    #[test]
    fn loading_no_models_needs_no_library() {
        let settings = InferenceSettings { library: Some("/nonexistent.so".into()), ..Default::default() };
        assert!(Models::load(&settings, &[]).unwrap().is_empty());
        let e = Models::load(&settings, &["/nonexistent/m.model.toml".into()]).unwrap_err();
        let InferError::Invalid { problems } = e else { panic!("{e}") };
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["models[0].manifest", "inference.library"]);
        assert!(problems[0].1.contains("/nonexistent/m.model.toml"), "{problems:?}");
    }
}
