//! The SCP against real DICOM peers (DCMTK) and a raw dicom-ul client, on SQLite and PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use dicom_ul::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use petct_node::dimse::Status;
use petct_node::dimse::command::{response_status, store_request};

/// One file per transfer syntax storescu can propose, re-labelled as CT Image Storage in one
/// study. The files pass through DCMTK (dcmodify) so they hold exactly what storescu sends.
fn transfer_syntax_corpus(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let t = pydicom_test_files();
    let jpeg_ll = dir.join("jpeg_lossless_src.dcm");
    let out = Command::new("dcmcjpeg").arg(t.join("CT_small.dcm")).arg(&jpeg_ll).output().unwrap();
    assert_success(&out, "dcmcjpeg");
    let sources: [(&str, PathBuf); 12] = [
        ("-xi", t.join("MR_small_implicit.dcm")),
        ("-xe", t.join("CT_small.dcm")),
        ("-xb", t.join("MR_small_bigendian.dcm")),
        ("-xd", t.join("image_dfl.dcm")),
        ("-xs", jpeg_ll),
        ("-xy", t.join("SC_rgb_jpeg_dcmtk.dcm")),
        ("-xx", t.join("JPGExtended.dcm")),
        ("-xv", t.join("MR_small_jp2klossless.dcm")),
        ("-xw", t.join("JPEG2000.dcm")),
        ("-xt", t.join("MR_small_jpeg_ls_lossless.dcm")),
        ("-xu", t.join("JPEGLSNearLossless_16.dcm")),
        ("-xr", t.join("MR_small_RLE.dcm")),
    ];
    let study = new_uid();
    let series = new_uid();
    sources
        .into_iter()
        .map(|(opt, src)| {
            let dst = dir.join(format!("ts{opt}.dcm"));
            std::fs::copy(&src, &dst).unwrap();
            let mut perms = std::fs::metadata(&dst).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&dst, perms).unwrap();
            let out = Command::new("dcmodify")
                .args(["-q", "-nb", "-i", &format!("(0008,0016)={CT_IMAGE}"), "-i", "(0008,0060)=CT"])
                .args(["-i", &format!("(0008,0018)={}", new_uid()), "-i", &format!("(0020,000D)={study}")])
                .args(["-i", &format!("(0020,000E)={series}")])
                .arg(&dst)
                .output()
                .unwrap();
            assert_success(&out, "dcmodify");
            (opt, dst)
        })
        .collect()
}

fn every_transfer_syntax_arrives_byte_exact(backend: Backend) {
    require_tool("storescu");
    let node = Node::start(NodeOptions::new(backend));
    assert_success(&node.echoscu("ECHOSCU"), "echoscu");
    let work = tempfile::tempdir().unwrap();
    let corpus = transfer_syntax_corpus(work.path());
    for (opt, file) in &corpus {
        let out = node.storescu("STORESCU", std::slice::from_ref(file), &[opt]);
        assert_success(&out, &format!("storescu {opt}"));
    }
    let stored = node.stored_files();
    assert_eq!(stored.len(), corpus.len(), "one file per transfer syntax");
    for (opt, file) in &corpus {
        let sent = std::fs::read(file).unwrap();
        let sop = sop_uid(file);
        let path = stored
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy() == format!("{sop}.dcm"))
            .unwrap_or_else(|| panic!("{opt}: {sop} not stored"));
        let got = std::fs::read(path).unwrap();
        let (sent, got) = (data_set_bytes(&sent).to_vec(), data_set_bytes(&got).to_vec());
        // DCMTK flushes its deflate stream differently on the network than in files, so the
        // compressed bytes storescu sends differ from the file's; the data set inside must not.
        let (sent, got) = if *opt == "-xd" { (inflate(&sent), inflate(&got)) } else { (sent, got) };
        assert!(sent == got, "{opt}: stored data set differs from the one sent");
    }
    // An independent reader opens every stored file and sees the transfer syntax it came in.
    let script = "import sys, pydicom\nfor f in sys.argv[1:]:\n    d = pydicom.dcmread(f)\n    print(d.file_meta.TransferSyntaxUID, d.SOPInstanceUID == d.file_meta.MediaStorageSOPInstanceUID)";
    let out = Command::new("python3").args(["-c", script]).args(&stored).output().unwrap();
    assert_success(&out, "pydicom reading stored files");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().filter(|l| l.ends_with("True")).count(), corpus.len(), "{text}");
    for ts in petct_node::dimse::TRANSFER_SYNTAXES.iter().map(|t| t.0).filter(|t| *t != "1.2.840.10008.1.2.4.57") {
        assert!(text.lines().any(|l| l.starts_with(&format!("{ts} "))), "transfer syntax {ts} not exercised:\n{text}");
    }
}

