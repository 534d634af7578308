//! The DICOM protocol layer: an async SCP for C-ECHO and C-STORE, and a C-STORE SCU. It knows
//! nothing of storage or jobs: each received instance goes to a [`StoreHandler`] (implemented
//! by `ingest`), and `delivery` calls [`scu::store_files`].

pub mod command;
pub mod scp;
pub mod scu;

pub use command::Status;
pub use scp::{Scp, ScpSettings};

use std::future::Future;

use crate::ids::AeTitle;

/// Storage SOP classes this node accepts: what a PET/CT node receives, plus SEG and SR.
pub const STORAGE_SOP_CLASSES: &[(&str, &str)] = &[
    ("1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.2.1", "Enhanced CT Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.2.2", "Legacy Converted Enhanced CT Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.128", "Positron Emission Tomography Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.130", "Enhanced PET Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.128.1", "Legacy Converted Enhanced PET Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive 3D SR Storage"),
];

/// What the node itself produces (SEG, TID 1500 SR, MIP secondary capture): the classes a
/// results receiver such as the demo's stand-in PACS accepts.
pub const RESULT_SOP_CLASSES: &[(&str, &str)] = &[
    ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive 3D SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage"),
];

pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

/// Every transfer syntax DCMTK's storescu can propose for images (`-xi -xe -xb -xd -xs -xy -xx
/// -xv -xw -xt -xu -xr`) plus JPEG process 14. Received data sets are stored as they came.
pub const TRANSFER_SYNTAXES: &[(&str, &str)] = &[
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)"),
    ("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical (Process 14)"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless, First-Order Prediction (Process 14 SV1)"),
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Lossy (Near-Lossless)"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 (Lossless Only)"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
];

/// One C-STORE as it came off the wire.
#[derive(Debug)]
pub struct StoreRequest {
    pub calling_ae: AeTitle,
    /// Abstract syntax of the presentation context the data set came on.
    pub context_sop_class_uid: String,
    /// Transfer syntax of that presentation context: the encoding of `data_set`.
    pub transfer_syntax_uid: String,
    /// Affected SOP Class/Instance UID from the command, unvalidated.
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    /// The data set bytes exactly as received (no file meta information).
    pub data_set: Vec<u8>,
}

/// What the server does with received instances. The returned status goes into the
/// C-STORE-RSP as it is, so Success must only come back once the instance is durable.
pub trait StoreHandler: Send + Sync + 'static {
    fn store(&self, request: StoreRequest) -> impl Future<Output = Status> + Send;
}
