//! Plots of training runs, as SVG and PNG: training loss and the dev metric against step, with
//! several runs (e.g. LoRA and LoRA+) overlaid. Text uses the embedded DejaVu Sans font, so no
//! system font is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

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
    let svg = base.with_extension("svg");
    draw(
        SVGBackend::new(&svg, (800, 500)).into_drawing_area(),
        title,
        x_label,
        y_label,
        series,
    )?;
    let png = base.with_extension("png");
    draw(
        BitMapBackend::new(&png, (800, 500)).into_drawing_area(),
        title,
        x_label,
        y_label,
        series,
    )?;
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
