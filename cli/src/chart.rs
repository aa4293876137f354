//! Pictures of the budget, drawn with `plotters` (SVG backend, no font
//! files: text is SVG `<text>`, so the file renders anywhere).
//!
//! - [`burn_svg`]: a day's cumulative calls per org against its daily limit,
//!   stacked by source, with the hours where the quota sent jobs away to
//!   restart marked (`metered usage --chart`, `metered demo`'s report).
//! - [`forecast_svg`]: day 1 and a steady day against the daily limit, and
//!   a steady day's calls per hour by source (`metered plan --chart`).
//!
//! Legends sit in a column right of the plot, never over the data; a
//! y-axis fits the data, with a limit far above it named, not drawn.

use crate::system::BoxError;
use plotters::prelude::*;
use std::collections::BTreeMap;

/// Colours of successive sources (a colour-blind-safe palette).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

/// The limit line and the marks of restarts a limit refused.
pub const LIMIT: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// The marks of restarts that waited for a concurrency slot.
pub const WAIT: RGBColor = RGBColor(0x55, 0x55, 0x55);

/// The colour of the `i`th source.
pub fn source_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One org's day, as the usage store keeps it.
#[derive(Debug, Clone, Default)]
pub struct OrgDay {
    pub org: String,
    /// The UTC day.
    pub day: chrono::NaiveDate,
    /// The daily limit, when known.
    pub limit: Option<u32>,
    /// Calls per hour (0–23) per source, counted calls only.
    pub calls: BTreeMap<String, [u64; 24]>,
    /// Quota denials (restarts) per hour, all sources.
    pub denied: [u64; 24],
    /// Of those, waits for a concurrency slot (not a spent budget).
    pub waited: [u64; 24],
    /// Draw hours up to this one (the current hour today, 23 for a past day).
    pub until_hour: u32,
}

impl OrgDay {
    /// Builds it from usage entries (those of other orgs and days, and
    /// exempt calls, are left out).
    pub fn from_usage(
        org: &str,
        day: chrono::NaiveDate,
        limit: Option<u32>,
        entries: &[metered::quota::UsageEntry],
        until_hour: u32,
    ) -> Self {
        let mut out = OrgDay {
            org: org.to_string(),
            day,
            limit,
            until_hour: until_hour.min(23),
            ..Default::default()
        };
        for e in entries
            .iter()
            .filter(|e| !e.exempt && e.day == day && e.key.org == org)
        {
            let slot = out.calls.entry(e.source.clone()).or_insert([0; 24]);
            for (h, n) in &e.hours {
                let h = usize::from(*h);
                if h < 24 {
                    slot[h] += n.calls;
                    out.denied[h] += n.denied;
                    out.waited[h] += n.waited.min(n.denied);
                }
            }
        }
        out.calls.retain(|_, v| v.iter().any(|n| *n > 0));
        out
    }
}

/// The cumulative calls at the end of each hour, summed over `sources`.
fn cumulative<'a>(sources: impl Iterator<Item = &'a [u64; 24]>) -> [u64; 24] {
    let mut per_hour = [0u64; 24];
    for s in sources {
        for (h, n) in s.iter().enumerate() {
            per_hour[h] += n;
        }
    }
    let mut total = 0;
    per_hour.map(|n| {
        total += n;
        total
    })
}

/// Width of the legend column, right of the plot: a legend inside the plot
/// covered the data it named.
const LEGEND_W: u32 = 250;

/// How a legend entry is drawn.
enum Mark {
    Area(RGBColor),
    Line(RGBColor),
    Dashed(RGBColor),
    Triangle(RGBColor),
}

