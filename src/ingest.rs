//! From a received data set to a durable, indexed instance; then series completion and pairing.
//! Implements the SCP's [`StoreHandler`]: every failure maps to a C-STORE status with a comment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::db::{Db, DbError, InstanceRecord, Recorded};
use crate::dimse::{Status, StoreHandler, StoreRequest};
use crate::ids::Uid;
use crate::store::Store;

/// Root of this implementation's UIDs (2.25: derived from a fixed random UUID).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.254105287094316286634120186735329574373";
pub const IMPLEMENTATION_VERSION_NAME: &str =
    concat!("PETCT_NODE_", env!("CARGO_PKG_VERSION_MAJOR"), env!("CARGO_PKG_VERSION_MINOR"));

/// Image storage SOP classes must carry pixel data; SEG and SR classes need not.
const IMAGE_SOP_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.2.2",
    "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.130",
    "1.2.840.10008.5.1.4.1.1.128.1",
    "1.2.840.10008.5.1.4.1.1.66.4",
];

pub struct Ingest {
    store: Arc<Store>,
    db: Db,
    quiet_period: Duration,
}

/// A refusal: the status to answer with. Built only here, so every path has a comment.
struct Refusal(Status);

fn refuse(code: u16, comment: impl Into<String>) -> Refusal {
    Refusal(Status::failure(code, comment))
}

