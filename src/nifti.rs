//! NIfTI-1 writer (`.nii.gz`) for volumes on any grid, with the affine that nibabel and
//! SimpleITK read: NIfTI world coordinates are RAS, DICOM patient coordinates LPS, so x and y
//! are negated. Voxel (i, j, k) is column, row, slice of our `(z, y, x)` layout, so the data is
//! written as is (i fastest). The gzip stream is made of independently compressed members (one
//! per slab of slices, compressed in parallel); gzip readers concatenate members.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
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
}
