//! SVG bar charts of the results (plotters, SVG backend only: no font files, no native
//! libraries). One chart per question: a bar per measurement, its value printed beside it, and
//! where a target exists a dashed line at the target.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

/// One horizontal bar.
#[derive(Clone, Debug)]
pub struct Bar {
    /// What was measured (`C lz4, engine`).
    pub label: String,
    /// Its value.
    pub value: f64,
}

impl Bar {
    /// A bar labelled `label` of `value`.
    pub fn new(label: impl Into<String>, value: f64) -> Self {
        Self {
            label: label.into(),
            value,
        }
    }
}

/// A horizontal bar chart.
#[derive(Clone, Debug)]
pub struct BarChart {
    /// The caption.
    pub title: String,
    /// What the values are (`× ceiling`, `MB/s`).
    pub unit: String,
    /// The bars, top to bottom.
    pub bars: Vec<Bar>,
    /// A value to compare with (drawn as a dashed line), with its name.
    pub target: Option<(f64, String)>,
}

/// Pixels per bar, and around the plot.
const BAR_PIXELS: u32 = 26;
const WIDTH_PIXELS: u32 = 960;
const LABEL_AREA_PIXELS: u32 = 330;

impl BarChart {
    /// A chart without bars yet.
    pub fn new(title: impl Into<String>, unit: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            unit: unit.into(),
            bars: Vec::new(),
            target: None,
        }
    }

    /// Adds a target line.
    pub fn with_target(mut self, value: f64, name: impl Into<String>) -> Self {
        self.target = Some((value, name.into()));
        self
    }

    /// Draws the chart to `path` (an `.svg` file). A chart without bars is not drawn.
    pub fn draw(&self, path: &Path) -> anyhow::Result<()> {
        if self.bars.is_empty() {
            return Ok(());
        }
        self.draw_svg(path)
            .map_err(|error| anyhow::anyhow!("{error}"))
            .with_context(|| format!("drawing {}", path.display()))
    }

    fn draw_svg(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let count = self.bars.len();
        let height = 90 + BAR_PIXELS * count as u32;
        let root = SVGBackend::new(path, (WIDTH_PIXELS, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let largest = self
            .bars
            .iter()
            .map(|bar| bar.value)
            .chain(self.target.iter().map(|(value, _)| *value))
            .filter(|value| value.is_finite())
            .fold(0.0_f64, f64::max);
        // Room on the right for the value printed beside the longest bar.
        let x_max = if largest > 0.0 { largest * 1.18 } else { 1.0 };
        let labels: Vec<String> = self.bars.iter().map(|bar| bar.label.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(LABEL_AREA_PIXELS)
            .build_cartesian_2d(0.0..x_max, (0..count).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(count)
            .y_label_formatter(&|segment| match segment {
                // Bar 0 is the top one: segments count up from the bottom.
                SegmentValue::CenterOf(index) if *index < count => {
                    labels[count - 1 - index].clone()
                }
                _ => String::new(),
            })
            .x_label_formatter(&|x| format_value(*x))
            .x_desc(self.unit.as_str())
            .draw()?;
        let color = RGBColor(52, 101, 164);
        let band = |index: usize| count - 1 - index;
        chart.draw_series(self.bars.iter().enumerate().map(|(index, bar)| {
            let mut rectangle = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(band(index))),
                    (bar.value.max(0.0), SegmentValue::Exact(band(index) + 1)),
                ],
                color.filled(),
            );
            rectangle.set_margin(4, 4, 0, 0);
            rectangle
        }))?;
        chart.draw_series(self.bars.iter().enumerate().map(|(index, bar)| {
            Text::new(
                format_value(bar.value),
                (
                    bar.value.max(0.0) + x_max * 0.005,
                    SegmentValue::CenterOf(band(index)),
                ),
                ("sans-serif", 13),
            )
        }))?;
        // The line stops at the top of the first bar: the band above holds the legend.
        let top = SegmentValue::Exact(count);
        let bottom = SegmentValue::Exact(0);
        if let Some((value, name)) = &self.target {
            chart
                .draw_series(DashedLineSeries::new(
                    [(*value, bottom), (*value, top)],
                    6,
                    4,
                    RED.stroke_width(2),
                ))?
                .label(name.as_str())
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED.stroke_width(2)));
            // The segmented axis leaves an empty band above the first bar: the legend goes
            // there, clear of every bar and value.
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}

/// A value as the charts and tables print it: three significant digits.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars_labels_values_and_the_target() {
        let dir = std::env::temp_dir().join(format!("tandem-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("chart.svg");
        let mut chart =
            BarChart::new("C against the ceiling", "× ceiling").with_target(0.85, "target");
        chart.bars.push(Bar::new("seq-1MiB-qd1 engine C", 0.66));
        chart.bars.push(Bar::new("rand-4KiB-qd32 nbd C", 1.26));
        chart.draw(&path).expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("svg");
        for text in [
            "C against the ceiling",
            "seq-1MiB-qd1 engine C",
            "rand-4KiB-qd32 nbd C",
            "0.66",
            "1.26",
            "target",
        ] {
            assert!(svg.contains(text), "{text} missing from the chart");
        }
        assert!(svg.contains("<rect"), "no bars");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn values_keep_three_significant_digits() {
        assert_eq!(format_value(1234.4), "1234");
        assert_eq!(format_value(12.34), "12.3");
        assert_eq!(format_value(0.8567), "0.86");
    }
}
