//! `torchwire-bench chart`: a PNG of throughput against concurrency from a results file.
//!
//! Reads the results file's top-level `"chart"` object (one panel per scenario, each with
//! series of `[x, median, min, max]` points and optional horizontal limits) and draws the
//! panels side by side with plotters' bitmap backend: log-2 x axis ticked at the x values
//! present, a line with points and min–max error bars per series, dashed limits, a legend.
//! Text is drawn with ab_glyph from a TrueType file read at run time (`TORCHWIRE_CHART_FONT`,
//! else DejaVu Sans from Debian's fonts-dejavu-core), so no font is compiled in; a machine
//! without the font fails here with an error, not a blank chart. Owns no measuring: the numbers
//! come from whoever ran the load.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use plotters::prelude::*;
use serde::Deserialize;

/// Width of one panel, in pixels; two panels make a 1600 × 600 PNG.
const PANEL_WIDTH: u32 = 800;
/// Height of the PNG, in pixels.
const HEIGHT: u32 = 600;

/// Flags of `torchwire-bench chart`.
#[derive(Debug, Args, Clone)]
pub struct ChartArgs {
    /// JSON results file with a top-level `"chart"` object.
    #[arg(long)]
    pub results: PathBuf,
    /// PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Where a sans-serif TrueType font is looked for, after `TORCHWIRE_CHART_FONT`.
const FONT_PATHS: [&str; 2] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

/// Registers the chart font as plotters' `sans-serif`, once per process.
fn load_font() -> anyhow::Result<()> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> = std::env::var_os("TORCHWIRE_CHART_FONT")
                .map(PathBuf::from)
                .into_iter()
                .chain(FONT_PATHS.iter().map(PathBuf::from))
                .collect();
            let Some(path) = candidates.iter().find(|p| p.is_file()) else {
                return Err(format!(
                    "no TrueType font for the chart: install fonts-dejavu-core or set TORCHWIRE_CHART_FONT (looked at {candidates:?})"
                ));
            };
            let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a TrueType font", path.display()))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The `"chart"` object of a results file.
#[derive(Debug, Clone, Deserialize)]
pub struct ChartSpec {
    /// Title over all panels.
    pub title: String,
    /// One panel per scenario, drawn left to right.
    pub panels: Vec<Panel>,
}

/// One scenario, e.g. tabular batch 1.
#[derive(Debug, Clone, Deserialize)]
pub struct Panel {
    /// Panel caption.
    pub title: String,
    /// X axis label (concurrency).
    pub x_label: String,
    /// Y axis label (requests/s).
    pub y_label: String,
    /// One line per server or configuration.
    pub series: Vec<Series>,
    /// Horizontal reference lines (e.g. the gRPC floor, the raw forward pass).
    #[serde(default)]
    pub limits: Vec<Limit>,
}

/// One line: `[x, median, min, max]` per point.
#[derive(Debug, Clone, Deserialize)]
pub struct Series {
    /// Legend entry.
    pub label: String,
    /// `[x, median, min, max]`, x > 0.
    pub points: Vec<[f64; 4]>,
}

/// A dashed horizontal line.
#[derive(Debug, Clone, Deserialize)]
pub struct Limit {
    /// Legend entry.
    pub label: String,
    /// Where it is drawn.
    pub y: f64,
}

#[derive(Deserialize)]
struct ResultsFile {
    chart: ChartSpec,
}

/// The `"chart"` object of a results file.
pub fn read_chart(path: &Path) -> anyhow::Result<ChartSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ResultsFile = serde_json::from_str(&text)
        .with_context(|| format!("{}: no valid top-level \"chart\" object", path.display()))?;
    Ok(file.chart)
}

/// Runs `torchwire-bench chart`.
pub fn run_chart(args: &ChartArgs) -> anyhow::Result<()> {
    let spec = read_chart(&args.results)?;
    render_chart(&spec, &args.out)?;
    eprintln!("torchwire-bench chart: wrote {}", args.out.display());
    Ok(())
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];
const LIMIT_COLORS: [RGBColor; 3] = [RGBColor(90, 90, 90), RGBColor(160, 40, 120), RGBColor(20, 120, 120)];

