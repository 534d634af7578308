//! Minimal NIfTI-1 writer (`.nii.gz`) for masks and volumes on an axis-aligned LPS grid.
//!
//! NIfTI world coordinates are RAS, DICOM patient coordinates LPS: the affine negates x and y.
//! Voxel (i, j, k) is column, row, slice of our `(z, y, x)` layout, so the data is written as
//! is (i fastest). The gzip stream is made of independently compressed members (one per slab
//! of slices, compressed in parallel); gzip readers concatenate members.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use rayon::prelude::*;

use super::PhantomError;
use super::grid::Grid;

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

impl NiftiType for f32 {
    const DATATYPE: i16 = 16;
    const BITPIX: i16 = 32;
    fn write_le(values: &[Self], out: &mut Vec<u8>) {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The RAS affine (rows of srow_x, srow_y, srow_z) of a grid.
pub fn ras_affine(g: &Grid) -> [[f64; 4]; 3] {
    [
        [-g.spacing_mm[0], 0.0, 0.0, -g.origin_mm[0]],
        [0.0, -g.spacing_mm[1], 0.0, -g.origin_mm[1]],
        [0.0, 0.0, g.spacing_mm[2], g.origin_mm[2]],
    ]
}

fn header<T: NiftiType>(g: &Grid, description: &str) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    let put_i32 = |h: &mut Vec<u8>, off: usize, v: i32| h[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let put_i16 = |h: &mut Vec<u8>, off: usize, v: i16| h[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut Vec<u8>, off: usize, v: f32| h[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put_i32(&mut h, 0, 348);
    h[38] = b'r';
    let dims = [3i16, g.nx() as i16, g.ny() as i16, g.nz() as i16, 1, 1, 1, 1];
    for (i, d) in dims.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *d);
    }
    put_i16(&mut h, 70, T::DATATYPE);
    put_i16(&mut h, 72, T::BITPIX);
    // pixdim[0] = qfac = 1 (right-handed after the RAS flip: diag(-1, -1, 1) has det +1).
    let pixdim = [1.0f32, g.spacing_mm[0] as f32, g.spacing_mm[1] as f32, g.spacing_mm[2] as f32, 0.0, 0.0, 0.0, 0.0];
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
    // Quaternion of diag(-1, -1, 1): 180 degrees about z -> (b, c, d) = (0, 0, 1).
    put_f32(&mut h, 256, 0.0);
    put_f32(&mut h, 260, 0.0);
    put_f32(&mut h, 264, 1.0);
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

/// Write `data` (on `g`, `(z, y, x)`) to `path` as gzip-compressed NIfTI-1.
pub fn write<T: NiftiType>(path: &Path, g: &Grid, data: &[T], description: &str) -> Result<(), PhantomError> {
    let slab = 16usize;
    let n = g.slice_len() * slab;
    let mut members: Vec<Vec<u8>> = data
        .par_chunks(n)
        .map(|chunk| -> std::io::Result<Vec<u8>> {
            let mut raw = Vec::with_capacity(std::mem::size_of_val(chunk));
            T::write_le(chunk, &mut raw);
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(&raw)?;
            enc.finish()
        })
        .collect::<std::io::Result<_>>()
        .map_err(PhantomError::io("compressing", path))?;
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(&header::<T>(g, description)).map_err(PhantomError::io("compressing", path))?;
    members.insert(0, enc.finish().map_err(PhantomError::io("compressing", path))?);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(PhantomError::io("creating", path))?);
    for m in &members {
        f.write_all(m).map_err(PhantomError::io("writing", path))?;
    }
    f.flush().map_err(PhantomError::io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    #[test]
    fn header_layout_and_round_trip() {
        let g = Grid { dims: [3, 4, 40], spacing_mm: [1.5, 2.0, 3.0], origin_mm: [-10.0, 5.0, -100.0] };
        let data: Vec<u8> = (0..g.len()).map(|i| (i % 251) as u8).collect();
        let dir = std::env::temp_dir().join(format!("phantom-nifti-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("t.nii.gz");
        write(&p, &g, &data, "test").expect("write");
        let mut bytes = Vec::new();
        MultiGzDecoder::new(std::fs::File::open(&p).expect("open")).read_to_end(&mut bytes).expect("gunzip");
        assert_eq!(bytes.len(), 352 + data.len());
        assert_eq!(i32::from_le_bytes(bytes[0..4].try_into().expect("4")), 348);
        assert_eq!(&bytes[344..348], b"n+1\0");
        assert_eq!(i16::from_le_bytes([bytes[42], bytes[43]]), 3);
        let srow_x0 = f32::from_le_bytes(bytes[280..284].try_into().expect("4"));
        let srow_x3 = f32::from_le_bytes(bytes[292..296].try_into().expect("4"));
        assert_eq!((srow_x0, srow_x3), (-1.5, 10.0));
        assert_eq!(&bytes[352..], &data[..]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
