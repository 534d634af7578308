//! DIMSE command sets (PS3.7 section 9/E): always Implicit VR Little Endian, group 0000 only.
//! Parsed and written by hand: a flat list of small elements, checked for bounds once.

use std::collections::BTreeMap;

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
const COMMAND_FIELD: u16 = 0x0100;
const MESSAGE_ID: u16 = 0x0110;
const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
const PRIORITY: u16 = 0x0700;
const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
const STATUS: u16 = 0x0900;
const ERROR_COMMENT: u16 = 0x0902;
const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
const MOVE_ORIGINATOR_AE: u16 = 0x1030;
const MOVE_ORIGINATOR_MESSAGE_ID: u16 = 0x1031;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command set is truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("command set holds element ({group:04X},{element:04X}) outside group 0000")]
    WrongGroup { group: u16, element: u16 },
    #[error("command set lacks {0}")]
    Missing(&'static str),
    #[error("command element {name} has length {len}, expected {expected}")]
    BadLength { name: &'static str, len: usize, expected: usize },
}

/// A received command: the elements the node acts on, each raw value kept by element number.
#[derive(Debug, Clone)]
pub struct Command {
    elements: BTreeMap<u16, Vec<u8>>,
}

impl Command {
    pub fn parse(bytes: &[u8]) -> Result<Self, CommandError> {
        let mut elements = BTreeMap::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let header = bytes.get(at..at + 8).ok_or(CommandError::Truncated { offset: at })?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if group != 0 {
                return Err(CommandError::WrongGroup { group, element });
            }
            let start = at + 8;
            let value = start
                .checked_add(len)
                .and_then(|end| bytes.get(start..end))
                .ok_or(CommandError::Truncated { offset: at })?;
            elements.insert(element, value.to_vec());
            at = start + len;
        }
        Ok(Self { elements })
    }

    fn u16(&self, element: u16, name: &'static str) -> Result<u16, CommandError> {
        let v = self.elements.get(&element).ok_or(CommandError::Missing(name))?;
        match v.as_slice() {
            [a, b] => Ok(u16::from_le_bytes([*a, *b])),
            _ => Err(CommandError::BadLength { name, len: v.len(), expected: 2 }),
        }
    }

    fn text(&self, element: u16) -> Option<String> {
        self.elements.get(&element).map(|v| String::from_utf8_lossy(v).trim_end_matches(['\0', ' ']).to_string())
    }

    pub fn command_field(&self) -> Result<u16, CommandError> {
        self.u16(COMMAND_FIELD, "Command Field (0000,0100)")
    }

    pub fn message_id(&self) -> Result<u16, CommandError> {
        self.u16(MESSAGE_ID, "Message ID (0000,0110)")
    }

    pub fn has_data_set(&self) -> Result<bool, CommandError> {
        Ok(self.u16(COMMAND_DATA_SET_TYPE, "Command Data Set Type (0000,0800)")? != NO_DATA_SET)
    }

    pub fn affected_sop_class_uid(&self) -> Option<String> {
        self.text(AFFECTED_SOP_CLASS_UID)
    }

    pub fn affected_sop_instance_uid(&self) -> Option<String> {
        self.text(AFFECTED_SOP_INSTANCE_UID)
    }

    pub fn move_originator(&self) -> Option<(String, Option<u16>)> {
        let ae = self.text(MOVE_ORIGINATOR_AE)?;
        Some((ae, self.u16(MOVE_ORIGINATOR_MESSAGE_ID, "Move Originator Message ID").ok()))
    }
}

/// Builds a command set in element order with its group length first.
#[derive(Default)]
pub struct CommandWriter {
    body: Vec<u8>,
}

impl CommandWriter {
    fn element(mut self, element: u16, value: &[u8], pad: u8) -> Self {
        let padded = value.len() + value.len() % 2;
        self.body.extend_from_slice(&0u16.to_le_bytes());
        self.body.extend_from_slice(&element.to_le_bytes());
        self.body.extend_from_slice(&(padded as u32).to_le_bytes());
        self.body.extend_from_slice(value);
        if padded != value.len() {
            self.body.push(pad);
        }
        self
    }

    pub fn uid(self, element: u16, uid: &str) -> Self {
        self.element(element, uid.as_bytes(), 0)
    }

    pub fn us(self, element: u16, v: u16) -> Self {
        self.element(element, &v.to_le_bytes(), 0)
    }

