//! An async C-STORE SCU: sends Part 10 files to one remote AE over one association. It knows
//! nothing of jobs or storage; errors say whether trying again later can help.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_object::FileMetaTable;
use dicom_ul::ClientAssociationOptions;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{AssociationRJResult, PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{Pdu, association};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::command::{self, CommandError, Status};
use crate::ids::AeTitle;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Where to send and how long to wait.
#[derive(Debug, Clone)]
pub struct ScuSettings {
    pub calling_ae_title: AeTitle,
    pub called_ae_title: AeTitle,
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    /// Longest wait for any one exchange: association, one instance, release.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("connecting to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{addr} rejected the association ({permanence}): {reason}")]
    Rejected { addr: String, permanent: bool, permanence: &'static str, reason: String },
    #[error("{addr} accepted no presentation context for {sop_class_uid} in {transfer_syntax_uid} ({path})")]
    NoContext { addr: String, sop_class_uid: String, transfer_syntax_uid: String, path: PathBuf },
    #[error("{addr}: timed out after {seconds} s while {during}")]
    Timeout { addr: String, seconds: f64, during: &'static str },
    #[error("{addr}: {during}: {message}")]
    Association { addr: String, during: &'static str, message: String },
    #[error("{addr}: unreadable C-STORE-RSP: {source}")]
    Response { addr: String, source: CommandError },
    #[error("{addr} refused {sop_instance_uid} with status {:04X}H{}", status.code, comment(status))]
    Refused { addr: String, sop_instance_uid: String, status: Status },
}

fn comment(status: &Status) -> String {
    status.comment.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
}

impl ScuError {
    /// Network trouble, timeouts, a busy or out-of-resources peer may clear up; a refused
    /// SOP class, a permanent rejection or an unreadable file will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ScuError::Read { .. } | ScuError::NoContext { .. } => false,
            ScuError::Rejected { permanent, .. } => !permanent,
            ScuError::Connect { .. }
            | ScuError::Timeout { .. }
            | ScuError::Association { .. }
            | ScuError::Response { .. } => true,
            // A7xx: out of resources. Cxxx (cannot understand), A9xx (data set does not match
            // the SOP class) and anything else refused are the data's fault.
            ScuError::Refused { status, .. } => status.code & 0xFF00 == 0xA700,
        }
    }
}

/// One file to send: its identity from the file meta group, and where its data set starts.
#[derive(Debug, Clone)]
struct Outgoing {
    path: PathBuf,
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax_uid: String,
    data_offset: usize,
}

fn read_meta(path: &Path) -> Result<Outgoing, ScuError> {
    let read_err = |message: String| ScuError::Read { path: path.to_path_buf(), message };
    let mut file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let mut preamble = [0u8; 128];
    std::io::Read::read_exact(&mut file, &mut preamble).map_err(|e| read_err(format!("no Part 10 preamble: {e}")))?;
    let meta = FileMetaTable::from_reader(std::io::BufReader::new(file)).map_err(|e| read_err(e.to_string()))?;
    // Preamble, "DICM", the group length element (12 bytes), then the rest of group 0002.
    Ok(Outgoing {
        path: path.to_path_buf(),
        sop_class_uid: meta.media_storage_sop_class_uid().to_string(),
        sop_instance_uid: meta.media_storage_sop_instance_uid().to_string(),
        transfer_syntax_uid: meta.transfer_syntax().to_string(),
        data_offset: 128 + 4 + 12 + meta.information_group_length as usize,
    })
}

/// Sends every file over one association, in the given order, and releases it. Returns the
/// SOP Instance UIDs sent (warning statuses count as stored, as PS3.4 B.2.3 says).
pub async fn store_files(settings: &ScuSettings, files: &[PathBuf]) -> Result<Vec<String>, ScuError> {
    let addr = format!("{}:{}", settings.host, settings.port);
    let mut outgoing = Vec::with_capacity(files.len());
    for f in files {
        outgoing.push(read_meta(f)?);
    }
    if outgoing.is_empty() {
        return Ok(Vec::new());
    }
    // One context per SOP class and transfer syntax: the file's own, and Explicit VR LE only
    // when it is the same (this SCU does not transcode, so it cannot send in another).
    let mut contexts: Vec<(String, String)> = Vec::new();
    for o in &outgoing {
        let key = (o.sop_class_uid.clone(), o.transfer_syntax_uid.clone());
        if !contexts.contains(&key) {
            contexts.push(key);
        }
    }
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(settings.calling_ae_title.as_str().to_string())
        .called_ae_title(settings.called_ae_title.as_str().to_string())
        .connection_timeout(settings.connect_timeout);
    for (class, ts) in &contexts {
        let mut syntaxes = vec![ts.clone()];
        if ts != EXPLICIT_VR_LE {
            syntaxes.push(EXPLICIT_VR_LE.to_string());
        }
        options = options.with_presentation_context(class.clone(), syntaxes);
    }
    let timeout = settings.timeout;
    let timed = |during: &'static str| ScuError::Timeout { addr: addr.clone(), seconds: timeout.as_secs_f64(), during };
    let establish = options.establish_async(addr.as_str());
    let mut assoc = tokio::time::timeout(settings.connect_timeout + timeout, establish)
        .await
        .map_err(|_| timed("associating"))?
        .map_err(|e| establish_error(&addr, e))?;

    let mut sent = Vec::with_capacity(outgoing.len());
    for (message_id, o) in (1u16..).zip(&outgoing) {
        let context = assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax == o.sop_class_uid
                    && pc.transfer_syntax == o.transfer_syntax_uid
            })
            .map(|pc| pc.id);
        let Some(context_id) = context else {
            let _ = assoc.abort().await;
            return Err(ScuError::NoContext {
                addr,
                sop_class_uid: o.sop_class_uid.clone(),
                transfer_syntax_uid: o.transfer_syntax_uid.clone(),
                path: o.path.clone(),
            });
        };
        let bytes = tokio::fs::read(&o.path)
            .await
            .map_err(|e| ScuError::Read { path: o.path.clone(), message: e.to_string() })?;
        let data_set = bytes.get(o.data_offset..).ok_or_else(|| ScuError::Read {
            path: o.path.clone(),
            message: "file ends inside its meta group".into(),
        })?;
        let status = tokio::time::timeout(timeout, store_one(&mut assoc, context_id, o, message_id, data_set))
            .await
            .map_err(|_| timed("sending an instance"))?
            .map_err(|e| match e {
                ExchangeError::Transport(message) => {
                    ScuError::Association { addr: addr.clone(), during: "storing", message }
                }
                ExchangeError::Response(source) => ScuError::Response { addr: addr.clone(), source },
            })?;
        // 0000 success, 0001/Bxxx warnings: stored.
        if !(status.is_success() || status.code == 0x0001 || status.code & 0xF000 == 0xB000) {
            let _ = assoc.abort().await;
            return Err(ScuError::Refused { addr, sop_instance_uid: o.sop_instance_uid.clone(), status });
        }
        sent.push(o.sop_instance_uid.clone());
    }
    tokio::time::timeout(timeout, assoc.release())
        .await
        .map_err(|_| timed("releasing"))?
        .map_err(|e| ScuError::Association { addr: addr.clone(), during: "releasing", message: e.to_string() })?;
    Ok(sent)
}

