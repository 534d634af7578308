//! Axis-aligned image grids in DICOM patient coordinates (LPS, mm). Data on a grid is stored
//! contiguous `(z, y, x)`: x (columns, towards the patient's left) fastest, then y (rows,
//! towards posterior), then z (slices, towards the head; slice 0 is the most inferior).

use super::anatomy::Patient;
use super::{PhantomError, Profile, Vendor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Columns, rows, slices.
    pub dims: [usize; 3],
    /// Column, row and slice spacing in mm.
    pub spacing_mm: [f64; 3],
    /// Centre of voxel (0, 0, 0) in mm.
    pub origin_mm: [f64; 3],
}

impl Grid {
    /// The same grid as the product's geometry type (axis-aligned: identity directions).
    pub fn geometry(&self) -> crate::volume::Geometry {
        crate::volume::Geometry {
            dims: self.dims,
            spacing_mm: self.spacing_mm,
            origin_mm: self.origin_mm,
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    pub fn nx(&self) -> usize {
        self.dims[0]
    }
    pub fn ny(&self) -> usize {
        self.dims[1]
    }
    pub fn nz(&self) -> usize {
        self.dims[2]
    }
    /// Voxels per slice.
    pub fn slice_len(&self) -> usize {
        self.dims[0] * self.dims[1]
    }
    pub fn len(&self) -> usize {
        self.slice_len() * self.dims[2]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn x_mm(&self, i: usize) -> f64 {
        self.origin_mm[0] + i as f64 * self.spacing_mm[0]
    }
    pub fn y_mm(&self, j: usize) -> f64 {
        self.origin_mm[1] + j as f64 * self.spacing_mm[1]
    }
    pub fn z_mm(&self, k: usize) -> f64 {
        self.origin_mm[2] + k as f64 * self.spacing_mm[2]
    }
    pub fn voxel_volume_ml(&self) -> f64 {
        self.spacing_mm.iter().product::<f64>() / 1000.0
    }
    /// Continuous voxel coordinates of a point.
    pub fn to_voxel(&self, p: [f64; 3]) -> [f64; 3] {
        [
            (p[0] - self.origin_mm[0]) / self.spacing_mm[0],
            (p[1] - self.origin_mm[1]) / self.spacing_mm[1],
            (p[2] - self.origin_mm[2]) / self.spacing_mm[2],
        ]
    }
    /// Index of the voxel nearest to `p`, if inside the grid.
    pub fn nearest(&self, p: [f64; 3]) -> Option<usize> {
        let v = self.to_voxel(p);
        let mut idx = [0usize; 3];
        for a in 0..3 {
            let r = v[a].round();
            if !(r >= 0.0 && r < self.dims[a] as f64) {
                return None;
            }
            idx[a] = r as usize;
        }
        Some(self.index(idx[0], idx[1], idx[2]))
    }
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        (k * self.dims[1] + j) * self.dims[0] + i
    }
    /// Range of indices along `axis` whose centres lie in [lo_mm, hi_mm].
    pub fn index_range(&self, axis: usize, lo_mm: f64, hi_mm: f64) -> std::ops::Range<usize> {
        let o = self.origin_mm[axis];
        let d = self.spacing_mm[axis];
        let n = self.dims[axis] as f64;
        let a = ((lo_mm - o) / d).ceil().clamp(0.0, n) as usize;
        let b = (((hi_mm - o) / d).floor() + 1.0).clamp(0.0, n) as usize;
        a..b.max(a)
    }
    /// Centre of the grid in mm.
    pub fn centre_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| self.origin_mm[a] + 0.5 * (self.dims[a] as f64 - 1.0) * self.spacing_mm[a])
    }
}

/// In-plane centre of the CT field of view (mm): the body sits slightly posterior of the
/// isocentre's y = 0 because the table is below it.
const FOV_CENTRE_Y_MM: f64 = 15.0;