    pub fn text(self, element: u16, s: &str) -> Self {
        self.element(element, s.as_bytes(), b' ')
    }

    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 12);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// A response status with its optional Error Comment (LO: at most 64 characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub comment: Option<String>,
}

impl Status {
    pub const SUCCESS: u16 = 0x0000;
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    pub const PROCESSING_FAILURE: u16 = 0x0110;

    pub fn success() -> Self {
        Self { code: Self::SUCCESS, comment: None }
    }

    pub fn failure(code: u16, comment: impl Into<String>) -> Self {
        Self { code, comment: Some(comment.into()) }
    }

    pub fn is_success(&self) -> bool {
        self.code == Self::SUCCESS
    }
}

/// Encodes a response to `command_field` (the request's field with the response bit set).
pub fn response(
    response_field: u16,
    sop_class_uid: Option<&str>,
    sop_instance_uid: Option<&str>,
    message_id: u16,
    status: &Status,
) -> Vec<u8> {
    let mut w = CommandWriter::default();
    if let Some(uid) = sop_class_uid {
        w = w.uid(AFFECTED_SOP_CLASS_UID, uid);
    }
    w = w
        .us(COMMAND_FIELD, response_field)
        .us(MESSAGE_ID_BEING_RESPONDED_TO, message_id)
        .us(COMMAND_DATA_SET_TYPE, NO_DATA_SET)
        .us(STATUS, status.code);
    if let Some(comment) = &status.comment {
        let comment: String =
            comment.chars().filter(|c| c.is_ascii() && !c.is_control() && *c != '\\').take(64).collect();
        w = w.text(ERROR_COMMENT, &comment);
    }
    if let Some(uid) = sop_instance_uid {
        w = w.uid(AFFECTED_SOP_INSTANCE_UID, uid);
    }
    w.finish()
}

/// Encodes a C-STORE-RQ (used by tests and, later, by the SCU).
pub fn store_request(sop_class_uid: &str, sop_instance_uid: &str, message_id: u16) -> Vec<u8> {
    CommandWriter::default()
        .uid(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, C_STORE_RQ)
        .us(MESSAGE_ID, message_id)
        .us(PRIORITY, 0)
        .us(COMMAND_DATA_SET_TYPE, 0x0000)
        .uid(AFFECTED_SOP_INSTANCE_UID, sop_instance_uid)
        .finish()
}

/// Reads the Status and Error Comment of a response (used by tests and the SCU).
pub fn response_status(bytes: &[u8]) -> Result<Status, CommandError> {
    let c = Command::parse(bytes)?;
    Ok(Status { code: c.u16(STATUS, "Status (0000,0900)")?, comment: c.text(ERROR_COMMENT) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_request_round_trips() {
        let bytes = store_request("1.2.840.10008.5.1.4.1.1.2", "1.2.3", 7);
        // Group length covers exactly the rest of the command.
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, bytes.len() - 12);
        let c = Command::parse(&bytes).unwrap();
        assert_eq!(c.command_field().unwrap(), C_STORE_RQ);
        assert_eq!(c.message_id().unwrap(), 7);
        assert!(c.has_data_set().unwrap());
        assert_eq!(c.affected_sop_class_uid().unwrap(), "1.2.840.10008.5.1.4.1.1.2");
        assert_eq!(c.affected_sop_instance_uid().unwrap(), "1.2.3");
    }

    #[test]
    fn response_carries_status_and_bounded_comment() {
        let long = "x".repeat(100);
        let bytes = response(C_STORE_RSP, Some("1.2"), Some("1.2.3"), 9, &Status::failure(0xA700, long));
        let s = response_status(&bytes).unwrap();
        assert_eq!(s.code, 0xA700);
        assert_eq!(s.comment.unwrap().len(), 64);
    }

    #[test]
    fn malformed_commands_are_errors_not_panics() {
        let good = store_request("1.2", "1.2.3", 1);
        for cut in 0..good.len() {
            let _ = Command::parse(&good[..cut]);
        }
        assert_eq!(Command::parse(&good[..10]).unwrap_err(), CommandError::Truncated { offset: 0 });
        let mut wrong = good.clone();
        wrong[0] = 8;
        assert!(matches!(Command::parse(&wrong), Err(CommandError::WrongGroup { .. })));
        let huge_len = [0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert!(Command::parse(&huge_len).is_err());
    }
}