/// Draws a legend down the column `area`.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    items: &[(String, Mark)],
) -> Result<(), BoxError>
where
    DB::ErrorType: 'static,
{
    let font = ("sans-serif", 12).into_font();
    for (i, (label, mark)) in items.iter().enumerate() {
        let y = 48 + 18 * i as i32;
        match mark {
            Mark::Area(c) => area.draw(&Rectangle::new([(4, y - 5), (16, y + 5)], c.filled()))?,
            Mark::Line(c) => {
                area.draw(&PathElement::new(vec![(2, y), (18, y)], c.stroke_width(3)))?
            }
            Mark::Dashed(c) => {
                for x in [2, 12] {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + 6, y)],
                        c.stroke_width(2),
                    ))?
                }
            }
            Mark::Triangle(c) => area.draw(&TriangleMarker::new((10, y), 5, c.filled()))?,
        }
        area.draw(&Text::new(label.clone(), (24, y - 7), font.clone()))?;
    }
    Ok(())
}

/// The top of a y-axis that fits `data_max`, and whether `limit` is drawn
/// on it: a limit far above the data (over 3×) is named in the legend, not
/// drawn, so a normal day is not a flat line at the bottom.
fn axis_top(data_max: f64, limit: Option<f64>) -> (f64, bool) {
    let data_max = data_max.max(1.0);
    match limit {
        Some(l) if l <= 3.0 * data_max => (data_max.max(l) * 1.1, true),
        _ => (data_max * 1.15, false),
    }
}

/// A chart over a day's hours, as [`hours_chart`] builds it.
type HoursChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The `what` ("daily", "hourly") limit `l`: a dashed line across the day
/// when [`axis_top`] drew it, and its legend entry either way.
fn limit_line<DB: DrawingBackend>(
    chart: &mut HoursChart<'_, DB>,
    items: &mut Vec<(String, Mark)>,
    what: &str,
    l: f64,
    drawn: bool,
) -> Result<(), BoxError>
where
    DB::ErrorType: 'static,
{
    if drawn {
        chart.draw_series(DashedLineSeries::new(
            [(0.0, l), (24.0, l)],
            8,
            5,
            LIMIT.stroke_width(2),
        ))?;
        items.push((format!("{what} limit {l:.0}"), Mark::Dashed(LIMIT)));
    } else {
        items.push((
            format!("{what} limit {l:.0} (far above)"),
            Mark::Dashed(LIMIT),
        ));
    }
    Ok(())
}

/// The burn of every org and day given, one panel each.
pub fn burn_svg(orgs: &[OrgDay]) -> Result<String, BoxError> {
    let mut svg = String::new();
    {
        let panels = orgs.len().max(1);
        let root = SVGBackend::with_string(&mut svg, (900 + LEGEND_W, 340 * panels as u32))
            .into_drawing_area();
        root.fill(&WHITE)?;
        for (area, org) in root.split_evenly((panels, 1)).iter().zip(orgs) {
            burn_panel(area, org)?;
        }
        root.present()?;
    }
    Ok(svg)
}

fn burn_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    org: &OrgDay,
) -> Result<(), BoxError>
where
    DB::ErrorType: 'static,
{
    let (plot, side) = area.split_horizontally(900);
    let sources: Vec<(&String, &[u64; 24])> = org.calls.iter().collect();
    let total = cumulative(sources.iter().map(|(_, v)| *v));
    let until = org.until_hour as usize;
    let spent = total[until];
    let (top, limit_drawn) = axis_top(spent as f64, org.limit.map(f64::from));
    let limit_text = org
        .limit
        .map_or("limit unknown (pass --config)".to_string(), |l| {
            format!("{:.0}% of {l}", spent as f64 * 100.0 / f64::from(l.max(1)))
        });
    let mut chart = hours_chart(
        &plot,
        format!("{}: {spent} calls on {} ({limit_text})", org.org, org.day),
        "calls so far today",
        top,
    )?;
    let mut items = Vec::new();
    // Stacked areas: the sum of all sources first, then of one fewer, and
    // so on, each painted over the last, so every band shows one source.
    for n in (1..=sources.len()).rev() {
        let upper = cumulative(sources[..n].iter().map(|(_, v)| *v));
        let color = source_color(n - 1);
        let points = std::iter::once((0.0, 0.0))
            .chain((0..=until).map(|h| ((h + 1) as f64, upper[h] as f64)));
        chart.draw_series(AreaSeries::new(points, 0.0, color.filled()))?;
    }
    for (i, (name, _)) in sources.iter().enumerate() {
        items.push(((*name).clone(), Mark::Area(source_color(i))));
    }
    if let Some(limit) = org.limit {
        limit_line(
            &mut chart,
            &mut items,
            "daily",
            f64::from(limit),
            limit_drawn,
        )?;
    }
    // Restarts, told apart: refused by a limit (the budget is spent) in
    // red above the line, waits for a concurrency slot (harmless, the job
    // comes back in seconds) in grey below it.
    for (what, counts, color, dy) in [
        (
            "refused by a limit",
            std::array::from_fn::<u64, 24, _>(|h| org.denied[h] - org.waited[h].min(org.denied[h])),
            LIMIT,
            -14,
        ),
        ("waits for a concurrency slot", org.waited, WAIT, 4),
    ] {
        let marks: Vec<(f64, f64, u64)> = (0..=until)
            .filter(|h| counts[*h] > 0)
            .map(|h| ((h as f64) + 0.5, total[h] as f64, counts[h]))
            .collect();
        if marks.is_empty() {
            continue;
        }
        let count: u64 = marks.iter().map(|r| r.2).sum();
        chart.draw_series(marks.iter().map(|(x, y, n)| {
            EmptyElement::at((*x, *y))
                + TriangleMarker::new((0, 0), 6, color.filled())
                + Text::new(format!("{n}"), (6, dy), ("sans-serif", 11).into_font())
        }))?;
        items.push((format!("{count} restarts, {what}"), Mark::Triangle(color)));
    }
    legend(&side, &items)
}

