//! Pixel data in every transfer syntax the SCP stores, through `assemble`: pydicom's sample of
//! each against SimpleITK's (GDCM) decoding, JPEG-LS (lossless and near-lossless) of a phantom
//! encoded and decoded by DCMTK, and malformed JPEG-LS streams as errors that name the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use petct_node::assemble::{AssembleError, Series, assemble};

const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";

fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// The `small` phantom, written once per test into `dir/phantom`.
fn phantom(dir: &Path) -> PathBuf {
    let out = dir.join("phantom");
    write_phantom(&out, &["--profile", "small", "--seed", "11"]);
    out
}

/// Runs a DCMTK transcoder (`dcmcjpls`, `dcmdjpls`) with `args` on every file into `to`.
fn transcode(tool: &str, args: &[&str], files: &[PathBuf], to: &Path) -> Vec<PathBuf> {
    require_tool(tool);
    std::fs::create_dir_all(to).unwrap();
    files
        .iter()
        .map(|f| {
            let target = to.join(f.file_name().unwrap());
            let out = Command::new(tool).args(args).arg(f).arg(&target).output().unwrap();
            assert_success(&out, tool);
            target
        })
        .collect()
}

fn transfer_syntax(file: &Path) -> String {
    let obj = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(file).unwrap();
    obj.meta().transfer_syntax().trim_end_matches('\0').to_string()
}

/// Same geometry and the same values, bit for bit.
fn assert_same_volume(a: &Series, b: &Series, what: &str) {
    assert_eq!(a.volume.geometry(), b.volume.geometry(), "{what}: geometry");
    let (a, b) = (a.volume.data(), b.volume.data());
    assert_eq!(a.len(), b.len(), "{what}: size");
    let differ = a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits());
    assert_eq!(differ, None, "{what}: first differing voxel");
}

/// A single-slice CT made of `src`: the geometry `assemble` needs added, the pixel data
/// untouched (dcmodify keeps the transfer syntax).
fn as_ct_slice(src: &Path, dst: &Path) {
    std::fs::copy(src, dst).unwrap();
    let mut perms = std::fs::metadata(dst).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(dst, perms).unwrap();
    let out = Command::new("dcmodify")
        .args(["-q", "-nb", "-i", "(0008,0060)=CT", "-i", "(0020,0032)=0\\0\\0"])
        .args(["-i", "(0020,0037)=1\\0\\0\\0\\1\\0", "-i", "(0028,0030)=1\\1", "-i", "(0018,0050)=1"])
        .arg(dst)
        .output()
        .unwrap();
    assert_success(&out, "dcmodify");
}

