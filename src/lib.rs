//! petct-node: a DICOM-native PET/CT AI node. See DESIGN.md for the data flow.
pub mod phantom;
