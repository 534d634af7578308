//! Decoders for the single-component grayscale streams dicom-pixeldata's pure-Rust codecs leave
//! out: JPEG-LS (T.87; the `jpegls` crate, after its headers are checked here) and 12-bit JPEG
//! Extended (T.81 process 4, sequential Huffman DCT; `jpeg-decoder` takes only 8 bits), which
//! this module decodes itself. Every field is checked before it is trusted: a malformed stream is
//! an error, never a panic or a wrong image.

/// Why a stream was not decoded.
#[derive(Debug)]
pub enum CodecError {
    /// Valid data these decoders do not handle (several components, progressive JPEG...).
    Unsupported(String),
    /// Data that contradicts itself or its headers.
    Malformed(String),
}

use std::borrow::Cow;

use CodecError::{Malformed, Unsupported};

/// A decoded frame of the size the caller gave: samples row by row, unsigned, below
/// 2^precision.
pub struct Frame {
    pub precision: u32,
    pub samples: Vec<u16>,
}

/// A marker segment: its marker, its offset in the stream and its content (after the length).
type Segment<'a> = (u16, usize, &'a [u8]);

/// The marker segments from SOI up to and including the first SOS; `name` goes into the errors.
fn header_segments<'a>(stream: &'a [u8], name: &str) -> Result<Vec<Segment<'a>>, CodecError> {
    let u16_at = |at: usize| stream.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    if u16_at(0) != Some(0xFFD8) {
        return Err(Malformed(format!("the {name} stream does not start with SOI")));
    }
    let mut segments = Vec::new();
    let mut at = 2;
    loop {
        let (Some(marker), Some(length)) = (u16_at(at), u16_at(at + 2)) else {
            return Err(Malformed(format!("the {name} stream ends at byte {at} before its scan")));
        };
        if marker >> 8 != 0xFF {
            return Err(Malformed(format!("no marker at byte {at} ({marker:04X})")));
        }
        if marker == 0xFFD9 {
            return Err(Malformed("EOI before the scan".into()));
        }
        let length = usize::from(length);
        let Some(segment) = stream.get(at + 4..at + 2 + length).filter(|_| length >= 2) else {
            return Err(Malformed(format!("marker {marker:04X} at byte {at}: length {length} runs past the stream")));
        };
        segments.push((marker, at, segment));
        if marker == 0xFFDA {
            return Ok(segments);
        }
        at += 2 + length;
    }
}

/// Frame header fields (SOFn, T.81 B.2.2, and SOF55, T.87 C.2.2) of a single-component frame of
/// `size` (rows, columns), checked before anything is allocated for it: (precision, component id).
fn single_component_frame(segment: &[u8], name: &str, size: (usize, usize)) -> Result<(u32, u8), CodecError> {
    let [p, y0, y1, x0, x1, nf, ..] = *segment else {
        return Err(Malformed(format!("{name} frame header of {} bytes is too short", segment.len())));
    };
    if nf != 1 {
        return Err(Unsupported(format!("{name} with {nf} components")));
    }
    if segment.len() != 9 {
        return Err(Malformed(format!("{name} frame header of {} bytes for one component", segment.len())));
    }
    let (rows, cols) = (usize::from(u16::from_be_bytes([y0, y1])), usize::from(u16::from_be_bytes([x0, x1])));
    if (rows, cols) != size {
        return Err(Malformed(format!(
            "the {name} frame is {cols}x{rows}, Rows and Columns say {}x{}",
            size.1, size.0
        )));
    }
    Ok((u32::from(p), segment[6]))
}

