//! Association handling: access control, PDV reassembly, C-ECHO and C-STORE dispatch.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason, AssociationRJSource, PDataValue,
    PDataValueType, UserIdentity,
};
use dicom_ul::{Pdu, association::AsyncServerAssociation};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::command::{self, C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP, Command, Status};
use super::{STORAGE_SOP_CLASSES, StoreHandler, StoreRequest, TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS};
use crate::config::{Peer, Settings};
use crate::ids::AeTitle;

/// What the SCP needs from the configuration.
#[derive(Debug, Clone)]
pub struct ScpSettings {
    pub ae_title: AeTitle,
    pub allow_any_caller: bool,
    pub peers: Vec<Peer>,
    pub max_associations: usize,
    pub max_pdu_bytes: u32,
    pub max_instance_bytes: u64,
    pub idle_timeout: Duration,
    /// Storage SOP classes accepted, as `(uid, name)`.
    pub sop_classes: &'static [(&'static str, &'static str)],
}

impl From<&Settings> for ScpSettings {
    fn from(s: &Settings) -> Self {
        Self {
            ae_title: s.ae_title.clone(),
            allow_any_caller: s.allow_any_caller,
            peers: s.peers.clone(),
            max_associations: s.max_associations,
            max_pdu_bytes: s.max_pdu_bytes,
            max_instance_bytes: s.max_instance_bytes,
            idle_timeout: s.idle_timeout,
            sop_classes: STORAGE_SOP_CLASSES,
        }
    }
}

/// Access control for one connection: the calling AE must be a peer, from an allowed host.
struct PeerAccess<'a> {
    settings: &'a ScpSettings,
    remote_ip: IpAddr,
}

impl AccessControl for PeerAccess<'_> {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if self.settings.allow_any_caller {
            return Ok(());
        }
        let calling = calling_ae_title.trim();
        let allowed = self.settings.peers.iter().any(|p| {
            p.ae_title.as_str() == calling
                && p.hosts.as_ref().is_none_or(|hosts| hosts.iter().any(|h| same_ip(*h, self.remote_ip)))
        });
        if allowed { Ok(()) } else { Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized) }
    }
}

/// IPv4 peers may appear as IPv4-mapped IPv6 addresses on a dual-stack listener.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

pub struct Scp<H> {
    settings: Arc<ScpSettings>,
    handler: Arc<H>,
    slots: Arc<Semaphore>,
}

impl<H: StoreHandler> Scp<H> {
    pub fn new(settings: ScpSettings, handler: Arc<H>) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_associations));
        Self { settings: Arc::new(settings), handler, slots }
    }

    /// Accepts associations until `cancel` fires; each runs on `tracker` so the caller can wait
    /// for in-flight instances to finish.
    pub async fn serve(&self, listener: TcpListener, cancel: CancellationToken, tracker: TaskTracker) {
        loop {
            let (socket, remote) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let settings = self.settings.clone();
            let handler = self.handler.clone();
            let cancel = cancel.clone();
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracker.spawn(
                        async move {
                            run_association(socket, remote, &settings, handler, cancel).await;
                            drop(permit);
                        }
                        .instrument(info_span!("association", peer = %remote)),
                    );
                }
                Err(_) => {
                    tracker.spawn(reject_busy(socket, remote));
                }
            }
        }
    }
}

/// Too many associations: read the request and answer A-ASSOCIATE-RJ (transient).
async fn reject_busy(mut socket: TcpStream, remote: SocketAddr) {
    warn!(peer = %remote, "association limit reached, rejecting");
    let mut buf = bytes::BytesMut::with_capacity(16 * 1024);
    let read = dicom_ul::association::read_pdu_from_wire_async(&mut socket, &mut buf, 64 * 1024, false);
    if tokio::time::timeout(Duration::from_secs(10), read).await.is_err() {
        return;
    }
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut out = Vec::new();
    if dicom_ul::write_pdu(&mut out, &rj).is_ok() {
        let _ = socket.write_all(&out).await;
    }
}

