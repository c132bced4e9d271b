//! The toy setting of the LoRA+ paper's analysis (Hayou, Ghosh, Yu 2024, section 3): a linear
//! model `f(x) = (W* + B A) x` of width n, trained with Adam over a grid of (lr_A, lr_B). The
//! paper's claim: for efficient learning lr_B / lr_A must grow with n (as n for Adam), so the
//! best ratio found on the grid should grow with the width.
//!
//! Setting (every choice is a flag):
//! - inputs x in R^n with i.i.d. N(0, 1) entries (Θ(1) coordinates, as in the paper's scaling
//!   analysis), a fixed training set of `--samples` points, full-batch steps;
//! - frozen W* (d_out x n, N(0, 1/n)); teacher y = (W* + B* A*) x with a random rank-`--rank`
//!   update (A* rows N(0, 1/n), B* N(0, 1): the update moves y by Θ(1));
//! - student LoRA of rank `--rank`, initialised as PEFT does: A kaiming-uniform
//!   (U(-1/sqrt(n), 1/sqrt(n))), B = 0, scale 1; trained by the product's LoRA+ AdamW
//!   (`LoraPlusAdamW` with lr = lr_A and ratio = lr_B / lr_A, no weight decay, constant lr);
//! - the score of a grid cell: the training loss (mean squared error / 2) averaged over the last
//!   10% of the steps, then over the seeds (all seeds see the same grid; a diverged run scores
//!   +inf).
//!
//! Heatmap: colour is log10 of the score; red dots mark the near-optimal cells (within 10% of
//! the best), the red square the best cell, the white square the best cell with lr_A = lr_B.
//!
//! Outputs: a heatmap per width (`<img-dir>/toy_n{n}.png`), the best ratio against n
//! (`<img-dir>/toy_best_ratio.png`), and `<out-dir>/toy_results.{md,json}` (the table).
//!
//! ```text
//! cargo run --release -p loraplus-train --example toy_lora_plus -- \
//!     --widths 64,128,256,512,1024,2048,4096 --seeds 5 --steps 100
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use loraplus_train::plots::{line_plot, Series};
use loraplus_train::toy::{ToyConfig, ToyProblem};
use plotters::prelude::*;
use serde::Serialize;

/// A cell is near-optimal when its loss is within this factor of the best (the paper's
/// heatmaps mark the cells within 1%; the seeds here are fewer, so the band is wider).
const NEAR_OPTIMAL: f64 = 1.1;

struct Args {
    widths: Vec<i64>,
    /// log10 of the smallest and largest learning rate of the grid, and its number of points
    /// (the same values on both axes, so the ratio-1 diagonal is in the grid).
    lr_lo: f64,
    lr_hi: f64,
    points: usize,
    steps: usize,
    seeds: u64,
    samples: i64,
    rank: i64,
    d_out: i64,
    /// `relu`: x = ReLU(W_in z) for z in R^input_dim (random features); `gaussian`: x ~ N(0, I_n).
    features: String,
    input_dim: i64,
    threads: i32,
    out_dir: PathBuf,
    img_dir: PathBuf,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        widths: vec![64, 128, 256, 512, 1024, 2048, 4096],
        lr_lo: -5.0,
        lr_hi: 0.0,
        points: 11,
        steps: 100,
        seeds: 5,
        samples: 128,
        rank: 1,
        d_out: 1,
        features: "relu".into(),
        input_dim: 5,
        threads: 1,
        out_dir: PathBuf::from("runs/toy"),
        img_dir: PathBuf::from("docs/img"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num =
            |v: &str| -> Result<f64> { v.parse::<f64>().map_err(|e| anyhow!("{flag} {v}: {e}")) };
        match flag.as_str() {
            "--widths" => {
                a.widths = v
                    .split(',')
                    .map(|w| w.trim().parse::<i64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow!("--widths {v}: {e}"))?
            }
            "--lr-lo" => a.lr_lo = num(&v)?,
            "--lr-hi" => a.lr_hi = num(&v)?,
            "--points" => a.points = num(&v)? as usize,
            "--steps" => a.steps = num(&v)? as usize,
            "--seeds" => a.seeds = num(&v)? as u64,
            "--samples" => a.samples = num(&v)? as i64,
            "--rank" => a.rank = num(&v)? as i64,
            "--d-out" => a.d_out = num(&v)? as i64,
            "--features" if v == "relu" || v == "gaussian" => a.features = v,
            "--features" => bail!("--features {v}: expected relu or gaussian"),
            "--input-dim" => a.input_dim = num(&v)? as i64,
            "--threads" => a.threads = num(&v)? as i32,
            "--out-dir" => a.out_dir = PathBuf::from(v),
            "--img-dir" => a.img_dir = PathBuf::from(v),
            other => bail!("unknown flag {other} (known: --widths --lr-lo --lr-hi --points --steps --seeds --samples --rank --d-out --features --input-dim --threads --out-dir --img-dir)"),
        }
    }
    if a.points < 2 || a.steps < 10 || a.seeds < 1 || a.samples < 1 || a.rank < 1 || a.d_out < 1 {
        bail!("need --points >= 2, --steps >= 10, and --seeds, --samples, --rank, --d-out >= 1");
    }
    if a.widths.iter().any(|&n| n < a.rank) {
        bail!("every width must be at least the rank {}", a.rank);
    }
    Ok(a)
}