fn establish_error(addr: &str, e: association::Error) -> ScuError {
    match e {
        association::Error::Rejected { association_rj, .. } => {
            let permanent = association_rj.result == AssociationRJResult::Permanent;
            ScuError::Rejected {
                addr: addr.to_string(),
                permanent,
                permanence: if permanent { "permanent" } else { "transient" },
                reason: format!("{:?}", association_rj.source),
            }
        }
        association::Error::NoAcceptedPresentationContexts { .. } => ScuError::Rejected {
            addr: addr.to_string(),
            permanent: true,
            permanence: "permanent",
            reason: "no presentation context accepted".into(),
        },
        association::Error::Connect { source, .. } => {
            ScuError::Connect { addr: addr.to_string(), message: source.to_string() }
        }
        other => ScuError::Association { addr: addr.to_string(), during: "associating", message: other.to_string() },
    }
}

enum ExchangeError {
    Transport(String),
    Response(CommandError),
}

fn transport(e: impl std::fmt::Display) -> ExchangeError {
    ExchangeError::Transport(e.to_string())
}

/// One C-STORE: the command in one PDV, the data set split to the peer's maximum PDU by the
/// P-DATA writer (last fragment flagged), then the response command, possibly fragmented.
async fn store_one(
    assoc: &mut AsyncClientAssociation<TcpStream>,
    context_id: u8,
    o: &Outgoing,
    message_id: u16,
    data_set: &[u8],
) -> Result<Status, ExchangeError> {
    let command = command::store_request(&o.sop_class_uid, &o.sop_instance_uid, message_id);
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: command,
        }],
    };
    assoc.send(&pdu).await.map_err(transport)?;
    let mut writer = assoc.send_pdata(context_id);
    writer.write_all(data_set).await.map_err(transport)?;
    writer.finish().await.map_err(transport)?;

    let mut response = Vec::new();
    loop {
        match assoc.receive().await.map_err(transport)? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        return Err(transport("data set PDV in a C-STORE-RSP"));
                    }
                    response.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        return command::response_status(&response).map_err(ExchangeError::Response);
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(transport(format!("aborted by peer ({source:?})"))),
            other => return Err(transport(format!("unexpected {}", other.short_description()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16) -> ScuError {
        ScuError::Refused { addr: "a".into(), sop_instance_uid: "1".into(), status: Status::failure(code, "x") }
    }

    #[test]
    fn out_of_resources_is_retried_and_refusals_are_not() {
        assert!(refused(0xA700).is_retryable());
        assert!(refused(0xA7FF).is_retryable());
        assert!(!refused(0xA900).is_retryable());
        assert!(!refused(0xC000).is_retryable());
        assert!(ScuError::Connect { addr: "a".into(), message: "refused".into() }.is_retryable());
        assert!(ScuError::Timeout { addr: "a".into(), seconds: 1.0, during: "x" }.is_retryable());
    }
}