/// JPEG-LS, one component: the headers up to the scan (T.87 annex C) are checked (one scan of
/// the frame's component, no interleave, no point transform, NEAR within its bound), then the
/// `jpegls` crate decodes; a panic in it is an error. `size`: the frame's (rows, columns).
pub fn jpeg_ls(stream: &[u8], size: (usize, usize)) -> Result<Frame, CodecError> {
    let (rows, cols) = size;
    // DCMTK pads an odd-length stream with a fill byte before EOI (FF FF D9), as T.81 B.1.1.2
    // allows before any marker; `jpegls` wants EOI right after the scan, whose data never ends
    // in FF.
    let mut stream = Cow::Borrowed(stream);
    while stream.ends_with(&[0xFF, 0xFF, 0xD9]) {
        let fill = stream.len() - 3;
        stream.to_mut().remove(fill);
    }
    let stream = stream.as_ref();
    let mut frame = None;
    for (marker, _, segment) in header_segments(stream, "JPEG-LS")? {
        match marker {
            0xFFF7 => {
                let (p, id) = single_component_frame(segment, "JPEG-LS", size)?;
                if !(2..=16).contains(&p) {
                    return Err(Malformed(format!("SOF55 precision {p}")));
                }
                frame = Some((p, id));
            }
            0xFFDA => {
                let Some((precision, component)) = frame else {
                    return Err(Malformed("SOS before SOF55".into()));
                };
                let [ns, cs, _tm, near, ilv, point_transform] = *segment else {
                    return Err(Malformed(format!("SOS of {} bytes for one component", segment.len() + 2)));
                };
                if ns != 1 || cs != component {
                    return Err(Malformed(format!(
                        "SOS scans {ns} component(s) ({cs}) of frame component {component}"
                    )));
                }
                let near_max = (((1u32 << precision) - 1) / 2).min(255);
                if u32::from(near) > near_max {
                    return Err(Malformed(format!("NEAR {near} above {near_max}")));
                }
                if ilv != 0 {
                    return Err(Malformed(format!("interleave mode {ilv} for one component")));
                }
                if point_transform != 0 {
                    return Err(Unsupported(format!("JPEG-LS point transform {point_transform}")));
                }
                // Both fit u16: the frame header holds them.
                let (samples, width, height) =
                    std::panic::catch_unwind(|| jpegls::decode(stream, cols as u32, rows as u32))
                        .map_err(|_| Malformed("the JPEG-LS decoder panicked".into()))?
                        .map_err(|e| Malformed(format!("JPEG-LS: {e}")))?;
                if (width as usize, height as usize) != (cols, rows) || samples.len() != rows * cols {
                    return Err(Malformed(format!("JPEG-LS decoded {width}x{height} into {} samples", samples.len())));
                }
                return Ok(Frame { precision, samples });
            }
            // Other SOFn: a JPEG process, not JPEG-LS.
            0xFFC0..=0xFFCF if !matches!(marker, 0xFFC4 | 0xFFC8 | 0xFFCC) => {
                return Err(Malformed(format!("frame marker {marker:04X} in a JPEG-LS stream")));
            }
            _ => {}
        }
    }
    unreachable!("header_segments ends with SOS")
}

/// Zig-zag position k -> natural (row-major) position in the 8x8 block (T.81 figure A.6).
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// A Huffman table in the form of T.81 F.2.2.3's DECODE procedure.
struct Huffman {
    /// The largest code of each length 1..=16 (-1 when there is none).
    max_code: [i32; 17],
    /// Per length, the index in `values` of its first code minus that code.
    offset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    /// From a DHT table: 16 counts, then the values (T.81 annex C).
    fn new(counts: &[u8], values: &[u8]) -> Result<Self, CodecError> {
        let (mut max_code, mut offset) = ([-1i32; 17], [0i32; 17]);
        let (mut code, mut index) = (0i32, 0i32);
        for length in 1..=16 {
            let n = i32::from(counts[length - 1]);
            if n > 0 {
                offset[length] = index - code;
                code += n;
                index += n;
                max_code[length] = code - 1;
                if code > 1 << length {
                    return Err(Malformed(format!("a Huffman table with more codes of length {length} than fit")));
                }
            }
            code <<= 1;
        }
        Ok(Self { max_code, offset, values: values.to_vec() })
    }
}

/// Reads the entropy-coded data bit by bit: FF 00 is a data FF, fill bytes (FF FF) are skipped,
/// any other marker ends the data; past it zeros are read and counted in `padded`, so that a
/// stream that ends before its last block is told from one that ends with it.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
    buffer: u32,
    count: u32,
    padded: u32,
    marker: Option<u8>,
}

