//! petct-node: a DICOM-native PET/CT AI node. Modules follow the data flow of DESIGN.md:
//! `dimse` receives, `ingest` checks and indexes into `store` and `db`, `server` wires them;
//! `assemble` turns a stored series into a `volume`, `calibrate` gives SUV (from the attributes
//! `pet_header` reads), `geometry` resamples; `phantom` writes synthetic PET/CT studies for
//! tests, demos and training.

pub mod assemble;
pub mod calibrate;
pub mod cli;
pub mod config;
pub mod db;
pub mod dimse;
pub mod geometry;
pub mod ids;
pub mod ingest;
pub mod inspect;
pub mod nifti;
pub mod pairing;
pub mod pet_header;
pub mod phantom;
pub mod pipeline;
pub mod server;
pub mod store;
pub mod volume;