/// A chart over the 24 hours of a UTC day, from 0 to `top` calls, with its
/// caption, axis descriptions and hour labels drawn.
fn hours_chart<'a, DB: DrawingBackend + 'a>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: String,
    y_desc: &str,
    top: f64,
) -> Result<HoursChart<'a, DB>, BoxError>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..24f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("hour of the day (UTC)")
        .y_desc(y_desc)
        .x_labels(13)
        .x_label_formatter(&|h| format!("{h:02.0}h"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    Ok(chart)
}

/// Colour of day 1's line in the plan (a steady day's is the palette's
/// first colour).
const DAY1: RGBColor = RGBColor(0x2b, 0x2b, 0x2b);

/// The plan: day 1 and a steady day against the real windows. Top: calls
/// so far in the UTC day, each day's line against the daily limit (the
/// window a day's budget is spent in). Bottom: a steady day's calls per
/// hour, stacked by source, against the hourly limit when the API has one.
pub fn forecast_svg(f: &crate::forecast::Forecast) -> Result<String, BoxError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900 + LEGEND_W, 700)).into_drawing_area();
        root.fill(&WHITE)?;
        let (upper, lower) = root.split_vertically(340);
        day_panel(&upper, f)?;
        hours_panel(&lower, f)?;
        root.present()?;
    }
    Ok(svg)
}

/// Calls so far in the day, hour by hour, from 0.
fn running(hours: &[f64]) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    std::iter::once((0.0, 0.0))
        .chain(hours.iter().enumerate().map(|(h, c)| {
            sum += c;
            ((h + 1) as f64, sum)
        }))
        .collect()
}

/// The plan's top: day 1's and a steady day's calls so far in the day,
/// against the daily limit.
fn day_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    f: &crate::forecast::Forecast,
) -> Result<(), BoxError>
where
    DB::ErrorType: 'static,
{
    let (plot, side) = area.split_horizontally(900);
    let day_limit = f.limit_per_day.map(f64::from);
    let (top, limit_drawn) = axis_top(f.day1_calls.max(f.calls_per_day), day_limit);
    let limit_text = day_limit.map_or("no daily limit".to_string(), |l| {
        format!("daily limit {l:.0}")
    });
    let mut chart = hours_chart(
        &plot,
        format!(
            "Forecast: day 1 {:.0} calls, a steady day {:.0} ({limit_text})",
            f.day1_calls, f.calls_per_day
        ),
        "calls so far in the day",
        top,
    )?;
    chart.draw_series(LineSeries::new(
        running(&f.day1_per_hour),
        DAY1.stroke_width(3),
    ))?;
    chart.draw_series(LineSeries::new(
        running(&f.per_hour),
        source_color(0).stroke_width(3),
    ))?;
    let mut items = vec![
        ("day 1 (first load)".to_string(), Mark::Line(DAY1)),
        ("a steady day".to_string(), Mark::Line(source_color(0))),
    ];
    if let Some(l) = day_limit {
        limit_line(&mut chart, &mut items, "daily", l, limit_drawn)?;
    }
    legend(&side, &items)
}

