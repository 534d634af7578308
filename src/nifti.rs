//! NIfTI-1 writer (`.nii.gz`) for volumes on any grid, with the affine that nibabel and
//! SimpleITK read: NIfTI world coordinates are RAS, DICOM patient coordinates LPS, so x and y
//! are negated. Voxel (i, j, k) is column, row, slice of our `(z, y, x)` layout, so the data is
//! written as is (i fastest). The gzip stream is made of independently compressed members (one
//! per slab of slices, compressed in parallel); gzip readers concatenate members.
//!
//! [`read`] is the way back, for `.nii` and `.nii.gz` single-file NIfTI-1 of any byte order:
//! the sform when `sform_code > 0`, else the qform when `qform_code > 0`, else (method 1 of
//! nifti1.h) the voxel sizes on the identity, turned from RAS into our LPS [`Geometry`]. The
//! header's floats are single precision, so a grid comes back as exactly as `f32` holds it
//! (exactly, for the spacings and origins `f32` represents).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use rayon::prelude::*;

use crate::volume::Geometry;

/// Voxel types we write.
pub trait NiftiType: Copy + Send + Sync {
    const DATATYPE: i16;
    const BITPIX: i16;
    fn write_le(values: &[Self], out: &mut Vec<u8>);
}

impl NiftiType for u8 {
    const DATATYPE: i16 = 2;
    const BITPIX: i16 = 8;
    fn write_le(values: &[Self], out: &mut Vec<u8>) {
        out.extend_from_slice(values);
    }
}