/// Draws `spec` into a PNG at `out`.
pub fn render_chart(spec: &ChartSpec, out: &Path) -> anyhow::Result<()> {
    load_font()?;
    if spec.panels.is_empty() {
        bail!("the chart has no panels");
    }
    for panel in &spec.panels {
        if let Some(p) =
            panel.series.iter().flat_map(|s| &s.points).find(|p| !(p[0] > 0.0 && p.iter().all(|v| v.is_finite())))
        {
            bail!("panel {:?}: point {p:?} needs a positive x (log axis) and finite values", panel.title);
        }
    }
    let panels = spec.panels.len();
    let width = u32::try_from(panels).ok().and_then(|n| n.checked_mul(PANEL_WIDTH)).context("too many panels")?;
    let root = BitMapBackend::new(out, (width, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let body = root.titled(&spec.title, ("sans-serif", 28)).map_err(draw_error)?;
    for (panel, area) in spec.panels.iter().zip(body.split_evenly((1, panels))) {
        draw_panel(panel, &area)?;
    }
    root.present().map_err(draw_error).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn draw_panel(panel: &Panel, area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()> {
    // log2 by hand on a linear axis: whole numbers are the powers of two (1, 2, 4, … 64).
    let mut ticks: Vec<f64> = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p[0].log2())).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    let (x_lo, x_hi) = match (ticks.first(), ticks.last()) {
        (Some(lo), Some(hi)) => (lo - 0.3, hi + 0.3),
        _ => (-0.3, 6.3),
    };
    let y_top = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p[1].max(p[3])))
        .chain(panel.limits.iter().map(|l| l.y))
        .fold(0.0_f64, f64::max);
    let y_hi = if y_top > 0.0 { y_top * 1.15 } else { 1.0 };

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_hi)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_labels((x_hi - x_lo).ceil() as usize + 1)
        .x_max_light_lines(0)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-6 { format!("{}", v.exp2().round()) } else { String::new() }
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(draw_error)?;

    for (i, series) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = series.points.iter().map(|p| (p[0].log2(), p[1])).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(series.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(draw_error)?;
        chart
            .draw_series(
                series
                    .points
                    .iter()
                    .map(|p| ErrorBar::new_vertical(p[0].log2(), p[2], p[1], p[3], color.stroke_width(1), 8)),
            )
            .map_err(draw_error)?;
    }
    for (i, limit) in panel.limits.iter().enumerate() {
        let color = LIMIT_COLORS[i % LIMIT_COLORS.len()];
        chart
            .draw_series(DashedLineSeries::new(vec![(x_lo, limit.y), (x_hi, limit.y)], 8, 6, color.stroke_width(2)))
            .map_err(draw_error)?
            .label(limit.label.as_str())
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (7, 0)], color.stroke_width(2))
                    + PathElement::new(vec![(13, 0), (20, 0)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    Ok(())
}

/// plotters' errors borrow the backend's error type; keep the message only.
fn draw_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "runs": [],
      "chart": {
        "title": "torchwire vs peers",
        "panels": [
          {"title": "tabular, batch 1", "x_label": "concurrency", "y_label": "requests/s",
           "series": [
             {"label": "torchwire", "points": [[1, 3000, 2900, 3100], [4, 7000, 6800, 7300], [8, 8000, 7900, 8200],
                                                [16, 8500, 8300, 8600], [64, 8600, 8400, 8800]]},
             {"label": "python", "points": [[1, 1400, 1350, 1450], [4, 1500, 1480, 1520], [64, 1450, 1400, 1500]]}
           ],
           "limits": [{"label": "gRPC floor", "y": 20000}, {"label": "raw forward", "y": 15000}]},
          {"title": "Sentiment", "x_label": "concurrency", "y_label": "requests/s",
           "series": [{"label": "torchwire", "points": [[1, 100, 95, 104], [16, 180, 170, 190]]}]}
        ]
      }
    }"#;

    fn temp_dir(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("torchwire-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn renders_a_png_from_a_results_file() {
        let dir = temp_dir("chart");
        let results = dir.join("results.json");
        let out = dir.join("chart.png");
        std::fs::write(&results, SAMPLE).unwrap();
        run_chart(&ChartArgs { results, out: out.clone() }).unwrap();
        let png = std::fs::read(&out).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 10_000, "a chart with text and lines is more than {} bytes", png.len());
        // Width and height from the IHDR chunk: two panels side by side.
        assert_eq!(u32::from_be_bytes([png[16], png[17], png[18], png[19]]), 1600);
        assert_eq!(u32::from_be_bytes([png[20], png[21], png[22], png[23]]), 600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_file_without_a_chart_and_a_non_positive_x() {
        let dir = temp_dir("chart-bad");
        let results = dir.join("results.json");
        std::fs::write(&results, r#"{"runs": []}"#).unwrap();
        assert!(read_chart(&results).unwrap_err().to_string().contains("\"chart\""));
        let mut spec: ChartSpec = serde_json::from_str::<ResultsFile>(SAMPLE).unwrap().chart;
        spec.panels[0].series[0].points[0][0] = 0.0;
        let err = render_chart(&spec, &dir.join("x.png")).unwrap_err().to_string();
        assert!(err.contains("positive x"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