fn options<'a>(
    settings: &'a ScpSettings,
    remote_ip: IpAddr,
) -> ServerAssociationOptions<'a, PeerAccess<'a>, dicom_ul::association::server::DefaultNegotiation> {
    let mut opts = ServerAssociationOptions::new()
        .ae_access_control(PeerAccess { settings, remote_ip })
        .ae_title(settings.ae_title.as_str())
        .max_pdu_length(settings.max_pdu_bytes)
        .read_timeout(settings.idle_timeout)
        .write_timeout(settings.idle_timeout)
        .with_abstract_syntax(VERIFICATION_SOP_CLASS);
    for (uid, _) in settings.sop_classes {
        opts = opts.with_abstract_syntax(*uid);
    }
    for (uid, _) in TRANSFER_SYNTAXES {
        opts = opts.with_transfer_syntax(*uid);
    }
    opts
}

/// Linux delays ACKs by up to 40 ms; with a Nagle-enabled sender that stalls every instance.
/// Quick-ACK mode is cleared by the kernel after a while, so it is re-armed before each read.
fn rearm_quickack(socket: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(socket).set_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Reassembly state for the message being received.
enum Incoming {
    Idle,
    /// Command fragments so far.
    Command(Vec<u8>),
    /// A C-STORE whose data set is arriving.
    Data {
        context_id: u8,
        command: Box<Command>,
        data: Vec<u8>,
        oversized: bool,
    },
}

async fn run_association<H: StoreHandler>(
    socket: TcpStream,
    remote: SocketAddr,
    settings: &ScpSettings,
    handler: Arc<H>,
    cancel: CancellationToken,
) {
    rearm_quickack(&socket);
    let mut scp = match options(settings, remote.ip()).establish_async(socket).await {
        Ok(scp) => scp,
        Err(e) => {
            info!(error = %e, "association not established");
            return;
        }
    };
    let calling = match AeTitle::parse(dicom_ul::association::Association::peer_ae_title(&scp)) {
        Ok(ae) => ae,
        Err(e) => {
            warn!(error = %e, "calling AE title invalid");
            let _ = scp.abort().await;
            return;
        }
    };
    info!(calling_ae = %calling, "association established");
    let mut state = Incoming::Idle;
    let mut stored = 0u64;
    loop {
        rearm_quickack(scp.inner_stream());
        let pdu = if matches!(state, Incoming::Idle) {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    info!("shutting down: aborting idle association");
                    let _ = scp.abort().await;
                    return;
                }
                pdu = scp.receive() => pdu,
            }
        } else {
            // A message is half received: finish it even during shutdown.
            scp.receive().await
        };
        let pdu = match pdu {
            Ok(p) => p,
            Err(e) => {
                info!(error = %e, stored, "association ended without release");
                return;
            }
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    match absorb(&mut state, pdv, settings.max_instance_bytes) {
                        Ok(Some(message)) => {
                            let (context_id, rsp) = dispatch(&scp, &calling, message, handler.as_ref()).await;
                            if rsp.1 {
                                stored += 1;
                            }
                            let reply = Pdu::PData {
                                data: vec![PDataValue {
                                    presentation_context_id: context_id,
                                    value_type: PDataValueType::Command,
                                    is_last: true,
                                    data: rsp.0,
                                }],
                            };
                            if let Err(e) = scp.send(&reply).await {
                                warn!(error = %e, "sending response failed");
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(reason) => {
                            warn!(%reason, "protocol error, aborting association");
                            let _ = scp
                                .send(&Pdu::AbortRQ {
                                    source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPdu),
                                })
                                .await;
                            return;
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = scp.send(&Pdu::ReleaseRP).await;
                info!(stored, "association released");
                return;
            }
            Pdu::AbortRQ { source } => {
                info!(?source, stored, "association aborted by peer");
                return;
            }
            other => {
                warn!(pdu = %other.short_description(), "unexpected PDU, aborting");
                let _ = scp.abort().await;
                return;
            }
        }
    }
}

/// A complete message: a command and, for C-STORE, its data set.
struct Message {
    context_id: u8,
    command: Command,
    data: Option<(Vec<u8>, bool)>,
}

/// Adds one PDV to the message being assembled; returns the message once its last fragment is in.
fn absorb(state: &mut Incoming, pdv: PDataValue, max_instance_bytes: u64) -> Result<Option<Message>, String> {
    match (std::mem::replace(state, Incoming::Idle), pdv.value_type) {
        (prev @ (Incoming::Idle | Incoming::Command(_)), PDataValueType::Command) => {
            let mut buf = match prev {
                Incoming::Command(b) => b,
                _ => Vec::new(),
            };
            buf.extend_from_slice(&pdv.data);
            if buf.len() > 64 * 1024 {
                return Err("command set larger than 64 KiB".into());
            }
            if !pdv.is_last {
                *state = Incoming::Command(buf);
                return Ok(None);
            }
            let command = Command::parse(&buf).map_err(|e| e.to_string())?;
            if command.has_data_set().map_err(|e| e.to_string())? {
                *state = Incoming::Data {
                    context_id: pdv.presentation_context_id,
                    command: Box::new(command),
                    data: Vec::new(),
                    oversized: false,
                };
                Ok(None)
            } else {
                Ok(Some(Message { context_id: pdv.presentation_context_id, command, data: None }))
            }
        }
        (Incoming::Data { context_id, command, mut data, mut oversized }, PDataValueType::Data) => {
            if pdv.presentation_context_id != context_id {
                return Err(format!(
                    "data fragment on context {} for a command on context {context_id}",
                    pdv.presentation_context_id
                ));
            }
            if !oversized && (data.len() + pdv.data.len()) as u64 > max_instance_bytes {
                // Keep reading so the association stays usable, but stop buffering.
                oversized = true;
                data = Vec::new();
            }
            if !oversized {
                data.extend_from_slice(&pdv.data);
            }
            if pdv.is_last {
                Ok(Some(Message { context_id, command: *command, data: Some((data, oversized)) }))
            } else {
                *state = Incoming::Data { context_id, command, data, oversized };
                Ok(None)
            }
        }
        (_, kind) => Err(format!("unexpected {kind:?} fragment")),
    }
}

/// Runs one message and encodes its response; the flag says whether an instance was stored.
async fn dispatch<H: StoreHandler>(
    scp: &AsyncServerAssociation<TcpStream>,
    calling: &AeTitle,
    message: Message,
    handler: &H,
) -> (u8, (Vec<u8>, bool)) {
    let Message { context_id, command, data } = message;
    let message_id = command.message_id().unwrap_or(0);
    let field = command.command_field().unwrap_or(0);
    let context = scp.presentation_contexts().iter().find(|pc| pc.id == context_id);
    let class = command.affected_sop_class_uid();
    let instance = command.affected_sop_instance_uid();
    let status = match (field, context, data) {
        (_, None, _) => {
            Status::failure(Status::CANNOT_UNDERSTAND, format!("no accepted presentation context {context_id}"))
        }
        (C_ECHO_RQ, Some(_), _) => {
            debug!("C-ECHO");
            let rsp = command::response(C_ECHO_RSP, class.as_deref(), None, message_id, &Status::success());
            return (context_id, (rsp, false));
        }
        (C_STORE_RQ, Some(_), None) => Status::failure(Status::CANNOT_UNDERSTAND, "C-STORE-RQ without a data set"),
        (C_STORE_RQ, Some(_), Some((_, true))) => {
            Status::failure(Status::OUT_OF_RESOURCES, "instance exceeds limits.max_instance_bytes")
        }
        (C_STORE_RQ, Some(pc), Some((data_set, false))) => {
            handler
                .store(StoreRequest {
                    calling_ae: calling.clone(),
                    context_sop_class_uid: pc.abstract_syntax.clone(),
                    transfer_syntax_uid: pc.transfer_syntax.trim_end_matches(['\0', ' ']).to_string(),
                    sop_class_uid: class.clone(),
                    sop_instance_uid: instance.clone(),
                    data_set,
                })
                .await
        }
        (other, Some(_), _) => {
            let rsp = command::response(
                other | 0x8000,
                class.as_deref(),
                instance.as_deref(),
                message_id,
                &Status::failure(Status::UNRECOGNIZED_OPERATION, "only C-ECHO and C-STORE are supported"),
            );
            return (context_id, (rsp, false));
        }
    };
    if !status.is_success() {
        warn!(
            status = format!("{:04X}", status.code),
            comment = status.comment.as_deref().unwrap_or(""),
            "C-STORE refused"
        );
    }
    let ok = status.is_success();
    (context_id, (command::response(C_STORE_RSP, class.as_deref(), instance.as_deref(), message_id, &status), ok))
}