/// The plan's bottom: a steady day's calls per hour, stacked by source,
/// against the hourly limit when the API has one.
fn hours_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    f: &crate::forecast::Forecast,
) -> Result<(), BoxError>
where
    DB::ErrorType: 'static,
{
    let sources = f
        .sources
        .iter()
        .filter(|s| s.per_hour.iter().any(|v| *v > 0.0));
    let (plot, side) = area.split_horizontally(900);
    let hour_limit = f.limit_per_hour.map(f64::from);
    let peak = f.per_hour.iter().copied().fold(0.0, f64::max);
    let (top, hour_drawn) = axis_top(peak, hour_limit);
    let mut chart = hours_chart(
        &plot,
        format!(
            "A steady day: calls per hour by source ({})",
            hour_limit.map_or("no hourly limit".to_string(), |l| format!(
                "hourly limit {l:.0}"
            ))
        ),
        "calls per hour",
        top,
    )?;
    let mut items = Vec::new();
    let mut base = [0f64; 24];
    for (i, s) in sources.enumerate() {
        let color = source_color(i);
        let bars: Vec<Rectangle<(f64, f64)>> = (0..24)
            .map(|h| {
                let (lo, hi) = (base[h], base[h] + s.per_hour.get(h).copied().unwrap_or(0.0));
                Rectangle::new([(h as f64 + 0.1, lo), (h as f64 + 0.9, hi)], color.filled())
            })
            .collect();
        for (h, b) in base.iter_mut().enumerate() {
            *b += s.per_hour.get(h).copied().unwrap_or(0.0);
        }
        chart.draw_series(bars)?;
        items.push((s.source.clone(), Mark::Area(color)));
    }
    if let Some(l) = hour_limit {
        limit_line(&mut chart, &mut items, "hourly", l, hour_drawn)?;
    }
    legend(&side, &items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_sums_sources_and_hours() {
        let mut a = [0u64; 24];
        let mut b = [0u64; 24];
        a[1] = 2;
        b[1] = 1;
        b[5] = 4;
        let c = cumulative([&a, &b].into_iter());
        assert_eq!((c[0], c[1], c[4], c[5], c[23]), (0, 3, 3, 7, 7));
    }

    #[test]
    fn usage_entries_become_hours_per_source_without_exempt_calls() {
        use metered::quota::{HourUse, QuotaKey, UsageEntry};
        let entry = |source: &str, exempt, hours: &[(u8, u64, u64)]| UsageEntry {
            key: QuotaKey::new("acme", "crm"),
            day: chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
            source: source.into(),
            endpoint: "GET /x".into(),
            exempt,
            calls: hours.iter().map(|h| h.1).sum(),
            hours: hours
                .iter()
                .map(|(h, c, d)| {
                    (
                        *h,
                        HourUse {
                            calls: *c,
                            denied: *d,
                            waited: *d / 2,
                        },
                    )
                })
                .collect(),
        };
        let day = OrgDay::from_usage(
            "acme",
            chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
            Some(100),
            &[
                entry("complete-transfer:invoices", false, &[(2, 5, 0), (3, 1, 2)]),
                entry("workflow:thanks", true, &[(2, 9, 0)]),
                entry("workflow:notes", false, &[(3, 0, 1)]),
            ],
            23,
        );
        assert_eq!(
            day.calls.len(),
            1,
            "exempt and call-less sources are not stacked"
        );
        assert_eq!(day.calls["complete-transfer:invoices"][2], 5);
        assert_eq!(day.denied[3], 3);
        assert_eq!(day.waited[3], 1, "of which waits for a slot");
    }
}
