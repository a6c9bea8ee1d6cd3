//! PNG charts of training histories with plotters (fonts embedded, so no system fonts needed).

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// One line on a chart: a label and (round, value) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu ships inside the `dejavu` crate; registering it makes charts render the same
        // on machines without fontconfig.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws test accuracy (left) and test loss (right) against the round for every series.
pub fn accuracy_and_loss(path: &Path, title: &str, accuracy: &[Series], loss: &[Series]) -> Result<()> {
    register_fonts();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let (left, right) = root.split_horizontally(700);
    panel(&left, "test accuracy", accuracy, true)?;
    panel(&right, "test loss", loss, false)?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    y_label: &str,
    series: &[Series],
    is_accuracy: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let all = || series.iter().flat_map(|s| s.points.iter());
    let max_x = all().map(|p| p.0).fold(1.0, f64::max);
    let (mut lo, mut hi) =
        all().map(|p| p.1).filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    if lo > hi {
        return Err(anyhow!("nothing to plot"));
    }
    if is_accuracy {
        hi = 1.0_f64.min(hi + 0.02);
        lo = (lo - 0.02).max(0.0);
    } else {
        let pad = (hi - lo).max(1e-3) * 0.05;
        lo = (lo - pad).max(0.0);
        hi += pad;
    }
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, lo..hi)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(if is_accuracy { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// One configuration on a trade-off chart: its cost (x) and final accuracy (y).
pub struct TradeoffPoint {
    pub label: String,
    pub x: f64,
    pub accuracy: f64,
}

/// Final accuracy against a cost (ε, bytes per round) on a log x axis, one labelled point per
/// configuration.
pub fn tradeoff(path: &Path, title: &str, x_label: &str, points: &[TradeoffPoint]) -> Result<()> {
    register_fonts();
    let finite: Vec<&TradeoffPoint> = points.iter().filter(|p| p.x.is_finite() && p.x > 0.0).collect();
    let (x_lo, x_hi) = finite.iter().fold((f64::MAX, f64::MIN), |(l, h), p| (l.min(p.x), h.max(p.x)));
    if finite.is_empty() {
        return Err(anyhow!("nothing to plot"));
    }
    let (x_lo, x_hi) = (x_lo / 1.5, x_hi * 1.5);
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..1.0)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("final test accuracy")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    let mut sorted = finite.clone();
    sorted.sort_by(|a, b| a.x.total_cmp(&b.x));
    chart
        .draw_series(LineSeries::new(sorted.iter().map(|p| (p.x, p.accuracy)), BLUE.mix(0.4).stroke_width(1)))
        .map_err(|e| anyhow!("{e:?}"))?;
    for p in &sorted {
        chart
            .draw_series(std::iter::once(Circle::new((p.x, p.accuracy), 5, BLUE.filled())))
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{} ({:.1}%)", p.label, p.accuracy * 100.0),
                (p.x, (p.accuracy - 0.04).max(0.02)),
                ("sans-serif", 13),
            )))
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    // Points without a finite cost (ε = ∞: no noise) are drawn as a reference line.
    for p in points.iter().filter(|p| !(p.x.is_finite() && p.x > 0.0)) {
        chart
            .draw_series(LineSeries::new([(x_lo, p.accuracy), (x_hi, p.accuracy)], RED.mix(0.6).stroke_width(1)))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(format!("{} ({:.1}%)", p.label, p.accuracy * 100.0))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
