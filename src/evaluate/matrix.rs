//! `matrix.png`: the cross-evaluation matrix as a heat map. Rows are the predicted sources,
//! columns the reference sources, the colour of a cell its mean Dice (viridis, 0 to 1; grey
//! where no Dice is defined), and in the cell `mean ± sd` and the number of patients.

use super::Evaluation;
use super::font::{ADVANCE, Canvas, GLYPH_HEIGHT, text_width};

const SCALE: usize = 2;
const CHAR: usize = ADVANCE * SCALE;
const LINE: usize = (GLYPH_HEIGHT + 4) * SCALE;
const MARGIN: usize = 16;
const PAD: usize = 8;
const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const NO_VALUE: [u8; 3] = [215, 215, 215];

/// Viridis at 0, 0.25, 0.5, 0.75 and 1 (matplotlib), interpolated linearly.
fn viridis(v: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 5] =
        [[68.0, 1.0, 84.0], [59.0, 82.0, 139.0], [33.0, 145.0, 140.0], [94.0, 201.0, 98.0], [253.0, 231.0, 37.0]];
    let x = v.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let t = x - i as f64;
    std::array::from_fn(|c| (STOPS[i][c] + t * (STOPS[i + 1][c] - STOPS[i][c])).round() as u8)
}

/// Black on light colours, white on dark ones.
fn ink(background: [u8; 3]) -> [u8; 3] {
    let luma = 0.299 * f64::from(background[0]) + 0.587 * f64::from(background[1]) + 0.114 * f64::from(background[2]);
    if luma > 140.0 { BLACK } else { WHITE }
}

/// `name`, cut to `max` characters (ending in `..`) when longer.
fn fit(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        name.chars().take(max.saturating_sub(2)).chain("..".chars()).collect()
    }
}

fn longest<'a>(names: impl Iterator<Item = &'a String>) -> usize {
    names.map(|n| n.chars().count()).max().unwrap_or(0)
}

/// The heat map as PNG bytes.
pub fn render(e: &Evaluation) -> Result<Vec<u8>, String> {
    let (rows, cols) = (&e.pred_sources, &e.ref_sources);
    let cell_chars = longest(cols.iter()).clamp(13, 24);
    let (cell_w, cell_h) = (cell_chars * CHAR + 2 * PAD, 2 * LINE + 2 * PAD);
    let label_chars = longest(rows.iter()).clamp(4, 32);
    let left = MARGIN + label_chars * CHAR + PAD;
    let title = "Dice, mean ± SD over patients (n)";
    let subtitle = format!("rows: predictions, columns: references; {}-connectivity", u8::from(e.connectivity));
    let top = MARGIN + 2 * LINE + PAD + LINE;
    let legend_y = top + rows.len() * cell_h + 2 * PAD;
    let width = (left + cols.len() * cell_w + MARGIN).max(2 * MARGIN + text_width(&subtitle, SCALE));
    let height = legend_y + LINE + MARGIN;
    let mut c = Canvas::new(width, height, WHITE);
    c.text(MARGIN, MARGIN, title, SCALE, BLACK);
    c.text(MARGIN, MARGIN + LINE, &subtitle, SCALE, BLACK);
    for (j, name) in cols.iter().enumerate() {
        let name = fit(name, cell_chars);
        let x = left + j * cell_w + (cell_w - text_width(&name, SCALE)) / 2;
        c.text(x, top - LINE, &name, SCALE, BLACK);
    }
    for (i, name) in rows.iter().enumerate() {
        let y = top + i * cell_h;
        c.text(MARGIN, y + (cell_h - GLYPH_HEIGHT * SCALE) / 2, &fit(name, label_chars), SCALE, BLACK);
        for (j, reference) in cols.iter().enumerate() {
            let Some(s) = e.summary.iter().find(|s| &s.pred == name && &s.reference == reference) else {
                continue;
            };
            let x = left + j * cell_w;
            let colour = s.dice_mean.map_or(NO_VALUE, viridis);
            // One pixel of white between cells.
            c.fill(x + 1, y + 1, cell_w - 2, cell_h - 2, colour);
            let number = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
            let value = match s.dice_mean {
                Some(_) => format!("{} ± {}", number(s.dice_mean), number(s.dice_sd)),
                None => "no Dice".to_string(),
            };
            let count = if s.n_dice == s.n { format!("n = {}", s.n) } else { format!("n = {} of {}", s.n_dice, s.n) };
            for (line, text) in [value, count].iter().enumerate() {
                let tx = x + (cell_w.saturating_sub(text_width(text, SCALE))) / 2;
                c.text(tx, y + PAD + line * LINE + SCALE, text, SCALE, ink(colour));
            }
        }
    }
    // Colour bar.
    let bar_w = 200;
    c.text(MARGIN, legend_y + SCALE, "0", SCALE, BLACK);
    let bar_x = MARGIN + CHAR + PAD;
    for x in 0..bar_w {
        c.fill(bar_x + x, legend_y, 1, LINE, viridis(x as f64 / (bar_w - 1) as f64));
    }
    c.text(bar_x + bar_w + PAD, legend_y + SCALE, "1  Dice", SCALE, BLACK);
    encode(&c)
}

fn encode(c: &Canvas) -> Result<Vec<u8>, String> {
    let (w, h) = (u32::try_from(c.width), u32::try_from(c.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(format!("a {}x{} image is too large", c.width, c.height));
    };
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&c.rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_runs_from_purple_to_yellow() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        assert_eq!(viridis(0.5), [33, 145, 140]);
        assert_eq!(viridis(-3.0), viridis(0.0));
        assert_eq!((ink(viridis(0.0)), ink(viridis(1.0))), (WHITE, BLACK));
    }

    #[test]
    fn long_names_are_cut() {
        assert_eq!(fit("reader_high_sensitivity", 10), "reader_h..");
        assert_eq!(fit("mask", 10), "mask");
    }
}
