//! Pictures of the budget, drawn with `plotters` (SVG backend, no font
//! files: text is SVG `<text>`, so the file renders anywhere).
//!
//! - [`burn_svg`]: a day's cumulative calls per org against its daily limit,
//!   stacked by source, with the hours where the quota sent jobs away to
//!   restart marked (`metered usage --chart`, `metered demo`'s report).
//! - [`forecast_svg`]: forecast calls per hour stacked by source against the
//!   hourly share of the limit (`metered plan --chart`).

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

/// The limit line and the restart marks.
pub const LIMIT: RGBColor = RGBColor(0xd6, 0x27, 0x28);

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

/// The burn of every org and day given, one panel each.
pub fn burn_svg(orgs: &[OrgDay]) -> Result<String, BoxError> {
    let mut svg = String::new();
    {
        let panels = orgs.len().max(1);
        let root =
            SVGBackend::with_string(&mut svg, (900, 340 * panels as u32)).into_drawing_area();
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
    let sources: Vec<(&String, &[u64; 24])> = org.calls.iter().collect();
    let total = cumulative(sources.iter().map(|(_, v)| *v));
    let until = org.until_hour as usize;
    let spent = total[until];
    let top = org.limit.map_or(spent, |l| spent.max(u64::from(l))).max(1) as f64 * 1.1;
    let limit_text = org
        .limit
        .map_or("limit unknown (pass --config)".to_string(), |l| {
            format!("{:.0}% of {l}", spent as f64 * 100.0 / f64::from(l.max(1)))
        });
    let mut chart = hours_chart(
        area,
        format!("{}: {spent} calls on {} ({limit_text})", org.org, org.day),
        "calls so far today",
        top,
    )?;
    // Stacked areas: the sum of all sources first, then of one fewer, and
    // so on, each painted over the last, so every band shows one source.
    for n in (1..=sources.len()).rev() {
        let upper = cumulative(sources[..n].iter().map(|(_, v)| *v));
        let color = source_color(n - 1);
        let points = std::iter::once((0.0, 0.0))
            .chain((0..=until).map(|h| ((h + 1) as f64, upper[h] as f64)));
        chart
            .draw_series(AreaSeries::new(points, 0.0, color.filled()))?
            .label(sources[n - 1].0.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    if let Some(limit) = org.limit {
        let l = f64::from(limit);
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, l), (24.0, l)],
                8,
                5,
                LIMIT.stroke_width(2),
            ))?
            .label(format!("daily limit {limit}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], LIMIT.stroke_width(2)));
    }
    let restarts: Vec<(f64, f64, u64)> = (0..=until)
        .filter(|h| org.denied[*h] > 0)
        .map(|h| ((h as f64) + 0.5, total[h] as f64, org.denied[h]))
        .collect();
    if !restarts.is_empty() {
        let count: u64 = restarts.iter().map(|r| r.2).sum();
        chart
            .draw_series(restarts.iter().map(|(x, y, n)| {
                EmptyElement::at((*x, *y))
                    + TriangleMarker::new((0, 0), 6, LIMIT.filled())
                    + Text::new(format!("{n}"), (6, -14), ("sans-serif", 11).into_font())
            }))?
            .label(format!("{count} restarts (quota denials)"))
            .legend(|(x, y)| TriangleMarker::new((x + 6, y), 5, LIMIT.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A chart over the 24 hours of a UTC day, from 0 to `top` calls, with its
/// caption, axis descriptions and hour labels drawn.
fn hours_chart<'a, DB: DrawingBackend + 'a>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: String,
    y_desc: &str,
    top: f64,
) -> Result<
    ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    BoxError,
>
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

/// Forecast calls per hour, stacked by source, against the hourly limit
/// (or the daily limit's hourly share).
pub fn forecast_svg(f: &crate::forecast::Forecast) -> Result<String, BoxError> {
    let hourly_limit = f
        .limit_per_hour
        .map(f64::from)
        .or(f.limit_per_day.map(|d| f64::from(d) / 24.0));
    let sources: Vec<&crate::forecast::SourceForecast> = f
        .sources
        .iter()
        .filter(|s| s.per_hour.iter().any(|v| *v > 0.0))
        .collect();
    let top = f
        .per_hour
        .iter()
        .copied()
        .fold(hourly_limit.unwrap_or(1.0), f64::max)
        .max(1.0)
        * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 380)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = hours_chart(
            &root,
            format!("Forecast API calls per hour ({:.0} a day)", f.calls_per_day),
            "calls per hour",
            top,
        )?;
        let mut base = [0f64; 24];
        for (i, s) in sources.iter().enumerate() {
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
            chart
                .draw_series(bars)?
                .label(s.source.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        if let Some(l) = hourly_limit {
            let label = if f.limit_per_hour.is_some() {
                format!("hourly limit {l:.0}")
            } else {
                format!("daily limit / 24 = {l:.0}")
            };
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, l), (24.0, l)],
                    8,
                    5,
                    LIMIT.stroke_width(2),
                ))?
                .label(label)
                .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], LIMIT.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
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
    }
}
