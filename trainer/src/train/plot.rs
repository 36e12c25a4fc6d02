//! `loss.png` and `loss.svg`: training loss (every step) and validation loss (each evaluation)
//! against the step; for `compare`, every recipe's mean curves above and their difference to the
//! baseline, with the band of the seeds, below. Text is drawn with the committed DejaVu Sans (`assets/`, Bitstream Vera
//! licence), so no system font library is needed.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use super::run_dir::{Fp8StatsRow, MetricsRow};
use crate::error::Error;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// One curve: label and (step, loss) points.
pub struct Curve<'a> {
    pub label: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// The train and validation curves of a run's metrics.
pub fn curves_of(rows: &[MetricsRow], prefix: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    let pick = |f: fn(&MetricsRow) -> Option<f32>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| {
                f(r).filter(|v| v.is_finite())
                    .map(|v| (r.step as f64, v as f64))
            })
            .collect()
    };
    vec![
        (format!("{prefix}train"), pick(|r| r.train_loss)),
        (format!("{prefix}validation"), pick(|r| r.val_loss)),
    ]
}

/// Size of the plots in pixels.
const SIZE: (u32, u32) = (1000, 600);

/// Draws `curves` into `dir/loss.png` and `dir/loss.svg`. Both are drawn in memory and written
/// atomically (`datasets::atomic`), like every file of a run: a crash never leaves half a plot,
/// and a symbolic link planted at either name is replaced, not followed.
pub fn draw_loss(dir: &Path, title: &str, curves: &[Curve<'_>]) -> Result<(), Error> {
    render(dir, "loss", SIZE, &LossFigure { title, curves })
}

/// A figure drawn on any plotters backend (the PNG's bitmap, the SVG).
trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static;
}

/// Draws `figure` of `size` into `dir/{stem}.png` and `dir/{stem}.svg`, each in memory, then
/// written atomically.
fn render(dir: &Path, stem: &str, size: (u32, u32), figure: &impl Figure) -> Result<(), Error> {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let failed = |e: &dyn std::fmt::Display| Error::Plot {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        (figure.draw(&root).and_then(|_| root.present())).map_err(|e| failed(&e))?;
    }
    let png = encode_png(&rgb, size).map_err(|e| failed(&e))?;
    let path = dir.join(format!("{stem}.png"));
    datasets::atomic::write_atomic(&path, &png).map_err(Error::io(&path))?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        (figure.draw(&root).and_then(|_| root.present())).map_err(|e| failed(&e))?;
    }
    let path = dir.join(format!("{stem}.svg"));
    datasets::atomic::write_atomic(&path, svg.as_bytes()).map_err(Error::io(&path))
}

/// An 8-bit RGB image of `size` as PNG bytes.
fn encode_png(rgb: &[u8], size: (u32, u32)) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

/// matplotlib's `tab10`, cycled.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A run's `loss.png`: every curve in one panel.
struct LossFigure<'a> {
    title: &'a str,
    curves: &'a [Curve<'a>],
}

impl Figure for LossFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let points = || self.curves.iter().flat_map(|c| c.points.iter());
        let x_max = points().map(|p| p.0).fold(1.0f64, f64::max);
        let (y_min, y_max) = bounds(points().map(|p| p.1));
        let pad = ((y_max - y_min) * 0.05).max(1e-3);
        let y = (y_min - pad)..(y_max + pad);
        let mut chart = axes(root, Some(self.title), x_max, y, "loss (nats/token)", None)?;
        for (i, curve) in self.curves.iter().enumerate() {
            let style = ShapeStyle::from(&COLORS[i % COLORS.len()]).stroke_width(2);
            chart
                .draw_series(LineSeries::new(curve.points.iter().copied(), style))?
                .label(curve.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        legend(&mut chart)
    }
}

/// A chart on `area` (with `caption` above it), steps 0 ..= `x_max` across and `y` up, with
/// its axes drawn (`y_label` formats the y ticks; default: the value).
fn axes<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: Option<&str>,
    x_max: f64,
    y: Range<f64>,
    y_desc: &str,
    y_label: Option<&dyn Fn(&f64) -> String>,
) -> Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>>
where
    DB::ErrorType: 'static,
{
    let mut builder = ChartBuilder::on(area);
    if let Some(caption) = caption {
        builder.caption(caption, ("sans-serif", 24));
    }
    let mut chart = builder
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, y)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_desc)
        .label_style(("sans-serif", 15));
    if let Some(format) = y_label {
        mesh.y_label_formatter(format);
    }
    mesh.draw()?;
    Ok(chart)
}

