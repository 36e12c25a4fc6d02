//! `loss.png` and `loss.svg`: training loss (every step) and validation loss (each evaluation)
//! against the step. Text is drawn with the committed DejaVu Sans (`assets/`, Bitstream Vera
//! licence), so no system font library is needed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::run_dir::MetricsRow;
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
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let failed = |e: &dyn std::fmt::Display| Error::Plot {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        (draw(&root, title, curves).and_then(|_| root.present())).map_err(|e| failed(&e))?;
    }
    let png = encode_png(&rgb).map_err(|e| failed(&e))?;
    let path = dir.join("loss.png");
    datasets::atomic::write_atomic(&path, &png).map_err(Error::io(&path))?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        (draw(&root, title, curves).and_then(|_| root.present())).map_err(|e| failed(&e))?;
    }
    let path = dir.join("loss.svg");
    datasets::atomic::write_atomic(&path, svg.as_bytes()).map_err(Error::io(&path))
}

/// An 8-bit RGB image of [`SIZE`] as PNG bytes.
fn encode_png(rgb: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, SIZE.0, SIZE.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    curves: &[Curve<'_>],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let all = curves.iter().flat_map(|c| c.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("loss (nats/token)")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, curve) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = ShapeStyle::from(&color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(curve.points.iter().copied(), style))?
            .label(curve.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    Ok(())
}