/// The CT grid of a profile. The axial range follows the patient's height: it ends below the
/// bladder, so a tall patient loses the top of the head (as in a skull-base-to-thigh scan).
pub fn ct_grid(profile: Profile, patient: &Patient, slices: Option<usize>) -> Result<Grid, PhantomError> {
    let (n_xy, fov_mm, dz, default_nz, bottom_h) = match profile {
        Profile::Wholebody => (512usize, 500.0, 3.0, 300usize, 935.0 * patient.height_scale),
        Profile::Small => (128usize, 500.0, 13.0, 48usize, 930.0 * patient.height_scale),
    };
    let nz = slices.unwrap_or(default_nz);
    if nz == 0 {
        return Err(PhantomError::InvalidOptions("zero CT slices".into()));
    }
    let default_top_h = bottom_h - (default_nz as f64 - 1.0) * dz;
    let centre_h = 0.5 * (default_top_h + bottom_h);
    let lowest_h = centre_h + 0.5 * (nz as f64 - 1.0) * dz;
    let d = fov_mm / n_xy as f64;
    let half = 0.5 * (n_xy as f64 - 1.0) * d;
    Ok(Grid {
        dims: [n_xy, n_xy, nz],
        spacing_mm: [d, d, dz],
        // z = -h: the vertex is at z = 0 and the patient lies head first towards +z.
        origin_mm: [-half, FOV_CENTRE_Y_MM - half, -lowest_h],
    })
}

/// The PET grid: coarser, vendor-typical matrix, same axial range and in-plane centre as CT.
pub fn pet_grid(profile: Profile, vendor: Vendor, ct: &Grid) -> Grid {
    let (n_xy, d, dz) = match (profile, vendor) {
        (Profile::Small, _) => (64usize, 8.0, ct.spacing_mm[2]),
        (Profile::Wholebody, Vendor::Siemens) => (200, 4.072_8, 3.0),
        (Profile::Wholebody, Vendor::Ge) => (192, 3.645_833_3, 3.27),
        (Profile::Wholebody, Vendor::PhilipsBqml | Vendor::PhilipsCnts) => (144, 4.0, 4.0),
    };
    let ct_extent = (ct.nz() as f64 - 1.0) * ct.spacing_mm[2];
    let nz = (ct_extent / dz).floor() as usize + 1;
    let c = ct.centre_mm();
    let half = 0.5 * (n_xy as f64 - 1.0) * d;
    Grid {
        dims: [n_xy, n_xy, nz],
        spacing_mm: [d, d, dz],
        origin_mm: [c[0] - half, c[1] - half, c[2] - 0.5 * (nz as f64 - 1.0) * dz],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_range_and_nearest() {
        let g = Grid { dims: [10, 10, 5], spacing_mm: [2.0, 2.0, 3.0], origin_mm: [0.0, 0.0, -6.0] };
        assert_eq!(g.index_range(0, 1.0, 5.0), 1..3);
        assert_eq!(g.index_range(2, -100.0, 100.0), 0..5);
        assert_eq!(g.index_range(0, 50.0, 60.0), 10..10);
        assert_eq!(g.nearest([4.1, 0.0, -6.0]), Some(2));
        assert_eq!(g.nearest([-2.0, 0.0, -6.0]), None);
        assert_eq!(g.centre_mm(), [9.0, 9.0, 0.0]);
    }

    #[test]
    fn pet_grid_covers_ct_range() {
        let p = Patient::from_seed(3);
        let ct = ct_grid(Profile::Wholebody, &p, None).expect("grid");
        assert_eq!(ct.dims, [512, 512, 300]);
        for v in [Vendor::Siemens, Vendor::Ge, Vendor::PhilipsCnts] {
            let pet = pet_grid(Profile::Wholebody, v, &ct);
            let ct_len = (ct.nz() - 1) as f64 * ct.spacing_mm[2];
            let pet_len = (pet.nz() - 1) as f64 * pet.spacing_mm[2];
            assert!(pet_len <= ct_len && ct_len - pet_len < pet.spacing_mm[2]);
            assert!((pet.centre_mm()[2] - ct.centre_mm()[2]).abs() < 1e-9);
        }
    }
}