/// One width's problem (the library's [`ToyProblem`]) under the flags.
fn toy_config(a: &Args) -> ToyConfig {
    ToyConfig {
        samples: a.samples,
        rank: a.rank,
        d_out: a.d_out,
        relu_features: a.features == "relu",
        input_dim: a.input_dim,
    }
}

#[derive(Serialize)]
struct WidthResult {
    n: i64,
    /// `loss[i][j]`: lr_A = lrs[i], lr_B = lrs[j], mean over seeds.
    loss: Vec<Vec<f64>>,
    best_lr_a: f64,
    best_lr_b: f64,
    best_ratio: f64,
    best_loss: f64,
    /// The best cell with lr_A = lr_B (plain LoRA).
    lora_lr: f64,
    lora_loss: f64,
    /// The near-optimal cells (loss within `NEAR_OPTIMAL` of the best): their number, the
    /// smallest and largest ratio, and the geometric mean ratio.
    near_optimal: usize,
    near_ratio_range: (f64, f64),
    near_ratio_geomean: f64,
    /// n · lr_A · lr_B, geometric mean over the near-optimal cells (the paper's condition
    /// that B ΔA x be Θ(1) says lr_A · lr_B ∝ 1/n, so this stays put when n changes).
    near_n_product_geomean: f64,
}

#[derive(Serialize)]
struct ToyResults {
    lrs: Vec<f64>,
    steps: usize,
    seeds: u64,
    samples: i64,
    rank: i64,
    d_out: i64,
    features: String,
    input_dim: i64,
    widths: Vec<WidthResult>,
    seconds: f64,
}

/// A viridis-like colour for t in [0, 1].
fn colour(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn lr_label(lr: f64) -> String {
    format!("{lr:.0e}")
}

/// The heatmap of log10(loss) over the (lr_A, lr_B) grid, the best cell outlined in red and
/// the best ratio-1 cell in white.
fn heatmap(path: &Path, r: &WidthResult, lrs: &[f64], steps: usize) -> Result<()> {
    let g = lrs.len();
    let logs: Vec<f64> = r
        .loss
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .map(|v| v.max(1e-12).log10())
        .collect();
    let lo = logs.iter().copied().fold(f64::MAX, f64::min);
    let hi = logs.iter().copied().fold(f64::MIN, f64::max).min(lo + 8.0);
    let root = BitMapBackend::new(path, (760, 640)).into_drawing_area();
    let e = |e: &dyn std::fmt::Debug| anyhow!("{}: {e:?}", path.display());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (main, bar) = root.split_horizontally(660);
    let mut chart = ChartBuilder::on(&main)
        .caption(
            format!(
                "n = {}: log10 train loss after {steps} Adam steps (best ratio {:.3})",
                r.n, r.best_ratio
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..g as f64 - 0.5, -0.5f64..g as f64 - 0.5)
        .map_err(|x| e(&x))?;
    let label = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < lrs.len() {
            lr_label(lrs[i as usize])
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(g)
        .y_labels(g)
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .x_desc("lr_A")
        .y_desc("lr_B")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|x| e(&x))?;
    let cells = (0..g).flat_map(|i| (0..g).map(move |j| (i, j)));
    chart
        .draw_series(cells.map(|(i, j)| {
            let v = r.loss[i][j];
            let c = if v.is_finite() {
                colour((v.max(1e-12).log10() - lo) / (hi - lo).max(1e-9))
            } else {
                RGBColor(160, 160, 160)
            };
            let (x, y) = (i as f64, j as f64);
            Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], c.filled())
        }))
        .map_err(|x| e(&x))?;
    let best = r.best_loss;
    chart
        .draw_series(
            (0..g)
                .flat_map(|i| (0..g).map(move |j| (i, j)))
                .filter(|&(i, j)| r.loss[i][j] <= NEAR_OPTIMAL * best)
                .map(|(i, j)| Circle::new((i as f64, j as f64), 4, RED.filled())),
        )
        .map_err(|x| e(&x))?;
    let find = |lr: f64| {
        lrs.iter()
            .position(|&v| (v / lr - 1.0).abs() < 1e-9)
            .unwrap_or(0) as f64
    };
    for (lr_a, lr_b, colour) in [
        (r.lora_lr, r.lora_lr, WHITE),
        (r.best_lr_a, r.best_lr_b, RED),
    ] {
        let (x, y) = (find(lr_a), find(lr_b));
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                colour.stroke_width(3),
            )))
            .map_err(|x| e(&x))?;
    }
    // The colour bar: log10 loss from lo (bottom) to hi (top); grey cells diverged.
    let mut cb = ChartBuilder::on(&bar)
        .margin_top(40)
        .margin_bottom(60)
        .margin_right(10)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..1.0, lo..hi)
        .map_err(|x| e(&x))?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|x| e(&x))?;
    let k = 64;
    cb.draw_series((0..k).map(|s| {
        let (a, b) = (s as f64 / k as f64, (s + 1) as f64 / k as f64);
        Rectangle::new(
            [(0.0, lo + a * (hi - lo)), (1.0, lo + b * (hi - lo))],
            colour((a + b) / 2.0).filled(),
        )
    }))
    .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