/// Little-endian numbers of one type: each value's `to_le_bytes`.
macro_rules! nifti_le {
    ($t:ty, $datatype:expr) => {
        impl NiftiType for $t {
            const DATATYPE: i16 = $datatype;
            const BITPIX: i16 = 8 * std::mem::size_of::<$t>() as i16;
            fn write_le(values: &[Self], out: &mut Vec<u8>) {
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    };
}

nifti_le!(f32, 16);
// Lesion label volumes.
nifti_le!(u32, 768);
// The other types `read` reads, for masks written by other tools (and the tests).
nifti_le!(i8, 256);
nifti_le!(i16, 4);
nifti_le!(u16, 512);
nifti_le!(i32, 8);
nifti_le!(f64, 64);

/// The RAS affine (rows of srow_x, srow_y, srow_z) of a grid.
pub fn ras_affine(g: &Geometry) -> [[f64; 4]; 3] {
    let flip = [-1.0, -1.0, 1.0];
    std::array::from_fn(|r| {
        let mut row = [0.0; 4];
        for (c, v) in row.iter_mut().take(3).enumerate() {
            *v = flip[r] * g.direction[c][r] * g.spacing_mm[c];
        }
        row[3] = flip[r] * g.origin_mm[r];
        row
    })
}

/// qform quaternion (b, c, d) and qfac of the affine's rotation (NIfTI-1 `nifti_mat44_to_quatern`).
fn quaternion(g: &Geometry) -> ([f64; 3], f64) {
    let flip = [-1.0, -1.0, 1.0];
    // Columns: RAS directions of the i, j, k axes.
    let mut m: [[f64; 3]; 3] = std::array::from_fn(|r| std::array::from_fn(|c| flip[r] * g.direction[c][r]));
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if qfac < 0.0 {
        for row in m.iter_mut() {
            row[2] = -row[2];
        }
    }
    let a = 1.0 + m[0][0] + m[1][1] + m[2][2];
    let (b, c, d) = if a > 0.5 {
        let a = 0.5 * a.sqrt();
        (0.25 * (m[2][1] - m[1][2]) / a, 0.25 * (m[0][2] - m[2][0]) / a, 0.25 * (m[1][0] - m[0][1]) / a)
    } else {
        let xd = 1.0 + m[0][0] - (m[1][1] + m[2][2]);
        let yd = 1.0 + m[1][1] - (m[0][0] + m[2][2]);
        let zd = 1.0 + m[2][2] - (m[0][0] + m[1][1]);
        let (b, c, d, a) = if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (b, 0.25 * (m[0][1] + m[1][0]) / b, 0.25 * (m[0][2] + m[2][0]) / b, 0.25 * (m[2][1] - m[1][2]) / b)
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (0.25 * (m[0][1] + m[1][0]) / c, c, 0.25 * (m[1][2] + m[2][1]) / c, 0.25 * (m[0][2] - m[2][0]) / c)
        } else {
            let d = 0.5 * zd.sqrt();
            (0.25 * (m[0][2] + m[2][0]) / d, 0.25 * (m[1][2] + m[2][1]) / d, d, 0.25 * (m[1][0] - m[0][1]) / d)
        };
        if a < 0.0 { (-b, -c, -d) } else { (b, c, d) }
    };
    ([b, c, d], qfac)
}

fn header<T: NiftiType>(g: &Geometry, description: &str) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    let put_i32 = |h: &mut Vec<u8>, off: usize, v: i32| h[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let put_i16 = |h: &mut Vec<u8>, off: usize, v: i16| h[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut Vec<u8>, off: usize, v: f32| h[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put_i32(&mut h, 0, 348);
    h[38] = b'r';
    let dims = [3i16, g.dims[0] as i16, g.dims[1] as i16, g.dims[2] as i16, 1, 1, 1, 1];
    for (i, d) in dims.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *d);
    }
    put_i16(&mut h, 70, T::DATATYPE);
    put_i16(&mut h, 72, T::BITPIX);
    let (q, qfac) = quaternion(g);
    let pixdim =
        [qfac as f32, g.spacing_mm[0] as f32, g.spacing_mm[1] as f32, g.spacing_mm[2] as f32, 0.0, 0.0, 0.0, 0.0];
    for (i, p) in pixdim.iter().enumerate() {
        put_f32(&mut h, 76 + 4 * i, *p);
    }
    put_f32(&mut h, 108, 352.0); // vox_offset
    put_f32(&mut h, 112, 1.0); // scl_slope
    h[123] = 2; // xyzt_units: mm
    let d = description.as_bytes();
    let n = d.len().min(79);
    h[148..148 + n].copy_from_slice(&d[..n]);
    put_i16(&mut h, 252, 1); // qform_code: scanner
    put_i16(&mut h, 254, 1); // sform_code: scanner
    for (i, v) in q.iter().enumerate() {
        put_f32(&mut h, 256 + 4 * i, *v as f32);
    }
    let a = ras_affine(g);
    put_f32(&mut h, 268, a[0][3] as f32);
    put_f32(&mut h, 272, a[1][3] as f32);
    put_f32(&mut h, 276, a[2][3] as f32);
    for (r, row) in a.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put_f32(&mut h, 280 + 16 * r + 4 * c, *v as f32);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

/// Writes `data` (on `g`, `(z, y, x)`) to `path` as gzip-compressed NIfTI-1.
pub fn write<T: NiftiType>(path: &Path, g: &Geometry, data: &[T], description: &str) -> std::io::Result<()> {
    let slab = 16usize;
    let n = (g.dims[0] * g.dims[1] * slab).max(1);
    let mut members: Vec<Vec<u8>> = data
        .par_chunks(n)
        .map(|chunk| -> std::io::Result<Vec<u8>> {
            let mut raw = Vec::with_capacity(std::mem::size_of_val(chunk));
            T::write_le(chunk, &mut raw);
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(&raw)?;
            enc.finish()
        })
        .collect::<std::io::Result<_>>()?;
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(&header::<T>(g, description))?;
    members.insert(0, enc.finish()?);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for m in &members {
        f.write_all(m)?;
    }
    f.flush()
}

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// The voxel values of a NIfTI file, in its stored type (`(z, y, x)`, i fastest).
#[derive(Debug, Clone, PartialEq)]
pub enum NiftiData {
    U8(Vec<u8>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Applies `$body` to the vector inside any variant of [`NiftiData`] bound as `$v`.
macro_rules! each_type {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            NiftiData::U8($v) => $body,
            NiftiData::I8($v) => $body,
            NiftiData::I16($v) => $body,
            NiftiData::U16($v) => $body,
            NiftiData::I32($v) => $body,
            NiftiData::U32($v) => $body,
            NiftiData::F32($v) => $body,
            NiftiData::F64($v) => $body,
        }
    };
}

impl NiftiData {
    pub fn len(&self) -> usize {
        each_type!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A binary mask: 1 where the stored value is non-zero (and not NaN), 0 elsewhere. The
    /// scaling (`scl_slope`, `scl_inter`) is not applied: it has no meaning for a mask.
    pub fn nonzero_mask(&self) -> Vec<u8> {
        fn mask<T: Foreground>(values: &[T]) -> Vec<u8> {
            values.par_iter().map(|&v| u8::from(v.is_foreground())).collect()
        }
        each_type!(self, v => mask(v))
    }
}

/// Non-zero, and for floats not NaN.
trait Foreground: Copy + Sync {
    fn is_foreground(self) -> bool;
}

macro_rules! foreground {
    ($($t:ty),*; $($f:ty),*) => {
        $(impl Foreground for $t {
            fn is_foreground(self) -> bool {
                self != 0
            }
        })*
        $(impl Foreground for $f {
            fn is_foreground(self) -> bool {
                self != 0.0 && !self.is_nan()
            }
        })*
    };
}

foreground!(u8, i8, i16, u16, i32, u32; f32, f64);

/// A NIfTI-1 image as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Nifti {
    pub geometry: Geometry,
    pub data: NiftiData,
    /// Stored scaling (value = `scl_slope` * stored + `scl_inter`; slope 0 means none); not
    /// applied to `data`.
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub description: String,
}

/// The most voxels we read from one file (a 1024^3 volume).
const MAX_VOXELS: usize = 1 << 30;

/// Little- or big-endian reads of the header's fields.
struct Fields<'a> {
    h: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut b: [u8; N] = std::array::from_fn(|i| self.h[off + i]);
        if self.big {
            b.reverse();
        }
        b
    }
    fn i16(&self, off: usize) -> i16 {
        i16::from_le_bytes(self.bytes(off))
    }
    fn f32(&self, off: usize) -> f64 {
        f64::from(f32::from_le_bytes(self.bytes(off)))
    }
}