/// A chart of steps against losses.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The lowest and highest of `values` ((0, 1) when there are none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// The legend of the labelled series, top right.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB::ErrorType: 'static,
{
    legend_at(chart, SeriesLabelPosition::UpperRight)
}

/// The legend of the labelled series at `position`.
fn legend_at<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
}

/// One recipe of a `compare` plot, over its seeds.
pub struct RecipeCurves {
    pub label: String,
    /// (step, mean training loss).
    pub train: Vec<(f64, f64)>,
    /// (step, mean validation loss) at the evaluations.
    pub val: Vec<(f64, f64)>,
    /// (step, mean, min, max) over seeds of the validation loss minus the baseline run's of
    /// the same seed; empty for the baseline.
    pub gap: Vec<(f64, f64, f64, f64)>,
}

/// Size of the `compare` plot: the loss panel above, the gap panel below.
const COMPARE_SIZE: (u32, u32) = (1000, 1000);
/// Height of the loss panel.
const LOSS_PANEL_HEIGHT: u32 = 580;

/// The `compare` plot in `dir/loss.png` and `dir/loss.svg`: above, every recipe's mean
/// validation loss (points at the evaluations; its training loss faint), on a log axis with
/// `log_y`; below, each recipe's validation loss minus the baseline's (the first recipe), the
/// band of its seeds shaded. Written atomically, as [`draw_loss`].
pub fn draw_compare(
    dir: &Path,
    title: &str,
    recipes: &[RecipeCurves],
    log_y: bool,
) -> Result<(), Error> {
    let figure = CompareFigure {
        title,
        recipes,
        log_y,
    };
    render(dir, "loss", COMPARE_SIZE, &figure)
}

struct CompareFigure<'a> {
    title: &'a str,
    recipes: &'a [RecipeCurves],
    log_y: bool,
}

impl Figure for CompareFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(LOSS_PANEL_HEIGHT);
        let x_max = (self.recipes.iter())
            .flat_map(|r| r.train.iter().chain(&r.val))
            .map(|p| p.0)
            .fold(1.0f64, f64::max);
        self.loss_panel(&top, x_max)?;
        self.gap_panel(&bottom, x_max)
    }
}