impl Bits<'_> {
    /// The next marker from `at` (fill bytes skipped), and where it ends; None for data.
    fn marker_at(&self) -> Option<(u8, usize)> {
        if self.data.get(self.at) != Some(&0xFF) {
            return self.data.get(self.at).is_none().then_some((0xD9, self.at));
        }
        let mut next = self.at + 1;
        while self.data.get(next) == Some(&0xFF) {
            next += 1;
        }
        match self.data.get(next) {
            Some(&0) => None,
            m => Some((m.copied().unwrap_or(0xD9), next + 1)),
        }
    }

    fn fill(&mut self) {
        while self.count <= 24 {
            let mut byte = 0;
            if self.marker.is_none() {
                match self.marker_at() {
                    Some((marker, end)) => {
                        self.marker = Some(marker);
                        self.at = end;
                    }
                    None => {
                        byte = self.data[self.at];
                        // A data FF is stuffed as FF 00 (after any fill bytes).
                        while self.data.get(self.at) == Some(&0xFF) {
                            self.at += 1;
                        }
                        self.at += 1;
                    }
                }
            }
            if self.marker.is_some() {
                self.padded += 8;
            }
            self.buffer |= u32::from(byte) << (24 - self.count);
            self.count += 8;
        }
    }

    /// Whether the decoding has read past the end of the data.
    fn overrun(&self) -> bool {
        self.padded > self.count
    }

    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        self.fill();
        let v = self.buffer >> (32 - n);
        self.buffer <<= n;
        self.count -= n;
        v
    }

    fn decode(&mut self, table: &Huffman) -> Result<u8, CodecError> {
        let mut code = self.bits(1) as i32;
        for length in 1..=16 {
            if code <= table.max_code[length] {
                let index = (code + table.offset[length]) as usize;
                return table
                    .values
                    .get(index)
                    .copied()
                    .ok_or_else(|| Malformed("a Huffman code past its table".into()));
            }
            code = (code << 1) | self.bits(1) as i32;
        }
        Err(Malformed("a Huffman code that is in no table".into()))
    }

    /// RECEIVE and EXTEND (T.81 F.2.2.1): `size` bits as a signed difference.
    fn signed(&mut self, size: u8) -> Result<i32, CodecError> {
        if size > 16 {
            return Err(Malformed(format!("a coefficient of {size} bits")));
        }
        let v = self.bits(u32::from(size)) as i32;
        Ok(if size > 0 && v < 1 << (size - 1) { v - (1 << size) + 1 } else { v })
    }

    /// At a restart interval's end: the rest of the byte is padding, then an RSTn marker.
    fn restart(&mut self) -> Result<(), CodecError> {
        if self.overrun() {
            return Err(Malformed("the entropy-coded data ends inside a restart interval".into()));
        }
        let marker = match self.marker.take() {
            // Not seen yet: it must come next.
            None => self.marker_at().map(|(marker, end)| {
                self.at = end;
                marker
            }),
            seen => seen,
        };
        (self.buffer, self.count, self.padded) = (0, 0, 0);
        match marker {
            Some(0xD0..=0xD7) => Ok(()),
            m => Err(Malformed(format!("restart marker expected, found {m:02X?}"))),
        }
    }
}

/// The 8x8 inverse DCT (T.81 A.3.3) as a product of two 1-D passes with a cosine table.
fn idct(coefficients: &[f64; 64], out: &mut [f64; 64]) {
    static TABLE: std::sync::OnceLock<[f64; 64]> = std::sync::OnceLock::new();
    // TABLE[x * 8 + u] = C(u) / 2 * cos((2x + 1) u pi / 16)
    let table = TABLE.get_or_init(|| {
        std::array::from_fn(|i| {
            let (x, u) = ((i / 8) as f64, i % 8);
            let c = if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
            c / 2.0 * ((2.0 * x + 1.0) * u as f64 * std::f64::consts::PI / 16.0).cos()
        })
    });
    let mut rows = [0.0; 64];
    for v in 0..8 {
        for x in 0..8 {
            rows[v * 8 + x] = (0..8).map(|u| table[x * 8 + u] * coefficients[v * 8 + u]).sum();
        }
    }
    for y in 0..8 {
        for x in 0..8 {
            out[y * 8 + x] = (0..8).map(|v| table[y * 8 + v] * rows[v * 8 + x]).sum();
        }
    }
}

