//! petct-node: a DICOM-native PET/CT AI node. Modules follow the data flow of DESIGN.md:
//! `dimse` receives, `ingest` checks and indexes into `store` and `db`, `server` wires them;
//! `phantom` writes synthetic PET/CT studies for tests, demos and training.

pub mod calibrate;
pub mod cli;
pub mod config;
pub mod db;
pub mod dimse;
pub mod ids;
pub mod ingest;
pub mod pet_header;
pub mod phantom;
pub mod server;
pub mod store;
