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
