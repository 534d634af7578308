//! Identifiers parsed once at the edge: DICOM UIDs and AE titles.

use std::fmt;

/// Why a UID or AE title was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("UID is empty")]
    EmptyUid,
    #[error("UID is {len} characters long, more than 64")]
    UidTooLong { len: usize },
    #[error("UID {uid:?} is not dot-separated decimal components without leading zeros")]
    MalformedUid { uid: String },
    #[error("AE title is empty")]
    EmptyAeTitle,
    #[error("AE title {ae:?} is longer than 16 characters")]
    AeTitleTooLong { ae: String },
    #[error("AE title {ae:?} contains a backslash or control character")]
    MalformedAeTitle { ae: String },
}

/// A DICOM UID (PS3.5 9.1): `[0-9.]`, at most 64 characters, components without leading zeros.
/// Safe to use as a file name: it can hold neither `/` nor an empty or `..` component.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

impl Uid {
    /// Parses a UID as it comes off the wire: trailing NUL or space padding is removed.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let s = raw.trim_end_matches(['\0', ' ']);
        if s.is_empty() {
            return Err(IdError::EmptyUid);
        }
        if s.len() > 64 {
            return Err(IdError::UidTooLong { len: s.len() });
        }
        let well_formed = s
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')));
        if !well_formed {
            return Err(IdError::MalformedUid { uid: s.to_string() });
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Application Entity title (PS3.5 VR AE): 1-16 characters, no backslash or control
/// characters, leading and trailing spaces not significant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AeTitle(String);

impl AeTitle {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let s = raw.trim_matches([' ', '\0']);
        if s.is_empty() {
            return Err(IdError::EmptyAeTitle);
        }
        if s.len() > 16 {
            return Err(IdError::AeTitleTooLong { ae: s.to_string() });
        }
        if s.chars().any(|c| c == '\\' || c.is_control() || !c.is_ascii()) {
            return Err(IdError::MalformedAeTitle { ae: s.to_string() });
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_that_could_escape_a_path_are_refused() {
        for bad in ["1.2/../../x", "..", "1..2", ".1", "1.", "1.02", "1.2.a", "1.2 3", "/etc"] {
            assert!(Uid::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(Uid::parse(&format!("1.{}", "2".repeat(62))).is_ok());
        assert_eq!(Uid::parse(&format!("1.{}", "2".repeat(63))), Err(IdError::UidTooLong { len: 65 }));
    }

    #[test]
    fn uid_padding_is_removed() {
        assert_eq!(Uid::parse("1.2.840.10008.1.1\0").unwrap().as_str(), "1.2.840.10008.1.1");
        assert_eq!(Uid::parse("1.0.3 ").unwrap().as_str(), "1.0.3");
        assert_eq!(Uid::parse(""), Err(IdError::EmptyUid));
    }

    #[test]
    fn ae_titles() {
        assert_eq!(AeTitle::parse(" STORESCU ").unwrap().as_str(), "STORESCU");
        assert!(AeTitle::parse("A_VERY_LONG_AE_TITLE").is_err());
        assert!(AeTitle::parse("BAD\\AE").is_err());
        assert!(AeTitle::parse("   ").is_err());
    }
}