/// The RAS affine (3x4) of the header: sform, else qform, else voxel sizes (nifti1.h methods
/// 3, 2 and 1).
fn header_affine(f: &Fields) -> [[f64; 4]; 3] {
    let pixdim: [f64; 8] = std::array::from_fn(|i| f.f32(76 + 4 * i));
    if f.i16(254) > 0 {
        return std::array::from_fn(|r| std::array::from_fn(|c| f.f32(280 + 16 * r + 4 * c)));
    }
    if f.i16(252) <= 0 {
        return std::array::from_fn(|r| std::array::from_fn(|c| if c == r { pixdim[r + 1] } else { 0.0 }));
    }
    let (b, c, d) = (f.f32(256), f.f32(260), f.f32(264));
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let rot = [
        [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
        [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
        [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ];
    let qfac = if pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let scale = [pixdim[1], pixdim[2], qfac * pixdim[3]];
    let offset = [f.f32(268), f.f32(272), f.f32(276)];
    std::array::from_fn(|r| std::array::from_fn(|col| if col == 3 { offset[r] } else { rot[r][col] * scale[col] }))
}

/// The LPS grid of a RAS affine: the inverse of [`ras_affine`]. Errors for an affine whose
/// axes are degenerate or not orthogonal (a sheared grid has no [`Geometry`]).
fn geometry_of(affine: &[[f64; 4]; 3], dims: [usize; 3]) -> Result<Geometry, String> {
    let flip = [-1.0, -1.0, 1.0];
    let mut spacing_mm = [0.0; 3];
    let mut direction = [[0.0; 3]; 3];
    for axis in 0..3 {
        let column: [f64; 3] = std::array::from_fn(|r| flip[r] * affine[r][axis]);
        let norm = column.iter().map(|v| v * v).sum::<f64>().sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            return Err(format!("the affine's axis {axis} has length {norm}"));
        }
        spacing_mm[axis] = norm;
        direction[axis] = column.map(|v| v / norm);
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let cos = (0..3).map(|r| direction[a][r] * direction[b][r]).sum::<f64>();
        if cos.abs() > 1e-4 {
            return Err(format!("the affine's axes {a} and {b} are not orthogonal (cosine {cos:.2e})"));
        }
    }
    let origin_mm = std::array::from_fn(|r| flip[r] * affine[r][3]);
    Ok(Geometry { dims, spacing_mm, origin_mm, direction, frame_of_reference_uid: None })
}

fn decode<T: Send>(raw: &[u8], size: usize, big: bool, from: impl Fn([u8; 8]) -> T + Sync) -> Vec<T> {
    raw.par_chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            if big {
                b[..size].reverse();
            }
            from(b)
        })
        .collect()
}

