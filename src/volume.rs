//! `Volume<T>`: a contiguous `(z, y, x)` array and the geometry that places it in patient
//! coordinates. Sizes are checked once, in [`Volume::new`]; loops then run over whole slices.

use crate::ids::Uid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("volume size {nx}x{ny}x{nz} overflows")]
    Overflow { nx: usize, ny: usize, nz: usize },
    #[error("volume of {nx}x{ny}x{nz} voxels needs {expected} values, got {got}")]
    LengthMismatch { nx: usize, ny: usize, nz: usize, expected: usize, got: usize },
    #[error("volume has a zero dimension ({nx}x{ny}x{nz})")]
    Empty { nx: usize, ny: usize, nz: usize },
}

/// Where the voxels are: index `(i, j, k)` (column, row, slice) maps to
/// `origin_mm + i*spacing_x*dir_x + j*spacing_y*dir_y + k*spacing_z*dir_z` (DICOM LPS).
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// Voxel counts along x (columns), y (rows), z (slices).
    pub dims: [usize; 3],
    pub spacing_mm: [f64; 3],
    /// Patient position of the centre of voxel (0, 0, 0).
    pub origin_mm: [f64; 3],
    /// Unit direction of increasing x, y and z index: `direction[0]` is the row direction
    /// (Image Orientation first triplet), `direction[1]` the column direction, `direction[2]`
    /// the slice normal along which slices are sorted.
    pub direction: [[f64; 3]; 3],
    pub frame_of_reference_uid: Option<Uid>,
}

impl Geometry {
    pub fn voxel_count(&self) -> Option<usize> {
        self.dims[0].checked_mul(self.dims[1])?.checked_mul(self.dims[2])
    }

    /// Patient coordinates (mm) of the centre of voxel `(i, j, k)`.
    pub fn index_to_patient(&self, ijk: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|c| {
            self.origin_mm[c]
                + (0..3).map(|axis| ijk[axis] * self.spacing_mm[axis] * self.direction[axis][c]).sum::<f64>()
        })
    }

    /// Continuous voxel index of a patient point (inverse of [`index_to_patient`]; the
    /// direction matrix is orthonormal, so its transpose inverts it).
    ///
    /// [`index_to_patient`]: Self::index_to_patient
    pub fn patient_to_index(&self, p: [f64; 3]) -> [f64; 3] {
        let d = [p[0] - self.origin_mm[0], p[1] - self.origin_mm[1], p[2] - self.origin_mm[2]];
        std::array::from_fn(|axis| {
            let dir = self.direction[axis];
            (d[0] * dir[0] + d[1] * dir[1] + d[2] * dir[2]) / self.spacing_mm[axis]
        })
    }
}

#[derive(Debug, Clone)]
pub struct Volume<T> {
    geometry: Geometry,
    data: Vec<T>,
}

impl<T> Volume<T> {
    pub fn new(geometry: Geometry, data: Vec<T>) -> Result<Self, VolumeError> {
        let [nx, ny, nz] = geometry.dims;
        let expected = geometry.voxel_count().ok_or(VolumeError::Overflow { nx, ny, nz })?;
        if expected == 0 {
            return Err(VolumeError::Empty { nx, ny, nz });
        }
        if data.len() != expected {
            return Err(VolumeError::LengthMismatch { nx, ny, nz, expected, got: data.len() });
        }
        Ok(Self { geometry, data })
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn data(&self) -> &[T] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Voxels in one slice (`nx * ny`); never zero.
    pub fn slice_len(&self) -> usize {
        self.geometry.dims[0] * self.geometry.dims[1]
    }

    pub fn slice(&self, k: usize) -> &[T] {
        let n = self.slice_len();
        &self.data[k * n..(k + 1) * n]
    }

    pub fn into_data(self) -> Vec<T> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(dims: [usize; 3]) -> Geometry {
        Geometry {
            dims,
            spacing_mm: [2.0, 3.0, 4.0],
            origin_mm: [10.0, 20.0, 30.0],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    #[test]
    fn sizes_are_checked_once() {
        assert!(Volume::new(geometry([2, 3, 4]), vec![0u8; 24]).is_ok());
        assert_eq!(
            Volume::new(geometry([2, 3, 4]), vec![0u8; 23]).unwrap_err(),
            VolumeError::LengthMismatch { nx: 2, ny: 3, nz: 4, expected: 24, got: 23 }
        );
        assert!(matches!(Volume::new(geometry([usize::MAX, 2, 2]), vec![0u8; 1]), Err(VolumeError::Overflow { .. })));
        assert!(matches!(Volume::new(geometry([0, 2, 2]), Vec::<u8>::new()), Err(VolumeError::Empty { .. })));
    }

    #[test]
    fn index_and_patient_coordinates_invert_each_other() {
        let mut g = geometry([4, 4, 4]);
        // An oblique but orthonormal frame.
        let s = std::f64::consts::FRAC_1_SQRT_2;
        g.direction = [[s, s, 0.0], [-s, s, 0.0], [0.0, 0.0, 1.0]];
        let p = g.index_to_patient([1.0, 2.0, 3.0]);
        let back = g.patient_to_index(p);
        for (a, b) in back.iter().zip([1.0, 2.0, 3.0]) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(geometry([1, 1, 1]).index_to_patient([1.0, 1.0, 1.0]), [12.0, 23.0, 34.0]);
    }
}
