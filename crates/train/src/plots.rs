//! Plots of training runs, as SVG and PNG: training loss and the dev metric against step, with
//! several runs (e.g. LoRA and LoRA+) overlaid. Text uses the embedded DejaVu Sans font, so no
//! system font is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// Run `$draw(area, args...)` on an SVG and then a PNG drawing area: `<base>.svg`, `<base>.png`.
macro_rules! svg_and_png {
    ($base:expr, $size:expr, $draw:ident($($arg:expr),*)) => {{
        let svg = $base.with_extension("svg");
        $draw(SVGBackend::new(&svg, $size).into_drawing_area(), $($arg),*)?;
        let png = $base.with_extension("png");
        $draw(BitMapBackend::new(&png, $size).into_drawing_area(), $($arg),*)?;
    }};
}

/// One line: a label and its (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Series of one group share a colour (lighter for each further member): e.g. the seeds
    /// of one LoRA+ ratio. `None`: a colour of its own.
    pub group: Option<usize>,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The `k`-th member of a group: the group's colour blended towards white (0, 35%, 55%, ...).
fn lighter(c: RGBColor, k: usize) -> RGBColor {
    let t = 1.0 - 0.65f64.powi(k as i32);
    let mix = |v: u8| (v as f64 + (255.0 - v as f64) * t * 0.85).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(anyhow!("nothing to plot for {title}"));
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(y1.abs() * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    let mut members: Vec<usize> = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let color = match s.group {
            None => COLORS[i % COLORS.len()],
            Some(g) => {
                if members.len() <= g {
                    members.resize(g + 1, 0);
                }
                let k = members[g];
                members[g] += 1;
                lighter(COLORS[g % COLORS.len()], k)
            }
        };
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if points.len() <= 40 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| anyhow!("{e:?}"))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// Write `<base>.svg` and `<base>.png`.
pub fn line_plot(
    base: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    register_font();
    svg_and_png!(base, (800, 500), draw(title, x_label, y_label, series));
    Ok(())
}

/// One cell of a heatmap: its (x, y) and value (`None`: failed, drawn grey).
pub struct Cell {
    pub x: f64,
    pub y: f64,
    pub value: Option<f64>,
}

/// A colour from dark blue (t = 0, best) to yellow (t = 1, worst).
fn ramp(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(30.0, 250.0), lerp(40.0, 220.0), lerp(120.0, 40.0))
}

/// What [`heatmap`] draws.
pub struct HeatmapSpec<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub cells: &'a [Cell],
    /// The grid's spacing (x, y): each cell is drawn that wide and high.
    pub step: (f64, f64),
    /// Colour the lowest value as the best (a loss), else the highest.
    pub best_is_low: bool,
    /// A cell framed in red (the chosen one).
    pub mark: Option<(f64, f64)>,
    /// A row framed in white, with its legend label (plain LoRA's ratio 1).
    pub baseline: Option<(f64, &'a str)>,
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    spec: &HeatmapSpec,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let HeatmapSpec {
        title,
        x_label,
        y_label,
        cells,
        step,
        best_is_low,
        mark,
        baseline,
    } = *spec;
    let xs = cells.iter().map(|c| c.x);
    let ys = cells.iter().map(|c| c.y);
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if x0 > x1 {
        return Err(anyhow!("nothing to plot for {title}"));
    }
    let (hx, hy) = (step.0 / 2.0, step.1 / 2.0);
    let vals: Vec<f64> = cells.iter().filter_map(|c| c.value).collect();
    let (v0, v1) = vals
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 - hx)..(x1 + hx), (y0 - hy)..(y1 + hy))
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .draw_series(cells.iter().map(|c| {
            let color = match c.value {
                None => RGBColor(200, 200, 200),
                Some(v) => {
                    let t = if v1 > v0 { (v - v0) / (v1 - v0) } else { 0.0 };
                    ramp(if best_is_low { t } else { 1.0 - t })
                }
            };
            Rectangle::new([(c.x - hx, c.y - hy), (c.x + hx, c.y + hy)], color.filled())
        }))
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .draw_series(cells.iter().filter_map(|c| {
            c.value.map(|v| {
                Text::new(
                    format!("{v:.3}"),
                    (c.x - hx * 0.8, c.y + hy * 0.3),
                    ("sans-serif", 11).into_font().color(&BLACK),
                )
            })
        }))
        .map_err(|e| anyhow!("{e:?}"))?;
    if let Some((y, label)) = baseline {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x0 - hx, y - hy), (x1 + hx, y + hy)],
                WHITE.stroke_width(3),
            )))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(label)
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], BLACK.stroke_width(2)));
    }
    if let Some((mx, my)) = mark {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(mx - hx, my - hy), (mx + hx, my + hy)],
                RED.stroke_width(3),
            )))
            .map_err(|e| anyhow!("{e:?}"))?
            .label("chosen")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// A heatmap of `spec.cells` on a regular grid, written as `<base>.svg` and `<base>.png`:
/// colour from best (dark) to worst (yellow), values printed, failed cells grey, the row
/// `spec.baseline` framed in white with its label, `spec.mark` framed in red.
pub fn heatmap(base: &Path, spec: &HeatmapSpec) -> Result<()> {
    register_font();
    svg_and_png!(base, (800, 640), draw_heatmap(spec));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let s = vec![
            Series {
                label: "LoRA".into(),
                group: None,
                points: (0..20)
                    .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                    .collect(),
            },
            Series {
                label: "LoRA+".into(),
                group: None,
                points: (0..20)
                    .map(|i| (i as f64, 0.5 / (1.0 + i as f64)))
                    .collect(),
            },
        ];
        line_plot(
            &dir.path().join("loss"),
            "training loss",
            "step",
            "loss",
            &s,
        )
        .unwrap();
        let svg = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
        assert!(svg.contains("LoRA+") && svg.contains("training loss"));
        let png = std::fs::read(dir.path().join("loss.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(
            png.len() > 5_000,
            "the PNG looks empty ({} bytes)",
            png.len()
        );
    }

    #[test]
    fn members_of_a_group_share_a_hue_and_get_lighter() {
        let c = COLORS[1];
        assert_eq!(lighter(c, 0), c);
        let (a, b) = (lighter(c, 1), lighter(c, 2));
        for (x, y, z) in [(c.0, a.0, b.0), (c.1, a.1, b.1), (c.2, a.2, b.2)] {
            assert!(x <= y && y <= z, "not lighter: {x} {y} {z}");
        }
        assert!(b.0 < 255 && b.1 < 255 && b.2 < 255, "washed out to white");
    }
}