impl CompareFigure<'_> {
    /// Every recipe's mean validation curve, points at the evaluations, its training curve
    /// faint. A log axis is drawn as ln(loss) on a linear one, ticks labelled with the loss
    /// (plotters' own log axis puts no tick inside a range narrower than a decade).
    fn loss_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        x_max: f64,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static,
    {
        let scale = |points: &[(f64, f64)]| -> Vec<(f64, f64)> {
            (points.iter())
                .map(|&(x, y)| (x, if self.log_y { y.ln() } else { y }))
                .filter(|p| p.1.is_finite())
                .collect()
        };
        let curves: Vec<[Vec<(f64, f64)>; 2]> = (self.recipes.iter())
            .map(|r| [scale(&r.train), scale(&r.val)])
            .collect();
        let (lo, hi) = bounds(curves.iter().flatten().flatten().map(|p| p.1));
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let (y_desc, loss_of): (_, &dyn Fn(&f64) -> String) = if self.log_y {
            ("loss (nats/token, log scale)", &|v| {
                format!("{:.3}", v.exp())
            })
        } else {
            ("loss (nats/token)", &|v| format!("{v:.3}"))
        };
        let y = (lo - pad)..(hi + pad);
        let mut chart = axes(area, Some(self.title), x_max, y, y_desc, Some(loss_of))?;
        for (i, (recipe, [train, val])) in self.recipes.iter().zip(&curves).enumerate() {
            let color = COLORS[i % COLORS.len()];
            let faint = ShapeStyle::from(&color.mix(0.3)).stroke_width(1);
            chart.draw_series(LineSeries::new(train.iter().copied(), faint))?;
            let style = ShapeStyle::from(&color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(val.iter().copied(), style))?
                .label(format!("{} validation (train faint)", recipe.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        legend(&mut chart)
    }

    fn gap_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        x_max: f64,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static,
    {
        let base = self
            .recipes
            .first()
            .map_or("baseline", |b| b.label.as_str());
        let on_scale = on_gap_scale(self.recipes);
        let gaps = || {
            (self.recipes.iter().zip(&on_scale))
                .filter(|(_, &shown)| shown)
                .flat_map(|(r, _)| r.gap.iter())
        };
        let values = gaps().flat_map(|&(_, mean, lo, hi)| [mean, lo, hi]);
        let (lo, hi) = bounds(values.chain([0.0]));
        let pad = ((hi - lo) * 0.05).max(1e-4);
        let y_desc = format!("val loss - {base} (nats)");
        let mut chart = axes(area, None, x_max, (lo - pad)..(hi + pad), &y_desc, None)?;
        let zero = ShapeStyle::from(&BLACK).stroke_width(1);
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (x_max, 0.0)], zero))?
            .label(base.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], zero));
        for (i, recipe) in self.recipes.iter().enumerate().skip(1) {
            let color = COLORS[i % COLORS.len()];
            if !on_scale[i] {
                // Listed with its largest gap, not drawn: it would flatten every other curve.
                let extent = gap_extent(recipe);
                let style = ShapeStyle::from(&color.mix(0.5)).stroke_width(2);
                chart
                    .draw_series(LineSeries::new(std::iter::empty::<(f64, f64)>(), style))?
                    .label(format!(
                        "{}: off this scale (gap up to {extent:.3})",
                        recipe.label
                    ))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                continue;
            }
            if recipe.gap.iter().any(|&(_, _, lo, hi)| hi > lo) {
                let upper = recipe.gap.iter().map(|&(x, _, _, hi)| (x, hi));
                let lower = recipe.gap.iter().rev().map(|&(x, _, lo, _)| (x, lo));
                let band = Polygon::new(
                    upper.chain(lower).collect::<Vec<_>>(),
                    color.mix(0.2).filled(),
                );
                chart.draw_series(std::iter::once(band))?;
            }
            let style = ShapeStyle::from(&color).stroke_width(2);
            let means = || recipe.gap.iter().map(|&(x, mean, _, _)| (x, mean));
            chart
                .draw_series(LineSeries::new(means(), style))?
                .label(format!(
                    "{} - {base} (band: min..max over seeds)",
                    recipe.label
                ))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(means().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        // Gaps usually grow over training from the left: the upper left is where they are not.
        legend_at(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}

/// A recipe whose largest gap exceeds this many times the median recipe's is left off the gap
/// panel's scale (listed in its legend with its largest gap): a failing FP8-CSCALE bias is
/// 100x further from the baseline than the recipes a user compares, and would flatten them.
const GAP_OFF_SCALE: f64 = 10.0;

/// Gaps up to this many nats are always drawn to scale (a median of exactly 0, recipes equal to
/// the baseline, must not push a 0.001-nat recipe off the panel).
const GAP_SCALE_FLOOR: f64 = 1e-3;

/// The largest |gap| of a recipe over its evaluations and seeds (0 without a finite one).
fn gap_extent(recipe: &RecipeCurves) -> f64 {
    (recipe.gap.iter())
        .flat_map(|&(_, mean, lo, hi)| [mean, lo, hi])
        .filter(|v| v.is_finite())
        .fold(0.0, |m, v| m.max(v.abs()))
}

/// Which recipes the gap panel draws to scale (the baseline, first, always): those whose
/// largest gap is at most [`GAP_OFF_SCALE`] times the median of the others' largest gaps.
fn on_gap_scale(recipes: &[RecipeCurves]) -> Vec<bool> {
    let extents: Vec<f64> = recipes.iter().skip(1).map(gap_extent).collect();
    let mut sorted = extents.clone();
    sorted.sort_by(f64::total_cmp);
    let Some(&median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
        return vec![true; recipes.len()];
    };
    let limit = (median * GAP_OFF_SCALE).max(GAP_SCALE_FLOOR);
    std::iter::once(true)
        .chain(extents.into_iter().map(|e| e <= limit))
        .collect()
}

/// Size of the FP8 telemetry figure: a heatmap per role above, the loss fractions below.
const FP8_SIZE: (u32, u32) = (1200, 1150);
/// Height of each role's heatmap.
const HEATMAP_HEIGHT: u32 = 260;
/// The roles in the order the figure shows them.
const ROLES: [&str; 3] = ["weight", "activation", "gradient"];

/// `dir/fp8_stats.png` and `dir/fp8_stats.svg` from a run's `fp8_stats.csv` rows, like the
/// paper's figures: for each role, the scale bias of every FP8 layer (rows, forward order)
/// at every statistics step (columns), as a colour; below, each role's worst layer's underflow
/// (non-zero values cast to zero) and saturation (values clipped to the format's max)
/// fractions over training. Nothing is drawn without rows.
pub fn draw_fp8_stats(dir: &Path, title: &str, rows: &[Fp8StatsRow]) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut layers: Vec<&str> = Vec::new();
    for r in rows {
        if !layers.contains(&r.layer.as_str()) {
            layers.push(&r.layer);
        }
    }
    let mut steps: Vec<u64> = rows.iter().map(|r| r.step).collect();
    steps.sort_unstable();
    steps.dedup();
    let figure = Fp8Figure {
        title,
        rows,
        layers,
        steps,
    };
    render(dir, "fp8_stats", FP8_SIZE, &figure)
}

struct Fp8Figure<'a> {
    title: &'a str,
    rows: &'a [Fp8StatsRow],
    layers: Vec<&'a str>,
    steps: Vec<u64>,
}