/// Reads a single-file NIfTI-1 image (`.nii`, or gzip-compressed `.nii.gz`, told apart by
/// the gzip magic number rather than the name) of 3 dimensions (trailing dimensions of 1 are
/// accepted).
pub fn read(path: &Path) -> Result<Nifti, NiftiError> {
    let io = |source| NiftiError::Io { path: path.to_path_buf(), source };
    let format = |message: String| NiftiError::Format { path: path.to_path_buf(), message };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut magic = [0u8; 2];
    file.read_exact(&mut magic).map_err(io)?;
    let rest = std::io::Read::chain(&magic[..], file);
    let mut reader: Box<dyn Read + '_> =
        if magic == [0x1f, 0x8b] { Box::new(MultiGzDecoder::new(rest)) } else { Box::new(rest) };
    let mut h = vec![0u8; 348];
    reader.read_exact(&mut h).map_err(|e| format(format!("no NIfTI-1 header ({e})")))?;
    let big = match (i32::from_le_bytes([h[0], h[1], h[2], h[3]]), i32::from_be_bytes([h[0], h[1], h[2], h[3]])) {
        (348, _) => false,
        (_, 348) => true,
        _ => return Err(format("not a NIfTI-1 file (sizeof_hdr is not 348)".into())),
    };
    let f = Fields { h: &h, big };
    match &h[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => return Err(format("a two-file NIfTI (.hdr/.img) is not supported; convert it to .nii".into())),
        m => return Err(format(format!("bad NIfTI-1 magic {m:?}"))),
    }
    let dim: [i16; 8] = std::array::from_fn(|i| f.i16(40 + 2 * i));
    if !(1..=7).contains(&dim[0]) || dim[1..=3].iter().any(|&d| d < 1) {
        return Err(format(format!("bad dimensions {dim:?}")));
    }
    let extra = &dim[4..=dim[0].max(3) as usize];
    if extra.iter().any(|&d| d > 1) {
        return Err(format(format!("{}-dimensional image {dim:?}: only 3D volumes are supported", dim[0])));
    }
    let dims = [dim[1] as usize, dim[2] as usize, dim[3] as usize];
    let n = dims[0] * dims[1] * dims[2];
    if n > MAX_VOXELS {
        return Err(format(format!(
            "{}x{}x{} voxels is more than the {MAX_VOXELS} we read",
            dims[0], dims[1], dims[2]
        )));
    }
    let datatype = f.i16(70);
    let size = match datatype {
        2 | 256 => 1,
        4 | 512 => 2,
        8 | 768 | 16 => 4,
        64 => 8,
        t => {
            return Err(format(format!("datatype {t} is not supported (u8, i8, i16, u16, i32, u32, f32 and f64 are)")));
        }
    };
    let vox_offset = f.f32(108);
    if !(vox_offset >= 348.0 && vox_offset.fract() == 0.0) {
        return Err(format(format!("bad vox_offset {vox_offset}")));
    }
    let mut skip = vec![0u8; vox_offset as usize - 348];
    reader.read_exact(&mut skip).map_err(|e| format(format!("header extension cut short ({e})")))?;
    let mut raw = vec![0u8; n * size];
    reader.read_exact(&mut raw).map_err(|e| format(format!("{n} voxels of {size} bytes expected ({e})")))?;
    let geometry = geometry_of(&header_affine(&f), dims).map_err(format)?;
    let data = match datatype {
        2 => NiftiData::U8(raw),
        256 => NiftiData::I8(raw.into_iter().map(|b| b as i8).collect()),
        4 => NiftiData::I16(decode(&raw, 2, big, |b| i16::from_le_bytes([b[0], b[1]]))),
        512 => NiftiData::U16(decode(&raw, 2, big, |b| u16::from_le_bytes([b[0], b[1]]))),
        8 => NiftiData::I32(decode(&raw, 4, big, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        768 => NiftiData::U32(decode(&raw, 4, big, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        16 => NiftiData::F32(decode(&raw, 4, big, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        _ => NiftiData::F64(decode(&raw, 8, big, f64::from_le_bytes)),
    };
    let text = &h[148..228];
    let description = String::from_utf8_lossy(&text[..text.iter().position(|&b| b == 0).unwrap_or(80)]).into_owned();
    Ok(Nifti { geometry, data, scl_slope: f.f32(112), scl_inter: f.f32(116), description })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    fn geometry() -> Geometry {
        Geometry {
            dims: [3, 4, 40],
            spacing_mm: [1.5, 2.0, 3.0],
            origin_mm: [-10.0, 5.0, -100.0],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    #[test]
    fn header_layout_and_round_trip() {
        let g = geometry();
        let data: Vec<u8> = (0..3 * 4 * 40).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("t.nii.gz");
        write(&p, &g, &data, "test").expect("write");
        let mut bytes = Vec::new();
        MultiGzDecoder::new(std::fs::File::open(&p).expect("open")).read_to_end(&mut bytes).expect("gunzip");
        assert_eq!(bytes.len(), 352 + data.len());
        assert_eq!(i32::from_le_bytes(bytes[0..4].try_into().expect("4")), 348);
        assert_eq!(&bytes[344..348], b"n+1\0");
        assert_eq!(i16::from_le_bytes([bytes[42], bytes[43]]), 3);
        let f = |off: usize| f32::from_le_bytes(bytes[off..off + 4].try_into().expect("4"));
        assert_eq!((f(280), f(292)), (-1.5, 10.0));
        // qform: 180 degrees about z for an axial LPS grid.
        assert_eq!((f(256), f(260), f(264), f(76)), (0.0, 0.0, 1.0, 1.0));
        assert_eq!(&bytes[352..], &data[..]);
    }

    #[test]
    fn oblique_affines_keep_direction_and_spacing() {
        let mut g = geometry();
        let (s, c) = 20f64.to_radians().sin_cos();
        g.direction = [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]];
        let a = ras_affine(&g);
        // Column 0 is the RAS row direction times the column spacing.
        assert!((a[0][0] + c * 1.5).abs() < 1e-12 && (a[1][0] + s * 1.5).abs() < 1e-12 && a[2][0] == 0.0);
        let (q, qfac) = quaternion(&g);
        assert_eq!(qfac, 1.0);
        // Rotation of 180 + 20 degrees about z: (b, c, d) = (0, 0, sin(100 deg)) up to sign.
        assert!(q[0].abs() < 1e-12 && q[1].abs() < 1e-12 && (q[2].abs() - 100f64.to_radians().sin()).abs() < 1e-9);
    }

    fn assert_same_grid(a: &Geometry, b: &Geometry, tol: f64) {
        assert_eq!(a.dims, b.dims);
        let pairs = a.spacing_mm.iter().zip(&b.spacing_mm).chain(a.origin_mm.iter().zip(&b.origin_mm));
        let dirs = a.direction.iter().flatten().zip(b.direction.iter().flatten());
        for (x, y) in pairs.chain(dirs) {
            assert!((x - y).abs() <= tol, "{a:?}\nvs\n{b:?}");
        }
    }

    /// The uncompressed bytes of a written file.
    fn raw(path: &Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        MultiGzDecoder::new(std::fs::File::open(path).expect("open")).read_to_end(&mut bytes).expect("gunzip");
        bytes
    }

    #[test]
    fn what_is_written_reads_back_with_the_same_grid_and_data() {
        let dir = tempfile::tempdir().expect("dir");
        let mut g = geometry();
        g.direction = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]; // coronal slices
        for grid in [geometry(), g] {
            let data: Vec<u8> = (0..3 * 4 * 40).map(|i| (i % 7) as u8).collect();
            let p = dir.path().join("mask.nii.gz");
            write(&p, &grid, &data, "a mask").expect("write");
            let back = read(&p).expect("read");
            assert_same_grid(&back.geometry, &grid, 1e-9);
            assert_eq!(back.data, NiftiData::U8(data.clone()));
            assert_eq!((back.scl_slope, back.scl_inter, back.description.as_str()), (1.0, 0.0, "a mask"));
            assert_eq!(back.data.nonzero_mask(), data.iter().map(|&v| u8::from(v != 0)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn every_datatype_reads_back() {
        fn check<T: NiftiType + std::fmt::Debug>(data: Vec<T>, wrap: fn(Vec<T>) -> NiftiData) {
            let dir = tempfile::tempdir().expect("dir");
            let p = dir.path().join("v.nii.gz");
            write(&p, &geometry(), &data, "").expect("write");
            assert_eq!(read(&p).expect("read").data, wrap(data));
        }
        let n: usize = 3 * 4 * 40;
        check((0..n).map(|i| (i as i64 - 200) as i8).collect(), NiftiData::I8);
        check((0..n).map(|i| (i as i16).wrapping_mul(-97)).collect(), NiftiData::I16);
        check((0..n).map(|i| i as u16 * 131).collect(), NiftiData::U16);
        check((0..n).map(|i| i as i32 * -70_001).collect(), NiftiData::I32);
        check((0..n).map(|i| i as u32 * 3_000_017).collect(), NiftiData::U32);
        check((0..n).map(|i| i as f32 * -0.25).collect(), NiftiData::F32);
        check((0..n).map(|i| i as f64 / 3.0).collect(), NiftiData::F64);
        let floats = NiftiData::F32(vec![0.0, -0.0, 0.5, f32::NAN, -2.0]);
        assert_eq!(floats.nonzero_mask(), [0, 0, 1, 0, 1]);
    }

    #[test]
    fn oblique_grids_come_back_to_single_precision() {
        let mut g = geometry();
        let (s, c) = 20f64.to_radians().sin_cos();
        g.direction = [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]];
        g.origin_mm = [-123.456, 78.9, -1000.1];
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("o.nii.gz");
        write(&p, &g, &vec![1u8; 3 * 4 * 40], "").expect("write");
        assert_same_grid(&read(&p).expect("read").geometry, &g, 1e-4);
    }

    #[test]
    fn uncompressed_qform_only_and_big_endian_files_read_the_same() {
        let dir = tempfile::tempdir().expect("dir");
        let g = geometry();
        let data: Vec<u8> = (0..3 * 4 * 40).map(|i| (i % 3) as u8).collect();
        let gz = dir.path().join("m.nii.gz");
        write(&gz, &g, &data, "").expect("write");
        let bytes = raw(&gz);
        let nii = dir.path().join("m.nii");
        std::fs::write(&nii, &bytes).expect("write");
        assert_eq!(read(&nii).expect("read .nii"), read(&gz).expect("read .nii.gz"));

        // Without the sform, the qform (quaternion, pixdim, qoffset) gives the grid.
        let mut q = bytes.clone();
        q[254..256].copy_from_slice(&0i16.to_le_bytes());
        q[280..328].fill(0);
        let qp = dir.path().join("q.nii");
        std::fs::write(&qp, &q).expect("write");
        assert_same_grid(&read(&qp).expect("read qform").geometry, &g, 1e-9);

        // Big-endian: every numeric header field byte-swapped (u8 data has no byte order).
        let mut be = bytes.clone();
        let mut swap = |off: usize, size: usize| be[off..off + size].reverse();
        swap(0, 4);
        for i in 0..8 {
            swap(40 + 2 * i, 2);
            swap(76 + 4 * i, 4);
        }
        for off in [70, 72, 252, 254] {
            swap(off, 2);
        }
        for off in [108, 112, 116].into_iter().chain((256..328).step_by(4)) {
            swap(off, 4);
        }
        let bp = dir.path().join("be.nii");
        std::fs::write(&bp, &be).expect("write");
        assert_eq!(read(&bp).expect("read big-endian"), read(&gz).expect("read"));
    }

    #[test]
    fn bad_files_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let gz = dir.path().join("m.nii.gz");
        write(&gz, &geometry(), &vec![0u8; 3 * 4 * 40], "").expect("write");
        let bytes = raw(&gz);
        let case = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            let e = read(&p).expect_err(name).to_string();
            assert!(e.contains(name), "{e}");
            e
        };
        assert!(case("short.nii", &bytes[..352 + 100]).contains("voxels of 1 bytes expected"));
        let mut four_d = bytes.clone();
        four_d[40..42].copy_from_slice(&4i16.to_le_bytes());
        four_d[48..50].copy_from_slice(&2i16.to_le_bytes());
        assert!(case("4d.nii", &four_d).contains("only 3D"));
        let mut magic = bytes.clone();
        magic[344..348].copy_from_slice(b"ni1\0");
        assert!(case("pair.nii", &magic).contains(".hdr/.img"));
        assert!(case("text.nii", b"hello, this is not an image").contains("no NIfTI-1 header"));
        let mut datatype = bytes.clone();
        datatype[70..72].copy_from_slice(&128i16.to_le_bytes());
        assert!(case("rgb.nii", &datatype).contains("datatype 128"));
        assert!(matches!(read(&dir.path().join("missing.nii")), Err(NiftiError::Io { .. })));
    }
}