/// What ingest needs from a parsed data set.
struct Parsed {
    record: InstanceRecord,
    study: Uid,
    series: Uid,
    instance: Uid,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Ingest {
    pub fn new(store: Arc<Store>, db: Db, quiet_period: Duration) -> Self {
        Self { store, db, quiet_period }
    }

    async fn ingest(&self, req: StoreRequest) -> Result<Status, Refusal> {
        let started = Instant::now();
        let StoreRequest {
            calling_ae,
            context_sop_class_uid,
            transfer_syntax_uid,
            sop_class_uid,
            sop_instance_uid,
            data_set,
        } = req;
        let command_instance = sop_instance_uid
            .as_deref()
            .filter(|s| !s.trim_end_matches(['\0', ' ']).is_empty())
            .ok_or_else(|| refuse(Status::CANNOT_UNDERSTAND, "Affected SOP Instance UID missing"))?;
        let command_instance = Uid::parse(command_instance)
            .map_err(|e| refuse(Status::CANNOT_UNDERSTAND, format!("Affected SOP Instance UID invalid: {e}")))?;
        let sop_instance_uid_text = command_instance.to_string();
        let command_class = sop_class_uid.unwrap_or_default();
        if command_class.trim_end_matches(['\0', ' ']) != context_sop_class_uid {
            return Err(refuse(
                Status::DATA_SET_MISMATCH,
                "Affected SOP Class UID differs from the presentation context",
            ));
        }
        if !self
            .store
            .has_room_for(data_set.len() as u64)
            .map_err(|e| refuse(Status::OUT_OF_RESOURCES, e.to_string()))?
        {
            return Err(refuse(Status::OUT_OF_RESOURCES, "storage below storage.min_free_mb watermark"));
        }

        // Write the durable temporary file while the data set is parsed, checked and hashed
        // (both off the async threads): the parse then costs no latency. The file only gets its
        // final name once the data set has passed every check.
        let meta =
            file_meta(&context_sop_class_uid, command_instance.as_str(), &transfer_syntax_uid, calling_ae.as_str())
                .map_err(|e| refuse(Status::PROCESSING_FAILURE, e))?;
        let data_set = Arc::new(data_set);
        let writer = {
            let (store, data_set) = (self.store.clone(), data_set.clone());
            tokio::task::spawn_blocking(move || store.write_temp(&[&meta, &data_set]))
        };
        let parser = tokio::task::spawn_blocking(move || {
            parse(&data_set, &transfer_syntax_uid, &context_sop_class_uid, &command_instance, calling_ae.as_str())
        });
        // The index lookup for a re-sent instance needs only the command's UID: run it alongside.
        let lookup_uid = sop_instance_uid_text.clone();
        let (temp, parsed, known) = tokio::join!(writer, parser, self.db.instance_digest(&lookup_uid));
        let task_failed = |e: tokio::task::JoinError| refuse(Status::PROCESSING_FAILURE, format!("task failed: {e}"));
        let temp = temp.map_err(task_failed)?.map_err(|e| {
            warn!(error = %e, "writing instance failed");
            refuse(Status::OUT_OF_RESOURCES, "cannot write instance file")
        });
        let Parsed { mut record, study, series, instance } = parsed.map_err(task_failed)??;
        let temp = temp?;
        let parsed_at = Instant::now();

        match known {
            Ok(Some(known)) if known.series_uid != record.series_uid => {
                return Err(refuse(Status::CANNOT_UNDERSTAND, "SOP Instance UID already stored in another series"));
            }
            // Identical bytes already indexed: nothing to do, provided the file is really there
            // (after a power loss an index row can outlive an unsynced rename).
            Ok(Some(known))
                if known.sha256 == record.sha256 && self.store.absolute(Path::new(&known.path)).is_file() =>
            {
                return Ok(Status::success());
            }
            Ok(_) => {}
            Err(e) => return Err(db_refusal(e)),
        }

        let relative = Store::relative_path(&study, &series, &instance);
        record.path = relative.to_string_lossy().into_owned();
        let store = self.store.clone();
        let rel: PathBuf = relative.clone();
        let dir = tokio::task::spawn_blocking(move || temp.persist(&store, &rel)).await.map_err(task_failed)?.map_err(
            |e| {
                warn!(error = %e, "writing instance failed");
                refuse(Status::OUT_OF_RESOURCES, "cannot write instance file")
            },
        )?;
        let written_at = Instant::now();
        // The directory fsync and the database commit are independent: run them together (on
        // journaling file systems they share one journal commit). Both finish before Success.
        let (synced, recorded) = tokio::join!(
            tokio::task::spawn_blocking(move || crate::store::sync_dir(&dir)),
            self.db.record_instance(&record)
        );
        match synced {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "syncing instance directory failed");
                return Err(refuse(Status::OUT_OF_RESOURCES, "cannot sync instance file"));
            }
            Err(e) => return Err(refuse(Status::PROCESSING_FAILURE, format!("sync task failed: {e}"))),
        }
        match recorded {
            Ok(Recorded::Stored { replaced, superseded_jobs }) => {
                if replaced {
                    info!(sop_instance_uid = %record.sop_instance_uid, "instance replaced with new content");
                }
                if superseded_jobs > 0 {
                    info!(series_uid = %record.series_uid, superseded_jobs, "new instance superseded queued jobs");
                }
            }
            Ok(Recorded::Duplicate) => {}
            Err(e @ (DbError::SeriesInOtherStudy { .. } | DbError::InstanceInOtherSeries { .. })) => {
                warn!(error = %e, "conflicting instance refused");
                // The file just written sits under this (conflicting) series: remove it.
                let _ = std::fs::remove_file(self.store.absolute(&relative));
                return Err(refuse(Status::CANNOT_UNDERSTAND, conflict_comment(&e)));
            }
            Err(e) => return Err(db_refusal(e)),
        }
        debug!(
            sop_instance_uid = %record.sop_instance_uid,
            parse_ms = (parsed_at - started).as_secs_f64() * 1e3,
            write_ms = (written_at - parsed_at).as_secs_f64() * 1e3,
            sync_and_index_ms = written_at.elapsed().as_secs_f64() * 1e3,
            "instance stored"
        );
        if record.modality == "PT" {
            self.evaluate(&record.study_uid).await;
        }
        Ok(Status::success())
    }

    /// Completion and pairing for one study. Failures are logged: the periodic sweep retries.
    pub async fn evaluate(&self, study_uid: &str) {
        match self.db.evaluate_study(study_uid, now_ms(), self.quiet_period.as_millis() as i64).await {
            Ok(e) => {
                for s in &e.completed_series {
                    info!(study_uid, series_uid = %s, "series complete");
                }
                for id in &e.queued_jobs {
                    info!(study_uid, job_id = id, "job queued");
                }
            }
            Err(e) => warn!(study_uid, error = %e, "evaluating study failed; will retry"),
        }
    }

    /// One sweep: studies whose CT quiet period has passed (or whose PET may be complete).
    pub async fn sweep(&self) {
        let cutoff = now_ms() - self.quiet_period.as_millis() as i64;
        match self.db.studies_to_evaluate(cutoff).await {
            Ok(studies) => {
                for s in studies {
                    self.evaluate(&s).await;
                }
            }
            Err(e) => warn!(error = %e, "series sweep failed"),
        }
    }
}

impl StoreHandler for Ingest {
    async fn store(&self, request: StoreRequest) -> Status {
        match self.ingest(request).await {
            Ok(s) => s,
            Err(Refusal(s)) => s,
        }
    }
}

fn conflict_comment(e: &DbError) -> &'static str {
    match e {
        DbError::SeriesInOtherStudy { .. } => "Series Instance UID already used in another study",
        _ => "SOP Instance UID already stored in another series",
    }
}

fn db_refusal(e: DbError) -> Refusal {
    warn!(error = %e, "database unavailable");
    refuse(Status::OUT_OF_RESOURCES, "database unavailable, retry later")
}

/// Preamble, `DICM` and the file meta group for a received data set.
pub(crate) fn file_meta(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    calling_ae: &str,
) -> Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(calling_ae)
        .build()
        .map_err(|e| format!("building file meta: {e}"))?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| format!("writing file meta: {e}"))?;
    Ok(out)
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let v = obj.get(tag)?.to_str().ok()?;
    let v = v.trim_matches([' ', '\0']);
    (!v.is_empty()).then(|| v.to_string())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