/// A bias as a colour of a dark-blue-to-yellow ramp over the figure's range (viridis' ends and
/// middle, interpolated).
fn bias_color(bias: i32, (lo, hi): (i32, i32)) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 3] = [
        (0.0, [68.0, 1.0, 84.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    let t = if hi > lo {
        f64::from(bias - lo) / f64::from(hi - lo)
    } else {
        0.5
    };
    let (a, b) = if t <= 0.5 {
        (STOPS[0], STOPS[1])
    } else {
        (STOPS[1], STOPS[2])
    };
    let u = (t - a.0) / (b.0 - a.0);
    let c = |i: usize| (a.1[i] + u * (b.1[i] - a.1[i])).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

impl Figure for Fp8Figure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!("{}: FP8 scale bias per layer and step", self.title),
            ("sans-serif", 22),
        )?;
        let (maps, fractions) = root.split_vertically(3 * HEATMAP_HEIGHT);
        let panels = maps.split_evenly((3, 1));
        for (panel, role) in panels.iter().zip(ROLES) {
            self.heatmap(panel, role)?;
        }
        self.fractions(&fractions)
    }
}

impl Fp8Figure<'_> {
    /// Half the spacing of the statistics steps: each step's column spans it either side.
    fn half_width(&self) -> f64 {
        let gaps = self.steps.windows(2).map(|w| (w[1] - w[0]) as f64);
        gaps.fold(f64::INFINITY, f64::min).min(1e9) / 2.0
    }

    fn x_range(&self) -> Range<f64> {
        let half = if self.steps.len() > 1 {
            self.half_width()
        } else {
            0.5
        };
        let first = *self.steps.first().expect("rows") as f64;
        let last = *self.steps.last().expect("rows") as f64;
        (first - half)..(last + half)
    }

    /// One role's biases: layers up, steps across.
    fn heatmap<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        role: &str,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static,
    {
        let n = self.layers.len();
        let names = |v: &f64| {
            let i = v.round();
            let ok = (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n;
            ok.then(|| self.layers[i as usize].to_string())
                .unwrap_or_default()
        };
        let biases = || self.rows.iter().filter(|r| r.role == role).map(|r| r.bias);
        let range = (biases().min().unwrap_or(0), biases().max().unwrap_or(0));
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{role}s: bias {} (dark blue) .. {} (yellow)",
                    range.0, range.1
                ),
                ("sans-serif", 17),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(130)
            .build_cartesian_2d(self.x_range(), -0.5f64..(n as f64 - 0.5))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .y_labels(n.min(16))
            .y_label_formatter(&names)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 12))
            .draw()?;
        let half = if self.steps.len() > 1 {
            self.half_width()
        } else {
            0.5
        };
        let cells = (self.rows.iter().filter(|r| r.role == role)).filter_map(|r| {
            let y = self.layers.iter().position(|l| *l == r.layer)? as f64;
            let x = r.step as f64;
            let color = bias_color(r.bias, range);
            Some(Rectangle::new(
                [(x - half, y - 0.5), (x + half, y + 0.5)],
                color.filled(),
            ))
        });
        chart.draw_series(cells)?;
        Ok(())
    }

    /// Each role's largest underflow and saturation fraction over its layers, at each step.
    fn fractions<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB::ErrorType: 'static,
    {
        let worst = |role: &str, f: fn(&Fp8StatsRow) -> f32| -> Vec<(f64, f64)> {
            (self.steps.iter())
                .map(|&step| {
                    let values = self
                        .rows
                        .iter()
                        .filter(|r| r.step == step && r.role == role);
                    let max = values.map(|r| f64::from(f(r))).fold(0.0, f64::max);
                    (step as f64, max)
                })
                .collect()
        };
        let series: Vec<(String, Vec<(f64, f64)>, usize, bool)> = (ROLES.iter().enumerate())
            .flat_map(|(i, role)| {
                [
                    (
                        format!("{role} underflow (worst layer)"),
                        worst(role, |r| r.underflow_frac),
                        i,
                        true,
                    ),
                    (
                        format!("{role} saturation (worst layer)"),
                        worst(role, |r| r.saturated_frac),
                        i,
                        false,
                    ),
                ]
            })
            .collect();
        let (_, hi) = bounds(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)));
        let top = (hi * 1.08).max(1e-4);
        let y = 0.0..top;
        // Enough decimals to tell the ticks apart (about ten of them up to `top`).
        let digits = (-(100.0 * top / 10.0).log10()).ceil().clamp(0.0, 6.0) as usize;
        let percent = move |v: &f64| format!("{:.digits$}%", 100.0 * v);
        let mut chart = ChartBuilder::on(area)
            .caption("underflow and saturation", ("sans-serif", 17))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(130)
            .build_cartesian_2d(self.x_range(), y)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("fraction of the tensor")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&percent)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (label, points, color, underflow) in &series {
            let color = COLORS[(color * 3) % COLORS.len()];
            let style = if *underflow {
                ShapeStyle::from(&color).stroke_width(2)
            } else {
                ShapeStyle::from(&color.mix(0.6)).stroke_width(1)
            };
            let marker = *underflow;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            if !marker {
                chart.draw_series(
                    (points.iter()).map(|&p| TriangleMarker::new(p, 4, color.mix(0.6).filled())),
                )?;
            }
        }
        legend(&mut chart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(label: &str, gaps: &[(f64, f64, f64)]) -> RecipeCurves {
        RecipeCurves {
            label: label.into(),
            train: vec![],
            val: vec![],
            gap: (gaps.iter().enumerate())
                .map(|(i, &(mean, lo, hi))| (i as f64, mean, lo, hi))
                .collect(),
        }
    }

    #[test]
    fn gaps_far_beyond_the_median_recipe_leave_the_scale() {
        let recipes = [
            recipe("fp32", &[]),
            recipe("fp8-amax", &[(0.005, 0.004, 0.006)]),
            recipe("fp8-delayed", &[(0.006, 0.005, 0.0061)]),
            recipe("cscale-b0", &[(0.01, 0.01, 0.013)]),
            recipe("cscale-b8", &[(0.5, 0.4, 0.55)]),
            recipe("cscale-b12", &[(f64::NAN, -2.6, 1.0)]),
        ];
        assert_eq!(gap_extent(&recipes[3]), 0.013);
        assert_eq!(
            gap_extent(&recipes[5]),
            2.6,
            "non-finite ignored, negative counted"
        );
        assert_eq!(
            on_gap_scale(&recipes),
            [true, true, true, true, false, false]
        );
    }

    #[test]
    fn close_recipes_all_stay_on_scale() {
        let recipes = [
            recipe("fp32", &[]),
            recipe("a", &[(0.0, 0.0, 0.0)]),
            recipe("b", &[(0.0, 0.0, 0.0)]),
            recipe("c", &[(0.0009, 0.0, 0.0009)]),
        ];
        assert_eq!(on_gap_scale(&recipes), [true; 4], "the floor keeps c");
        assert_eq!(on_gap_scale(&recipes[..1]), [true], "the baseline alone");
        let two = [recipe("fp32", &[]), recipe("a", &[(0.2, 0.1, 0.3)])];
        assert_eq!(
            on_gap_scale(&two),
            [true, true],
            "one recipe is its own median"
        );
    }
}
