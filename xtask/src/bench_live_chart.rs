//! The live bench's chart: grouped bars (one group per flow case, one bar per forwarder) of the
//! median LB ns per forwarded packet, with the min–max range as a whisker; drawn with plotters.

use std::path::Path;

use anyhow::Context as _;
use plotters::{prelude::*, style::text_anchor as text};

/// One bar.
#[derive(Debug, Clone)]
pub struct Bar {
    pub group: &'static str,
    pub series: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(23, 190, 207),
    RGBColor(214, 39, 40),
    RGBColor(127, 127, 127),
    RGBColor(148, 103, 189),
];

pub fn draw(path: &Path, bars: &[Bar]) -> anyhow::Result<()> {
    let mut groups: Vec<&str> = Vec::new();
    let mut series: Vec<&str> = Vec::new();
    for bar in bars {
        if !groups.contains(&bar.group) {
            groups.push(bar.group);
        }
        if !series.contains(&bar.series) {
            series.push(bar.series);
        }
    }
    let top = bars.iter().map(|b| b.max).filter(|v| v.is_finite()).fold(0.0, f64::max) * 1.1 + 1.0;
    let slots = (groups.len() * (series.len() + 1)) as f64;
    let (width_px, height_px) = (1100u32, 560u32);
    let mut pixels = vec![0u8; (width_px * height_px * 3) as usize];
    render(&mut pixels, (width_px, height_px), bars, &groups, &series, top, slots)?;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width_px, height_px);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().with_context(|| format!("writing {}", path.display()))?;
    writer.write_image_data(&pixels).with_context(|| format!("writing {}", path.display()))?;
    writer.finish().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn render(
    pixels: &mut [u8],
    size: (u32, u32),
    bars: &[Bar],
    groups: &[&str],
    series: &[&str],
    top: f64,
    slots: f64,
) -> anyhow::Result<()> {
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE).context("drawing the chart")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "LB CPU ns per forwarded packet (median of rounds; whisker: min–max), lower is better",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..slots, 0f64..top)
        .context("drawing the chart")?;
    let width = series.len() + 1;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("ns per packet")
        .draw()
        .context("drawing the axes")?;
    for (s, name) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let mine: Vec<&Bar> = bars.iter().filter(|b| b.series == *name).collect();
        let x0 = |bar: &Bar| {
            let g = groups.iter().position(|g| *g == bar.group).unwrap_or(0);
            (g * width + s) as f64 + 0.5
        };
        chart
            .draw_series(mine.iter().map(|b| Rectangle::new([(x0(b), 0.0), (x0(b) + 0.9, b.median)], color.filled())))
            .context("drawing bars")?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(
                mine.iter().filter(|b| b.min.is_finite() && b.max > b.min).map(|b| {
                    PathElement::new(vec![(x0(b) + 0.45, b.min), (x0(b) + 0.45, b.max)], BLACK.stroke_width(2))
                }),
            )
            .context("drawing whiskers")?;
    }
    // Group names under the axis, centred on their bars.
    for (g, name) in groups.iter().enumerate() {
        let centre = (g * width) as f64 + 0.5 + series.len() as f64 / 2.0;
        let (x, y) = chart.backend_coord(&(centre, 0.0));
        let style =
            ("sans-serif", 16).into_font().color(&BLACK).pos(text::Pos::new(text::HPos::Center, text::VPos::Top));
        root.draw(&Text::new(*name, (x, y + 8), style)).context("drawing a group label")?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .context("drawing the legend")?;
    root.present().context("drawing the chart")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_a_bar_per_series_and_group() {
        let mut bars = Vec::new();
        for (g, group) in ["1 flow", "64 Ki flows"].into_iter().enumerate() {
            for (s, series) in ["xlb dsr-l2", "nftables DNAT"].into_iter().enumerate() {
                let median = 200.0 + 1000.0 * s as f64 + 100.0 * g as f64;
                bars.push(Bar { group, series, median, min: median - 20.0, max: median + 20.0 });
            }
        }
        let path = std::env::temp_dir().join(format!("xlb-chart-test-{}.png", std::process::id()));
        draw(&path, &bars).expect("draws");
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().expect("a PNG");
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).expect("one frame");
        assert_eq!((info.width, info.height), (1100, 560));
        let _ = std::fs::remove_file(&path);
        // Each series' colour fills its bars: a taller bar covers more pixels.
        let count = |c: RGBColor| pixels.chunks(3).filter(|p| *p == [c.0, c.1, c.2]).count();
        let (first, second) = (count(COLORS[0]), count(COLORS[1]));
        assert!(first > 1000 && second > first * 3, "bar pixels: {first} and {second}");
    }
}