/// The file's values after the Modality LUT as SimpleITK (GDCM) reads them, row by row.
fn simpleitk_values(file: &Path) -> Vec<f64> {
    let raw = file.with_extension("f64");
    let script = "import sys, numpy, SimpleITK as sitk\n\
                  a = sitk.GetArrayFromImage(sitk.ReadImage(sys.argv[1])).astype(numpy.float64)\n\
                  a.tofile(sys.argv[2])";
    let out = Command::new("python3").args(["-c", script]).arg(file).arg(&raw).output().unwrap();
    assert_success(&out, "SimpleITK");
    let bytes = std::fs::read(raw).unwrap();
    bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn every_stored_transfer_syntax_decodes_as_simpleitk_reads_it() {
    require_tool("dcmodify");
    let dir = tempfile::tempdir().unwrap();
    let t = pydicom_test_files();
    // The grayscale JPEGs storescu proposes for which pydicom has no sample: made by DCMTK.
    let jpeg_lossless = dir.path().join("jpeg_lossless_src.dcm");
    let out = Command::new("dcmcjpeg").arg(t.join("CT_small.dcm")).arg(&jpeg_lossless).output().unwrap();
    assert_success(&out, "dcmcjpeg");
    let jpeg_process14 = dir.path().join("jpeg_process14_src.dcm");
    let out = Command::new("dcmcjpeg").arg("+el").arg(t.join("CT_small.dcm")).arg(&jpeg_process14).output().unwrap();
    assert_success(&out, "dcmcjpeg +el");
    let jpeg_baseline = dir.path().join("jpeg_baseline_src.dcm");
    let out = Command::new("dcmcjpeg").arg("+eb").arg(t.join("image_dfl.dcm")).arg(&jpeg_baseline).output().unwrap();
    assert_success(&out, "dcmcjpeg +eb");
    // (storescu option, file, transfer syntax, the largest difference allowed); the SCP also
    // accepts JPEG Lossless Process 14 with any predictor (no storescu option).
    let corpus: [(&str, PathBuf, &str, f64); 13] = [
        ("-xi", t.join("MR_small_implicit.dcm"), "1.2.840.10008.1.2", 0.0),
        ("-xe", t.join("CT_small.dcm"), "1.2.840.10008.1.2.1", 0.0),
        ("-xb", t.join("MR_small_bigendian.dcm"), "1.2.840.10008.1.2.2", 0.0),
        ("-xd", t.join("image_dfl.dcm"), "1.2.840.10008.1.2.1.99", 0.0),
        ("-xs", jpeg_lossless, "1.2.840.10008.1.2.4.70", 0.0),
        ("+el", jpeg_process14, "1.2.840.10008.1.2.4.57", 0.0),
        // Lossy JPEG: the inverse DCTs of two decoders may round a sample differently.
        ("-xy", jpeg_baseline, "1.2.840.10008.1.2.4.50", 1.0),
        ("-xx", t.join("JPGExtended.dcm"), "1.2.840.10008.1.2.4.51", 1.0),
        ("-xv", t.join("MR_small_jp2klossless.dcm"), "1.2.840.10008.1.2.4.90", 0.0),
        ("-xw", t.join("JPEG2000.dcm"), "1.2.840.10008.1.2.4.91", 0.0),
        ("-xt", t.join("MR_small_jpeg_ls_lossless.dcm"), JPEG_LS_LOSSLESS, 0.0),
        ("-xu", t.join("JPEGLSNearLossless_16.dcm"), JPEG_LS_NEAR_LOSSLESS, 0.0),
        ("-xr", t.join("MR_small_RLE.dcm"), "1.2.840.10008.1.2.5", 0.0),
    ];
    for (option, src, syntax, tolerance) in corpus {
        let file = dir.path().join(format!("ts{option}.dcm"));
        as_ct_slice(&src, &file);
        assert_eq!(transfer_syntax(&file), syntax, "{option}");
        let series = assemble(std::slice::from_ref(&file)).unwrap_or_else(|e| panic!("{option}: {e}"));
        let reference = simpleitk_values(&file);
        let ours = series.volume.data();
        assert_eq!(ours.len(), reference.len(), "{option}: size");
        let worst = ours.iter().zip(&reference).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
        assert!(worst <= tolerance, "{option} ({syntax}): a value differs from SimpleITK's by {worst}");
        assert!(reference.iter().any(|v| *v != reference[0]), "{option}: a constant image tests nothing");
    }
}

#[test]
fn lossless_jpeg_ls_assembles_to_the_uncompressed_volume() {
    let dir = tempfile::tempdir().unwrap();
    let study = phantom(dir.path());
    // CT is signed (Pixel Representation 1), PET unsigned: both sign conventions.
    for modality in ["CT", "PT"] {
        let plain = dicom_files(&study.join(modality));
        let jls = transcode("dcmcjpls", &[], &plain, &dir.path().join(format!("jls-{modality}")));
        assert!(jls.iter().all(|f| transfer_syntax(f) == JPEG_LS_LOSSLESS));
        assert_same_volume(&assemble(&plain).unwrap(), &assemble(&jls).unwrap(), modality);
    }
}

#[test]
fn near_lossless_jpeg_ls_assembles_as_dcmtk_decodes_it() {
    let dir = tempfile::tempdir().unwrap();
    let study = phantom(dir.path());
    // DCMTK encodes near-lossless only unsigned data: the PET.
    let plain = dicom_files(&study.join("PT"));
    let near = transcode("dcmcjpls", &["+en", "+md", "2"], &plain, &dir.path().join("near"));
    assert!(near.iter().all(|f| transfer_syntax(f) == JPEG_LS_NEAR_LOSSLESS));
    let reference = transcode("dcmdjpls", &[], &near, &dir.path().join("dcmtk"));
    let decoded = assemble(&near).unwrap();
    assert_same_volume(&assemble(&reference).unwrap(), &decoded, "near-lossless PET");
    // Lossy within NEAR = 2 stored values, times each slice's Rescale Slope, plus the rounding of
    // both volumes to f32.
    let slope = |f: &PathBuf| {
        let obj = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(f).unwrap();
        obj.element(tags::RESCALE_SLOPE).unwrap().to_float64().unwrap()
    };
    let original = assemble(&plain).unwrap();
    let largest = original.volume.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let bound = 2.0 * plain.iter().map(slope).fold(0.0, f64::max) + f64::from(2.0 * f32::EPSILON * largest);
    let errors: Vec<f64> =
        original.volume.data().iter().zip(decoded.volume.data()).map(|(a, b)| f64::from((a - b).abs())).collect();
    assert!(errors.iter().any(|e| *e > 0.0), "near-lossless equals the input");
    let worst = errors.iter().copied().fold(0.0, f64::max);
    assert!(worst <= bound, "an error of {worst} above NEAR ({bound})");
}

/// The single fragment of a JPEG-LS file.
fn fragment(file: &Path) -> Vec<u8> {
    let obj = dicom_object::open_file(file).unwrap();
    let fragments = obj.get(tags::PIXEL_DATA).unwrap().value().fragments().unwrap().to_vec();
    assert_eq!(fragments.len(), 1);
    fragments.into_iter().next().unwrap()
}

/// Writes `file` to `to` with `stream` as its pixel data fragment.
fn with_fragment(file: &Path, stream: Vec<u8>, to: &Path) {
    let mut obj = dicom_object::open_file(file).unwrap();
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PixelFragmentSequence::new(vec![], vec![stream])));
    obj.write_to_file(to).unwrap();
}