fn inflate(raw: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(raw).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn every_transfer_syntax_arrives_byte_exact_sqlite() {
    every_transfer_syntax_arrives_byte_exact(Backend::Sqlite);
}

#[test]
fn every_transfer_syntax_arrives_byte_exact_postgres() {
    every_transfer_syntax_arrives_byte_exact(Backend::Postgres);
}

#[test]
fn unknown_callers_and_wrong_hosts_are_rejected() {
    require_tool("echoscu");
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.peers = vec![
        ("LOCALONLY".into(), Some("127.0.0.1".into())),
        ("ELSEWHERE".into(), Some("127.0.0.2".into())),
        ("ANYHOST".into(), None),
    ];
    let node = Node::start(opts);
    assert_success(&node.echoscu("LOCALONLY"), "echo from an allowed host");
    assert_success(&node.echoscu("ANYHOST"), "echo from a peer without host restriction");
    for (ae, why) in [("ELSEWHERE", "peer from the wrong host"), ("NOBODY", "unknown calling AE")] {
        let out = node.echoscu(ae);
        assert!(!out.status.success(), "{why} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Association Rejected") && err.contains("Calling AE Title Not Recognized"),
            "{why}: {err}"
        );
    }
    let out = Command::new("echoscu")
        .args(["-aet", "ANYHOST", "-aec", "OTHER_NODE", "127.0.0.1", &node.port.to_string()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Called AE Title Not Recognized"));
}

/// Sends one C-STORE with hand-made command and data set; returns the response status.
fn raw_store(port: u16, context_class: &str, command_class: &str, command_instance: &str, data: &[u8]) -> Status {
    let mut scu = ClientAssociationOptions::new()
        .calling_ae_title("TESTSCU")
        .called_ae_title("PETCT_NODE")
        .with_presentation_context(context_class, vec![EXPLICIT_LE])
        .establish(format!("127.0.0.1:{port}").as_str())
        .expect("association");
    let pc = scu.presentation_contexts()[0].id;
    let pdv = |kind, is_last, data: Vec<u8>| Pdu::PData {
        data: vec![PDataValue { presentation_context_id: pc, value_type: kind, is_last, data }],
    };
    scu.send(&pdv(PDataValueType::Command, true, store_request(command_class, command_instance, 1))).unwrap();
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(16 * 1024).collect() };
    for (i, chunk) in chunks.iter().enumerate() {
        scu.send(&pdv(PDataValueType::Data, i + 1 == chunks.len(), chunk.to_vec())).unwrap();
    }
    let status = match scu.receive().unwrap() {
        Pdu::PData { data } => response_status(&data[0].data).unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    scu.release().unwrap();
    status
}

fn encoded(obj: &dicom_object::InMemDicomObject) -> Vec<u8> {
    let mut out = Vec::new();
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    obj.write_dataset_with_ts(&mut out, &ts).unwrap();
    out
}

fn bad_input_is_refused_and_nothing_is_written(backend: Backend) {
    let mut opts = NodeOptions::new(backend);
    opts.max_instance_bytes = 100 * 1024;
    let node = Node::start(opts);
    let spec = SeriesSpec::new("CT", &new_uid(), &new_uid(), 1);
    let sop = new_uid();
    let good = encoded(&instance(&spec, 0, &sop));

    let truncated = &good[..good.len() * 3 / 5];
    let s = raw_store(node.port, CT_IMAGE, CT_IMAGE, &sop, truncated);
    assert_eq!(s.code, 0xC000, "truncated: {s:?}");

    let mut no_pixels = instance(&spec, 0, &sop);
    no_pixels.remove_element(dicom_dictionary_std::tags::PIXEL_DATA);
    let s = raw_store(node.port, CT_IMAGE, CT_IMAGE, &sop, &encoded(&no_pixels));
    assert_eq!(s.code, 0xC000, "cut before pixel data: {s:?}");
    assert!(s.comment.unwrap().contains("Pixel Data"));

    let mut mr = instance(&spec, 0, &sop);
    mr.put_str(dicom_dictionary_std::tags::SOP_CLASS_UID, dicom_core::VR::UI, MR_IMAGE);
    let s = raw_store(node.port, CT_IMAGE, CT_IMAGE, &sop, &encoded(&mr));
    assert_eq!(s.code, 0xA900, "SOP class of the data set differs from the context: {s:?}");

    let s = raw_store(node.port, CT_IMAGE, MR_IMAGE, &sop, &good);
    assert_eq!(s.code, 0xA900, "command SOP class differs from the context: {s:?}");

    let s = raw_store(node.port, CT_IMAGE, CT_IMAGE, "", &good);
    assert_eq!(s.code, 0xC000, "missing SOP Instance UID: {s:?}");

    let evil = "1.2/../../x";
    let mut bad_uid = instance(&spec, 0, evil);
    bad_uid.put_str(dicom_dictionary_std::tags::SOP_INSTANCE_UID, dicom_core::VR::UI, evil);
    let s = raw_store(node.port, CT_IMAGE, CT_IMAGE, evil, &encoded(&bad_uid));
    assert_eq!(s.code, 0xC000, "malicious SOP Instance UID: {s:?}");
    assert!(s.comment.unwrap().contains("SOP Instance UID"));

    let s = raw_store(node.port, CT_IMAGE, CT_IMAGE, &new_uid(), &good);
    assert_eq!(s.code, 0xA900, "data set SOP Instance UID differs from the command's: {s:?}");

    let mut big = instance(&spec, 0, &sop);
    big.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OB,
        dicom_core::PrimitiveValue::from(vec![0u8; 200 * 1024]),
    ));
    let s = raw_store(node.port, CT_IMAGE, CT_IMAGE, &sop, &encoded(&big));
    assert_eq!(s.code, 0xA700, "oversized: {s:?}");

    assert!(node.stored_files().is_empty(), "refused instances left files: {:?}", node.stored_files());
    let leftovers: Vec<_> = std::fs::read_dir(node.storage().join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    assert!(!node.storage().join("dicom").join("x.dcm").exists());
    assert!(node.studies().is_empty(), "refused instances were indexed");

    // The node keeps serving: the good instance goes through on the next association.
    assert_eq!(raw_store(node.port, CT_IMAGE, CT_IMAGE, &sop, &good).code, 0x0000);
    assert_eq!(node.stored_files().len(), 1);
    // The same bytes again are an idempotent success that changes nothing.
    assert_eq!(raw_store(node.port, CT_IMAGE, CT_IMAGE, &sop, &good).code, 0x0000);
    let studies = node.studies();
    assert_eq!(studies[0]["series"][0]["instance_count"], 1);
}

#[test]
fn bad_input_is_refused_and_nothing_is_written_sqlite() {
    bad_input_is_refused_and_nothing_is_written(Backend::Sqlite);
}

#[test]
fn bad_input_is_refused_and_nothing_is_written_postgres() {
    bad_input_is_refused_and_nothing_is_written(Backend::Postgres);
}

#[test]
fn disk_watermark_refuses_with_out_of_resources() {
    require_tool("storescu");
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.min_free_mb = 1 << 40;
    let node = Node::start(opts);
    let work = tempfile::tempdir().unwrap();
    let files = write_series(&SeriesSpec::new("CT", &new_uid(), &new_uid(), 1), work.path());
    let out = node.storescu("STORESCU", &files, &["-v"]);
    let log = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("Refused: OutOfResources"), "{log}");
    assert!(node.stored_files().is_empty());
}

