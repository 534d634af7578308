//! Deterministic UIDs for the produced objects: `2.25.<128 bits of SHA-256>` of a digest of the
//! inputs (both series UIDs, every SOP Instance UID in slice order) and the algorithm version.
//! The same study through the same version gives the same UIDs, so a re-run replaces what a
//! PACS holds; a new version or a changed input gives new ones.

use dicom_dictionary_std::tags;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::EncodeError;
use crate::assemble::{self, Series};
use crate::phantom::dicom::uid;

/// The series and instance UIDs of everything [`encode`](super::encode) produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputUids {
    /// Hex SHA-256 of the inputs and the algorithm version; every other UID derives from it.
    pub input_digest: String,
    pub seg_series: String,
    pub seg_instance: String,
    pub sr_series: String,
    pub sr_instance: String,
    pub mip_series: String,
    pub mip_instance: String,
    pub dimension_organization: String,
}

impl OutputUids {
    pub fn derive(ct: &Series, pet: &Series, algorithm_version: &str) -> Result<Self, EncodeError> {
        let mut h = Sha256::new();
        for (name, series) in [("CT", ct), ("PT", pet)] {
            h.update(name.as_bytes());
            h.update([0u8]);
            let first =
                series.headers.first().ok_or_else(|| EncodeError::Input(format!("the {name} has no headers")))?;
            let series_uid = assemble::text(first, tags::SERIES_INSTANCE_UID)
                .ok_or_else(|| EncodeError::Input(format!("the {name} has no Series Instance UID")))?;
            h.update(series_uid.as_bytes());
            h.update([0u8]);
            for (index, header) in series.headers.iter().enumerate() {
                let sop = assemble::text(header, tags::SOP_INSTANCE_UID)
                    .ok_or(EncodeError::MissingAttribute { index, attribute: "SOP Instance UID (0008,0018)" })?;
                h.update(sop.as_bytes());
                h.update([0u8]);
            }
        }
        h.update(algorithm_version.as_bytes());
        Ok(Self::from_digest(hex::encode(h.finalize())))
    }

    fn from_digest(input_digest: String) -> Self {
        let u = |role: &str| derived(&input_digest, role);
        Self {
            seg_series: u("seg/series"),
            seg_instance: u("seg/instance"),
            sr_series: u("sr/series"),
            sr_instance: u("sr/instance"),
            mip_series: u("mip/series"),
            mip_instance: u("mip/instance"),
            dimension_organization: u("seg/dimension-organization"),
            input_digest,
        }
    }

    /// The Tracking UID of a lesion: stable across re-runs of the same input and version.
    pub fn tracking_uid(&self, lesion_label: u32) -> String {
        derived(&self.input_digest, &format!("lesion/{lesion_label}"))
    }

    /// Device Observer UID of the SR: one per algorithm version, whatever the study.
    pub fn device_observer(algorithm_version: &str) -> String {
        uid(&["petct-node device", algorithm_version])
    }
}

fn derived(digest: &str, role: &str) -> String {
    uid(&["petct-node encode", digest, role])
}

pub(super) fn implementation_class_uid() -> String {
    uid(&["petct-node implementation"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Uid;

    #[test]
    fn uids_are_valid_distinct_and_follow_the_digest() {
        let a = OutputUids::from_digest("ab".repeat(32));
        let all = [
            &a.seg_series,
            &a.seg_instance,
            &a.sr_series,
            &a.sr_instance,
            &a.mip_series,
            &a.mip_instance,
            &a.dimension_organization,
        ];
        for u in all {
            assert!(Uid::parse(u).is_ok(), "{u}");
            assert!(u.starts_with("2.25."), "{u}");
        }
        let mut unique: Vec<_> = all.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        assert_eq!(a, OutputUids::from_digest("ab".repeat(32)));
        let b = OutputUids::from_digest("cd".repeat(32));
        assert_ne!(a.seg_instance, b.seg_instance);
        assert_ne!(a.tracking_uid(1), a.tracking_uid(2));
        assert_eq!(a.tracking_uid(1), OutputUids::from_digest("ab".repeat(32)).tracking_uid(1));
        assert!(Uid::parse(&OutputUids::device_observer("petct-node 0.1.0")).is_ok());
    }
}