/// The offset of a marker segment (`FF xx`) in the stream's headers.
fn marker(stream: &[u8], code: u8) -> usize {
    stream.windows(2).position(|w| w == [0xFF, code]).unwrap()
}

#[test]
fn malformed_jpeg_ls_is_an_error_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let study = phantom(dir.path());
    let plain = dicom_files(&study.join("CT"));
    let jls = transcode("dcmcjpls", &[], &plain[..1], &dir.path().join("jls"));
    let good = fragment(&jls[0]);
    assert_eq!(&good[..2], [0xFF, 0xD8]);
    let (sof, sos) = (marker(&good, 0xF7), marker(&good, 0xDA));
    // A one-slice series: its slice thickness gives the spacing.
    assemble(&jls).unwrap();

    let bad = dir.path().join("bad.dcm");
    let check = |name: &str, stream: Vec<u8>, unsupported: bool| {
        with_fragment(&jls[0], stream, &bad);
        let e = assemble(std::slice::from_ref(&bad)).err().unwrap_or_else(|| panic!("{name}: decoded"));
        assert!(e.to_string().contains(&bad.display().to_string()), "{name}: {e}");
        if unsupported {
            assert!(matches!(e, AssembleError::Unsupported { .. }), "{name}: {e}");
        } else {
            assert!(matches!(e, AssembleError::Decode { .. }), "{name}: {e}");
        }
    };
    let edits = |changes: &[(usize, u8)]| {
        let mut s = good.clone();
        for (at, byte) in changes {
            s[*at] = *byte;
        }
        s
    };
    let edit = |at: usize, byte: u8| edits(&[(at, byte)]);
    check("truncated to half", good[..good.len() / 2].to_vec(), false);
    check("truncated in the headers", good[..sos + 5].to_vec(), false);
    check("empty", Vec::new(), false);
    check("no SOI", edit(1, 0xD9), false);
    // SOF55: length, precision, height, width, components, component id.
    check("precision 17", edit(sof + 4, 17), false);
    check("precision 8 for 16 bits stored", edit(sof + 4, 8), false);
    check("zero height", edits(&[(sof + 5, 0), (sof + 6, 0)]), false);
    check("width + 256", edit(sof + 7, good[sof + 7].wrapping_add(1)), false);
    check("three components", edit(sof + 9, 3), true);
    check("length past the stream", edits(&[(sof + 2, 0xFF), (sof + 3, 0xFF)]), false);
    // SOS: length, Ns, Cs, Tm, NEAR, ILV, point transform.
    check("two scan components", edit(sos + 4, 2), false);
    check("another component", edit(sos + 5, good[sos + 5].wrapping_add(1)), false);
    check("interleave", edit(sos + 8, 1), false);
    check("point transform", edit(sos + 9, 1), true);
    check("SOS before SOF55", edit(sof + 1, 0xE5), false);

    // Any byte of the headers, and bytes of the scan, flipped: an error or a volume, never a panic.
    for at in (0..sos + 10).chain((sos + 10..good.len()).step_by(97)) {
        with_fragment(&jls[0], edit(at, !good[at]), &bad);
        if let Err(e) = assemble(std::slice::from_ref(&bad)) {
            assert!(e.to_string().contains(&bad.display().to_string()), "byte {at}: {e}");
        }
    }
}

/// The `small` phantom's CT relabelled as 12-bit unsigned (its stored values, HU + 1024, fit),
/// then compressed by DCMTK as JPEG Extended at 12 bits.
fn twelve_bit_jpeg_ct(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    require_tool("dcmodify");
    let study = phantom(dir);
    let plain = transcode("dcmconv", &[], &dicom_files(&study.join("CT")), &dir.join("ct12"));
    let out = Command::new("dcmodify")
        .args(["-q", "-nb", "-m", "(0028,0101)=12", "-m", "(0028,0102)=11", "-m", "(0028,0103)=0"])
        .args(&plain)
        .output()
        .unwrap();
    assert_success(&out, "dcmodify");
    let jpeg = transcode("dcmcjpeg", &["+ee", "+bt"], &plain, &dir.join("jpeg12"));
    (plain, jpeg)
}