fn concurrent_associations(backend: Backend) {
    require_tool("storescu");
    let node = Node::start(NodeOptions::new(backend));
    let work = tempfile::tempdir().unwrap();
    let study = new_uid();
    let batches: Vec<Vec<PathBuf>> = (0..8)
        .map(|i| write_series(&SeriesSpec::new("CT", &study, &new_uid(), 100), &work.path().join(i.to_string())))
        .collect();
    let children: Vec<_> = batches
        .iter()
        .map(|files| {
            Command::new("storescu")
                .args(["-aet", "STORESCU", "-aec", "PETCT_NODE", "127.0.0.1", &node.port.to_string()])
                .args(files)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        assert_success(&c.wait_with_output().unwrap(), "storescu in parallel");
    }
    assert_eq!(node.stored_files().len(), 800);
    let studies = node.studies();
    assert_eq!(studies.len(), 1);
    let total: i64 =
        studies[0]["series"].as_array().unwrap().iter().map(|s| s["instance_count"].as_i64().unwrap()).sum();
    assert_eq!(total, 800);
    assert!(node.log().matches("association released").count() >= 8);
}

#[test]
fn eight_simultaneous_associations_of_100_instances_sqlite() {
    concurrent_associations(Backend::Sqlite);
}

#[test]
fn eight_simultaneous_associations_of_100_instances_postgres() {
    concurrent_associations(Backend::Postgres);
}

#[test]
fn sigterm_finishes_in_flight_instances_and_exits() {
    require_tool("storescu");
    let mut node = Node::start(NodeOptions::new(Backend::Sqlite));
    let work = tempfile::tempdir().unwrap();
    let files = write_series(&SeriesSpec::new("CT", &new_uid(), &new_uid(), 400), work.path());
    let sender = Command::new("storescu")
        .args(["-v", "-aet", "STORESCU", "-aec", "PETCT_NODE", "127.0.0.1", &node.port.to_string()])
        .args(&files)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while node.stored_files().len() < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, took) = node.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let out = sender.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let ok = storescu_successes(&log);
    assert!(!ok.is_empty());
    assert!(ok.len() < files.len(), "the whole series went through before SIGTERM; the test proves nothing");
    // Every acknowledged instance is on disk.
    let stored = node.stored_files();
    assert!(stored.len() >= ok.len(), "{} acknowledged, {} stored", ok.len(), stored.len());
    assert!(node.log().contains("stopped"));
}

