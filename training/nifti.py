"""NIfTI-1 (`.nii.gz`) in numpy alone, for the files the node writes (src/nifti.rs) and the
phantom's masks: the training chain then needs no SimpleITK, which the GPU machine lacks.
Arrays are (z, y, x) as SimpleITK's GetArrayFromImage gives them; geometry is the affine from
voxel (i, j, k) to DICOM patient coordinates (LPS, mm)."""
import gzip
import os
import struct

import numpy as np

DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}
HEADER = 348


class Image:
    def __init__(self, array, affine, header):
        self.array = array
        self.affine = affine  # 4 x 4, voxel (i, j, k, 1) -> LPS mm
        self.header = header  # the file's 348 header bytes, for writing on the same grid

    @property
    def spacing(self):
        """Voxel size along i, j, k (x, y, z), mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def _open(path):
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read(path):
    raw = _open(path)
    endian = "<" if struct.unpack("<i", raw[:4])[0] == HEADER else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != HEADER:
        raise ValueError(f"{path}: not a NIfTI-1 file")
    dim = struct.unpack(endian + "8h", raw[40:56])
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    if datatype not in DTYPES:
        raise ValueError(f"{path}: NIfTI datatype {datatype} not supported")
    pixdim = struct.unpack(endian + "8f", raw[76:108])
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    qform_code, sform_code = struct.unpack(endian + "2h", raw[252:256])
    nx, ny, nz = (max(int(d), 1) for d in dim[1:4])
    count = nx * ny * nz
    array = np.frombuffer(raw, dtype=endian + DTYPES[datatype], count=count, offset=vox_offset)
    array = array.reshape(nz, ny, nx).astype(DTYPES[datatype])
    if slope not in (0.0, 1.0) or inter != 0.0:
        array = array * np.float32(slope or 1.0) + np.float32(inter)
    if sform_code > 0:
        ras = np.array(struct.unpack(endian + "12f", raw[280:328]), dtype=np.float64).reshape(3, 4)
    elif qform_code > 0:
        ras = _qform(endian, raw, pixdim)
    else:
        ras = np.hstack([np.diag(pixdim[1:4]), np.zeros((3, 1))])
    affine = np.eye(4)
    affine[:3] = ras
    affine[:2] *= -1  # RAS -> LPS
    return Image(array, affine, raw[:HEADER])


def _qform(endian, raw, pixdim):
    b, c, d, qx, qy, qz = struct.unpack(endian + "6f", raw[256:280])
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    r = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    scale = np.array([pixdim[1], pixdim[2], pixdim[3] * qfac])
    return np.hstack([r * scale, np.array([[qx], [qy], [qz]])])


# What write_like writes: numpy dtype -> NIfTI datatype, bits per voxel.
WRITABLE = {"u1": (2, 8), "f4": (16, 32)}


def write_like(path, array, like):
    """`array` ((z, y, x), uint8 or float32) on the grid of `like` (an Image read from a
    little-endian file, as the node writes them), gzip-compressed."""
    kind = np.dtype(array.dtype).str[1:]
    if kind not in WRITABLE:
        raise ValueError(f"{path}: dtype {array.dtype} is not one of {sorted(WRITABLE)}")
    if array.shape != like.array.shape:
        raise ValueError(f"{path}: shape {array.shape} is not the grid's {like.array.shape}")
    if struct.unpack("<i", like.header[:4])[0] != HEADER:
        raise ValueError(f"{path}: the grid's header is big-endian")
    header = bytearray(like.header)
    struct.pack_into("<hh", header, 70, *WRITABLE[kind])  # datatype, bitpix
    struct.pack_into("<ff", header, 112, 1.0, 0.0)  # scl_slope, scl_inter
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    body = bytes(header) + b"\0" * 4 + np.ascontiguousarray(array, dtype="<" + kind).tobytes()
    # Through a temporary name, so that a reader (a training run loading its cases) never sees
    # half a file.
    with open(path + ".part", "wb") as f:
        f.write(gzip.compress(body, compresslevel=6))
    os.replace(path + ".part", path)