#[test]
fn twelve_bit_jpeg_extended_assembles_as_dcmtk_decodes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, jpeg) = twelve_bit_jpeg_ct(dir.path());
    assert!(jpeg.iter().all(|f| transfer_syntax(f) == "1.2.840.10008.1.2.4.51"));
    let stream = fragment(&jpeg[0]);
    let sof = marker(&stream, 0xC1);
    assert_eq!(stream[sof + 4], 12, "a 12-bit frame");
    let reference = transcode("dcmdjpeg", &[], &jpeg, &dir.path().join("dcmtk"));
    let (ours, theirs) = (assemble(&jpeg).unwrap(), assemble(&reference).unwrap());
    assert_eq!(ours.volume.geometry(), theirs.volume.geometry());
    // Lossy: two inverse DCTs may round a sample differently, never by more than one.
    let worst = ours.volume.data().iter().zip(theirs.volume.data()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst <= 1.0, "{worst} HU from DCMTK's decoding");
    let original = assemble(&plain).unwrap();
    let mean_error =
        original.volume.data().iter().zip(ours.volume.data()).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>()
            / original.volume.data().len() as f64;
    assert!(mean_error < 5.0, "mean error {mean_error} HU from the input at quality 90");
}

#[test]
fn jpeg_with_restart_intervals_decodes_as_libjpeg_does() {
    let dir = tempfile::tempdir().unwrap();
    // An odd-sized 8-bit image with a restart marker every 3 blocks, and libjpeg's decoding of it
    // (Pillow).
    let script = "import sys, numpy, PIL.Image as I\n\
                  y, x = numpy.mgrid[0:37, 0:53]\n\
                  a = (128 + 100 * numpy.sin(x / 5.0) * numpy.cos(y / 7.0)).astype(numpy.uint8)\n\
                  I.fromarray(a).save(sys.argv[1], 'JPEG', quality=90, restart_marker_blocks=3)\n\
                  numpy.asarray(I.open(sys.argv[1])).astype(numpy.uint16).tofile(sys.argv[2])";
    let (jpg, raw) = (dir.path().join("a.jpg"), dir.path().join("a.raw"));
    let out = Command::new("python3").args(["-c", script]).arg(&jpg).arg(&raw).output().unwrap();
    assert_success(&out, "Pillow");
    let stream = std::fs::read(&jpg).unwrap();
    assert!(stream.windows(2).filter(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1])).count() > 10);
    let reference: Vec<u16> =
        std::fs::read(&raw).unwrap().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    let frame = petct_node::codecs::jpeg_extended(&stream, (37, 53)).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(frame.precision, 8);
    let worst = frame.samples.iter().zip(&reference).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "{worst} from libjpeg");
    // The restart markers are checked: one missing is an error.
    let rst = marker(&stream, 0xD2);
    let mut broken = stream.clone();
    broken.drain(rst..rst + 2);
    assert!(petct_node::codecs::jpeg_extended(&broken, (37, 53)).is_err());
    assert!(petct_node::codecs::jpeg_extended(&stream, (37, 54)).is_err(), "a size other than the frame's");
}

#[test]
fn malformed_jpeg_extended_is_an_error_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, jpeg) = twelve_bit_jpeg_ct(dir.path());
    let good = fragment(&jpeg[0]);
    let bad = dir.path().join("bad.dcm");
    let sos = marker(&good, 0xDA);
    for (name, stream) in
        [("truncated to half", good[..good.len() / 2].to_vec()), ("headers only", good[..sos + 14].to_vec())]
    {
        with_fragment(&jpeg[0], stream, &bad);
        let e = assemble(std::slice::from_ref(&bad)).err().unwrap_or_else(|| panic!("{name}: decoded"));
        assert!(
            matches!(e, AssembleError::Decode { .. }) && e.to_string().contains(&bad.display().to_string()),
            "{name}: {e}"
        );
    }
    // Any byte of the headers, and bytes of the scan, flipped: an error or a volume, never a panic.
    for at in (0..sos + 14).chain((sos + 14..good.len()).step_by(89)) {
        let mut s = good.clone();
        s[at] = !s[at];
        with_fragment(&jpeg[0], s, &bad);
        if let Err(e) = assemble(std::slice::from_ref(&bad)) {
            assert!(e.to_string().contains(&bad.display().to_string()), "byte {at}: {e}");
        }
    }
}
