//! petct-node: a DICOM-native PET/CT AI node. Modules follow the data flow of DESIGN.md:
//! `dimse` receives, `ingest` checks and indexes into `store` and `db`, `server` wires them;
//! `assemble` turns a stored series into a `volume`, `calibrate` gives SUV (from the attributes
//! `pet_header` reads), `geometry` registers and resamples, `infer` runs the learned models
//! (ONNX), `segment` finds lesions, `quantify` measures them and `encode` writes the results as
//! SEG, SR and a MIP; `pipeline` runs those stages. `worker` claims jobs from the `queue` and
//! runs `pipeline`; `delivery` sends the results with the `dimse` SCU. `phantom` writes
//! synthetic PET/CT studies for tests, demos and training; `demo` runs the whole job on one
//! machine; `evaluate` scores segmentations against reference masks.

pub mod assemble;
pub mod calibrate;
pub mod cli;
pub mod codecs;
pub mod config;
pub mod db;
pub mod delivery;
pub mod demo;
pub mod dimse;
pub mod encode;
pub mod evaluate;
pub mod geometry;
pub mod ids;
pub mod infer;
pub mod ingest;
pub mod inspect;
pub mod nifti;
pub mod pairing;
pub mod pet_header;
pub mod phantom;
pub mod pipeline;
pub mod quantify;
pub mod queue;
pub mod segment;
pub mod server;
pub mod store;
pub mod volume;
pub mod worker;