#[test]
fn associations_beyond_the_limit_are_rejected_transiently() {
    require_tool("echoscu");
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.max_associations = 1;
    let node = Node::start(opts);
    let held = ClientAssociationOptions::new()
        .calling_ae_title("TESTSCU")
        .called_ae_title("PETCT_NODE")
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish(format!("127.0.0.1:{}", node.port).as_str())
        .expect("first association");
    let out = node.echoscu("ECHOSCU");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Rejected Transient") && err.contains("Local Limit Exceeded"),
        "{err}"
    );
    held.release().unwrap();
    // The slot frees once the held association is released.
    let mut ok = false;
    for _ in 0..50 {
        if node.echoscu("ECHOSCU").status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "slot never freed");
}

#[test]
fn check_config_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nae_title = \"PETCT_NODE\"\n\n[limits]\nmax_pdu_byte = 4096\n").unwrap();
    let out = Command::new(bin()).args(["check-config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits") && err.contains("max_pdu_byte"), "{err}");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let out = Command::new(bin()).args(["check-config"]).arg(&good).output().unwrap();
    assert_success(&out, "check-config example.toml");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    // `petct-node ... | head`: the reader is gone before the command writes, so every write
    // gets EPIPE (Rust ignores SIGPIPE); println! would panic with a backtrace.
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin()).args(["check-config"]).arg(&good).stdout(writer).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked") && err.is_empty(), "{err}");
}

#[test]
fn structured_reports_are_stored_but_never_paired() {
    require_tool("storescu");
    let mut opts = NodeOptions::new(Backend::Sqlite);
    opts.quiet_period_s = 0.2;
    let node = Node::start(opts);
    let sr = pydicom_test_files().join("test-SR.dcm");
    // storescu proposes SR classes only with -R (required contexts from the files).
    assert_success(&node.storescu("STORESCU", std::slice::from_ref(&sr), &["-R"]), "storescu -R SR");
    assert_eq!(node.stored_files().len(), 1);
    let sent = std::fs::read(&sr).unwrap();
    let got = std::fs::read(&node.stored_files()[0]).unwrap();
    assert_eq!(data_set_bytes(&sent), data_set_bytes(&got));
    std::thread::sleep(Duration::from_millis(600));
    let studies = node.studies();
    assert_eq!(studies[0]["series"][0]["modality"], "SR");
    assert_eq!(studies[0]["series"][0]["complete"], false, "SR series take no part in completion");
    assert!(node.jobs().is_empty());
}