/// JPEG Extended (sequential, Huffman, DCT; SOF0 or SOF1) at 8 or 12 bits, one component;
/// `size`: the frame's (rows, columns).
pub fn jpeg_extended(stream: &[u8], size: (usize, usize)) -> Result<Frame, CodecError> {
    let (rows, cols) = size;
    let mut quant: [Option<[f64; 64]>; 4] = [None; 4];
    let (mut dc, mut ac): ([Option<Huffman>; 4], [Option<Huffman>; 4]) = Default::default();
    let (mut frame, mut restart_interval) = (None, 0usize);
    let segments = header_segments(stream, "JPEG")?;
    let &(_, sos_at, sos) = segments.last().expect("header_segments ends with SOS");
    for &(marker, _, segment) in &segments {
        match marker {
            0xFFDB => {
                let mut rest = segment;
                while let [pq_tq, tail @ ..] = rest {
                    let (wide, id) = (pq_tq >> 4, usize::from(pq_tq & 15));
                    let size = if wide == 1 { 128 } else { 64 };
                    if wide > 1 || id > 3 || tail.len() < size {
                        return Err(Malformed(format!("DQT table {pq_tq:02X} of {} bytes", tail.len())));
                    }
                    quant[id] = Some(std::array::from_fn(|k| {
                        f64::from(if wide == 1 {
                            u16::from_be_bytes([tail[2 * k], tail[2 * k + 1]])
                        } else {
                            u16::from(tail[k])
                        })
                    }));
                    rest = &tail[size..];
                }
            }
            0xFFC4 => {
                let mut rest = segment;
                while let [tc_th, tail @ ..] = rest {
                    let (class, id) = (tc_th >> 4, usize::from(tc_th & 15));
                    let Some(counts) = tail.get(..16) else {
                        return Err(Malformed("DHT too short for its counts".into()));
                    };
                    let n: usize = counts.iter().map(|c| usize::from(*c)).sum();
                    let Some(values) = tail.get(16..16 + n).filter(|_| class <= 1 && id <= 3) else {
                        return Err(Malformed(format!("DHT table {tc_th:02X} with {n} values")));
                    };
                    let table = Some(Huffman::new(counts, values)?);
                    if class == 0 {
                        dc[id] = table
                    } else {
                        ac[id] = table
                    }
                    rest = &tail[16 + n..];
                }
            }
            0xFFC0 | 0xFFC1 => {
                let (p, id) = single_component_frame(segment, "JPEG", size)?;
                if p != 8 && p != 12 {
                    return Err(Malformed(format!("JPEG Extended precision {p}")));
                }
                frame = Some((p, id, usize::from(segment[8])));
            }
            0xFFDD => {
                let [a, b] = *segment else { return Err(Malformed("DRI of the wrong length".into())) };
                restart_interval = usize::from(u16::from_be_bytes([a, b]));
            }
            0xFFC2 | 0xFFC3 | 0xFFC5..=0xFFC7 | 0xFFC9..=0xFFCB | 0xFFCD..=0xFFCF => {
                return Err(Unsupported(format!("JPEG process of frame marker {marker:04X}")));
            }
            _ => {}
        }
    }
    let Some((precision, component, quant_id)) = frame else {
        return Err(Malformed("SOS before the frame header".into()));
    };
    let [ns, cs, tables, ss, se, ah_al] = *sos else {
        return Err(Malformed(format!("SOS of {} bytes for one component", sos.len() + 2)));
    };
    if ns != 1 || cs != component || (ss, se, ah_al) != (0, 63, 0) {
        return Err(Malformed(format!(
            "SOS of a sequential scan: {ns} component(s) ({cs}), Ss {ss} Se {se} Ah/Al {ah_al:02X}"
        )));
    }
    let (Some(Some(q)), Some(Some(dc)), Some(Some(ac))) =
        (quant.get(quant_id), dc.get(usize::from(tables >> 4)), ac.get(usize::from(tables & 15)))
    else {
        return Err(Malformed("the scan uses a quantisation or Huffman table that is not defined".into()));
    };
    let data = &stream[sos_at + 2 + sos.len() + 2..];
    let mut bits = Bits { data, at: 0, buffer: 0, count: 0, padded: 0, marker: None };
    let (blocks_x, blocks_y) = (cols.div_ceil(8), rows.div_ceil(8));
    let mut samples = vec![0u16; rows * cols];
    let (shift, max) = (f64::from(1u32 << (precision - 1)), f64::from((1u32 << precision) - 1));
    let (mut predictor, mut coefficients, mut block) = (0i32, [0.0; 64], [0.0; 64]);
    for b in 0..blocks_x * blocks_y {
        if restart_interval > 0 && b > 0 && b % restart_interval == 0 {
            bits.restart()?;
            predictor = 0;
        }
        coefficients.fill(0.0);
        let size = bits.decode(dc)?;
        predictor = predictor.wrapping_add(bits.signed(size)?);
        coefficients[0] = f64::from(predictor) * q[0];
        let mut k = 1;
        while k < 64 {
            let rs = bits.decode(ac)?;
            let (run, size) = (usize::from(rs >> 4), rs & 15);
            if size == 0 {
                if run != 15 {
                    break;
                }
                k += 16;
                continue;
            }
            k += run;
            if k > 63 {
                return Err(Malformed("AC coefficients past the block".into()));
            }
            coefficients[ZIGZAG[k]] = f64::from(bits.signed(size)?) * q[k];
            k += 1;
        }
        idct(&coefficients, &mut block);
        let (bx, by) = (b % blocks_x * 8, b / blocks_x * 8);
        for y in 0..8.min(rows - by) {
            for x in 0..8.min(cols - bx) {
                samples[(by + y) * cols + bx + x] = (block[y * 8 + x] + shift).round().clamp(0.0, max) as u16;
            }
        }
    }
    if bits.overrun() {
        return Err(Malformed("the entropy-coded data ends before the last block".into()));
    }
    Ok(Frame { precision, samples })
}