fn required_uid(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<Uid, Refusal> {
    let raw = text(obj, tag).ok_or_else(|| refuse(Status::CANNOT_UNDERSTAND, format!("{name} missing")))?;
    Uid::parse(&raw).map_err(|_| refuse(Status::CANNOT_UNDERSTAND, format!("{name} is not a valid UID")))
}

/// Decodes the data set with its context's transfer syntax and checks it against the command.
fn parse(
    bytes: &[u8],
    ts_uid: &str,
    context_class: &str,
    command_instance: &Uid,
    calling_ae: &str,
) -> Result<Parsed, Refusal> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| refuse(Status::CANNOT_UNDERSTAND, format!("unknown transfer syntax {ts_uid}")))?;
    // Hash beside the parse: both are CPU-bound passes over the whole data set.
    let (obj, digest) = rayon::join(|| InMemDicomObject::read_dataset_with_ts(bytes, ts), || Sha256::digest(bytes));
    let obj = obj.map_err(|e| refuse(Status::CANNOT_UNDERSTAND, format!("data set unreadable: {e}")))?;
    let class = required_uid(&obj, tags::SOP_CLASS_UID, "SOP Class UID")?;
    if class.as_str() != context_class {
        return Err(refuse(Status::DATA_SET_MISMATCH, "SOP Class UID does not match the presentation context"));
    }
    let instance = required_uid(&obj, tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
    if &instance != command_instance {
        return Err(refuse(Status::DATA_SET_MISMATCH, "SOP Instance UID differs from the command's"));
    }
    let study = required_uid(&obj, tags::STUDY_INSTANCE_UID, "Study Instance UID")?;
    let series = required_uid(&obj, tags::SERIES_INSTANCE_UID, "Series Instance UID")?;
    let modality = text(&obj, tags::MODALITY).ok_or_else(|| refuse(Status::CANNOT_UNDERSTAND, "Modality missing"))?;
    let has_pixels =
        [tags::PIXEL_DATA, tags::FLOAT_PIXEL_DATA, tags::DOUBLE_FLOAT_PIXEL_DATA].iter().any(|t| obj.get(*t).is_some());
    if IMAGE_SOP_CLASSES.contains(&class.as_str()) && !has_pixels {
        return Err(refuse(Status::CANNOT_UNDERSTAND, "Pixel Data missing (incomplete data set)"));
    }
    let frame = text(&obj, tags::FRAME_OF_REFERENCE_UID).and_then(|f| Uid::parse(&f).ok()).map(|u| u.to_string());
    let record = InstanceRecord {
        study_uid: study.to_string(),
        series_uid: series.to_string(),
        sop_instance_uid: instance.to_string(),
        sop_class_uid: class.to_string(),
        transfer_syntax_uid: ts_uid.to_string(),
        modality,
        patient_id: text(&obj, tags::PATIENT_ID),
        patient_name: text(&obj, tags::PATIENT_NAME),
        study_date: text(&obj, tags::STUDY_DATE),
        accession_number: text(&obj, tags::ACCESSION_NUMBER),
        study_description: text(&obj, tags::STUDY_DESCRIPTION),
        series_number: int(&obj, tags::SERIES_NUMBER),
        series_description: text(&obj, tags::SERIES_DESCRIPTION),
        frame_of_reference_uid: frame,
        number_of_slices: int(&obj, tags::NUMBER_OF_SLICES),
        image_index: int(&obj, tags::IMAGE_INDEX),
        instance_number: int(&obj, tags::INSTANCE_NUMBER),
        acquired_at_ms: acquired_at_ms(&obj),
        path: String::new(),
        size_bytes: bytes.len() as i64,
        sha256: hex::encode(digest),
        calling_ae: calling_ae.to_string(),
        received_at_ms: now_ms(),
    };
    Ok(Parsed { record, study, series, instance })
}

/// When an instance was acquired (else its series, else its content), on a naive clock: what
/// pairing compares.
pub fn acquired_at_ms(obj: &InMemDicomObject) -> Option<i64> {
    [
        (tags::ACQUISITION_DATE, tags::ACQUISITION_TIME),
        (tags::SERIES_DATE, tags::SERIES_TIME),
        (tags::CONTENT_DATE, tags::CONTENT_TIME),
    ]
    .iter()
    .find_map(|(d, t)| naive_ms(&text(obj, *d)?, text(obj, *t).as_deref().unwrap_or("000000")))
}

/// DICOM DA + TM as milliseconds on a naive clock (no time zone): only differences matter.
pub fn naive_ms(date: &str, time: &str) -> Option<i64> {
    let at = time::PrimitiveDateTime::new(crate::pet_header::parse_da(date)?, crate::pet_header::parse_tm(time)?);
    Some((at.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_times() {
        assert_eq!(naive_ms("19700101", "000001.5"), Some(1500));
        assert_eq!(naive_ms("19700102", "0100"), Some(86_400_000 + 3_600_000));
        assert_eq!(naive_ms("20240229", "235959.999").unwrap() - naive_ms("20240229", "000000").unwrap(), 86_399_999);
        assert_eq!(naive_ms("2024-02-29", "12"), None);
        assert_eq!(naive_ms("20241301", "12"), None);
    }
}