fn mean_point(p: &[(f64, f64)]) -> (f64, f64) {
    let n = p.len().max(1) as f64;
    (
        p.iter().map(|q| q.0).sum::<f64>() / n,
        p.iter().map(|q| q.1).sum::<f64>() / n,
    )
}

/// Least-squares slope of y on x.
fn slope(p: &[(f64, f64)]) -> f64 {
    let (mx, my) = mean_point(p);
    let sxy: f64 = p.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
    let sxx: f64 = p.iter().map(|q| (q.0 - mx).powi(2)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        f64::NAN
    }
}

fn register_font() {
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
}

fn main() -> Result<()> {
    let a = parse()?;
    tch::set_num_threads(a.threads);
    register_font();
    let g = a.points;
    let lrs: Vec<f64> = (0..g)
        .map(|i| 10f64.powf(a.lr_lo + (a.lr_hi - a.lr_lo) * i as f64 / (g - 1) as f64))
        .collect();
    std::fs::create_dir_all(&a.out_dir)?;
    std::fs::create_dir_all(&a.img_dir)?;
    let t0 = Instant::now();
    let mut results = Vec::new();
    for &n in &a.widths {
        let tn = Instant::now();
        let mut loss = vec![vec![0.0; g]; g];
        for seed in 0..a.seeds {
            let p = ToyProblem::new(n, &toy_config(&a), seed);
            for (i, &lr_a) in lrs.iter().enumerate() {
                for (j, &lr_b) in lrs.iter().enumerate() {
                    loss[i][j] += p.train(lr_a, lr_b, a.steps, seed)? / a.seeds as f64;
                }
            }
        }
        let mut best = (0, 0);
        for i in 0..g {
            for j in 0..g {
                if loss[i][j] < loss[best.0][best.1] {
                    best = (i, j);
                }
            }
        }
        let diag = (0..g)
            .min_by(|&i, &j| loss[i][i].total_cmp(&loss[j][j]))
            .unwrap_or(0);
        let best_loss = loss[best.0][best.1];
        let (mut range, mut log_sum, mut log_prod, mut count) = ((f64::MAX, f64::MIN), 0.0, 0.0, 0);
        for i in 0..g {
            for j in 0..g {
                if loss[i][j] <= NEAR_OPTIMAL * best_loss {
                    let q = lrs[j] / lrs[i];
                    range = (range.0.min(q), range.1.max(q));
                    log_sum += q.ln();
                    log_prod += (n as f64 * lrs[i] * lrs[j]).ln();
                    count += 1;
                }
            }
        }
        let r = WidthResult {
            n,
            best_lr_a: lrs[best.0],
            best_lr_b: lrs[best.1],
            best_ratio: lrs[best.1] / lrs[best.0],
            best_loss,
            lora_lr: lrs[diag],
            lora_loss: loss[diag][diag],
            near_optimal: count,
            near_ratio_range: range,
            near_ratio_geomean: (log_sum / count.max(1) as f64).exp(),
            near_n_product_geomean: (log_prod / count.max(1) as f64).exp(),
            loss,
        };
        heatmap(&a.img_dir.join(format!("toy_n{n}.png")), &r, &lrs, a.steps)?;
        eprintln!(
            "n = {n}: best lr_A {:.2e}, lr_B {:.2e}, ratio {:.3} (loss {:.3e}); best LoRA lr {:.2e} (loss {:.3e}); {:.1} s",
            r.best_lr_a,
            r.best_lr_b,
            r.best_ratio,
            r.best_loss,
            r.lora_lr,
            r.lora_loss,
            tn.elapsed().as_secs_f64()
        );
        results.push(r);
    }
    let log_n: Vec<f64> = results.iter().map(|r| (r.n as f64).log2()).collect();
    let series = |label: &str, f: &dyn Fn(&WidthResult) -> f64| Series {
        label: label.into(),
        group: None,
        points: results
            .iter()
            .zip(&log_n)
            .map(|(r, &x)| (x, f(r).log2()))
            .collect(),
    };
    let best = series("best lr_B / lr_A", &|r| r.best_ratio);
    let near = series("lr_B / lr_A, geometric mean of near-optimal cells", &|r| {
        r.near_ratio_geomean
    });
    let product = series("n lr_A lr_B, geometric mean of near-optimal cells", &|r| {
        r.near_n_product_geomean
    });
    let slopes = [&best, &near, &product].map(|s| slope(&s.points));
    // The paper's prediction for the ratio: slope 1, drawn through the best ratios' mean.
    let (mx, my) = mean_point(&best.points);
    let reference = Series {
        label: "slope 1 (ratio proportional to n)".into(),
        group: None,
        points: log_n.iter().map(|&x| (x, my + x - mx)).collect(),
    };
    line_plot(
        &a.img_dir.join("toy_best_ratio"),
        "toy model: learning rates of the best cells against width",
        "log2 n",
        "log2",
        &[best, near, product, reference],
    )?;
    let mut md = format!(
        "| n | best lr_A | best lr_B | best ratio lr_B/lr_A | loss at best | near-optimal cells (loss within {NEAR_OPTIMAL}x) | their ratios | their geometric-mean ratio | their geometric-mean n·lr_A·lr_B | best LoRA (ratio 1) lr | its loss | loss(LoRA) / loss(best) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in &results {
        md.push_str(&format!(
            "| {} | {:.1e} | {:.1e} | {:.3} | {:.2e} | {} | {:.3} – {:.3} | {:.3} | {:.3} | {:.1e} | {:.2e} | {:.2} |\n",
            r.n,
            r.best_lr_a,
            r.best_lr_b,
            r.best_ratio,
            r.best_loss,
            r.near_optimal,
            r.near_ratio_range.0,
            r.near_ratio_range.1,
            r.near_ratio_geomean,
            r.near_n_product_geomean,
            r.lora_lr,
            r.lora_loss,
            r.lora_loss / r.best_loss
        ));
    }
    md.push_str(&format!(
        "\nLeast-squares slope against log2 n: log2 best ratio {:.2}, log2 near-optimal ratio {:.2}, log2 n·lr_A·lr_B {:.2} (the paper predicts 1 for the ratio, 0 for n·lr_A·lr_B).\n",
        slopes[0], slopes[1], slopes[2]
    ));
    let out = ToyResults {
        lrs,
        steps: a.steps,
        seeds: a.seeds,
        samples: a.samples,
        rank: a.rank,
        d_out: a.d_out,
        features: a.features.clone(),
        input_dim: a.input_dim,
        widths: results,
        seconds: t0.elapsed().as_secs_f64(),
    };
    std::fs::write(a.out_dir.join("toy_results.md"), &md)?;
    std::fs::write(
        a.out_dir.join("toy_results.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    println!("{md}");
    println!(
        "{} widths, {}x{} grid, {} seeds, {} steps: {:.1} s; heatmaps in {}, table in {}",
        out.widths.len(),
        g,
        g,
        a.seeds,
        a.steps,
        out.seconds,
        a.img_dir.display(),
        a.out_dir.join("toy_results.md").display()
    );
    Ok(())
}
