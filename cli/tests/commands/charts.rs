//! The burn and plan charts, rendered and read back by pixel.

use super::*;

/// Counts the pixels of `rgb` (within a small tolerance) in a PNG.
fn pixels_of(png_path: &Path, rgb: (u8, u8, u8)) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(step >= 3, "an RGB(A) picture: {:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| {
            p[0].abs_diff(rgb.0) <= 3 && p[1].abs_diff(rgb.1) <= 3 && p[2].abs_diff(rgb.2) <= 3
        })
        .count()
}

/// Renders an SVG to PNG with librsvg (what browsers and image viewers
/// agree with), failing loudly when it cannot.
fn render(svg: &Path) -> PathBuf {
    let png = svg.with_extension("png");
    let out = Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(svg)
        .output()
        .expect("rsvg-convert (Debian librsvg2-bin; `bash infra/test.sh` installs it)");
    assert!(
        out.status.success(),
        "{} does not render: {}",
        svg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    png
}

/// The burn chart of `metered usage --chart` and `metered demo --chart`:
/// its caption's total is what `usage` reports, every source that spent
/// calls is in the legend, it renders, and the rendered picture holds the
/// bottom source's band, the limit line and the restart marks in their
/// colours. `plan --chart` stacks its sources the same way.
#[test]
fn burn_and_plan_charts_render_and_show_what_the_usage_says() {
    let dir = tmp("charts");
    // The demo, and a day of the bundled app under a budget it outgrows
    // (300 calls a day), so the quota refuses and restart marks are drawn.
    // (The demo alone is seldom refused: its event sources, like the
    // deployed ones, run at most two invocations of a kind at once.)
    let demo = metered(
        &[
            "demo",
            "--days",
            "1",
            "--db",
            "demo.sqlite",
            "--chart",
            "demo.svg",
        ],
        &dir,
    );
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let tight =
        include_str!("../../examples/booking.toml").replace("per_day = 2500", "per_day = 300");
    std::fs::write(dir.join("tight.toml"), tight).unwrap();
    let run = metered(
        &[
            "run",
            "--config",
            "tight.toml",
            "--sim",
            "--simulate",
            "1",
            "--start",
            "2026-11-22T00:00:00Z",
            "--db",
            "d.sqlite",
            "--json",
        ],
        &dir,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for (name, db, refusals) in [
        ("burn.svg", "d.sqlite", true),
        ("demo.svg", "demo.sqlite", false),
    ] {
        let config: &[&str] = if refusals {
            &["--config", "tight.toml"]
        } else {
            &[]
        };
        let chart = if refusals { name } else { "usage-of-demo.svg" };
        let args = [
            &[
                "usage",
                "--db",
                db,
                "--day",
                "2026-11-22",
                "--json",
                "--chart",
                chart,
            ][..],
            config,
        ]
        .concat();
        let usage = json(&metered(&args, &dir));
        let rows = usage.as_array().unwrap();
        let spent: u64 = rows
            .iter()
            .filter(|u| u["exempt"] == false)
            .map(|u| u["calls"].as_u64().unwrap())
            .sum();
        let refused: u64 = rows
            .iter()
            .flat_map(|u| u["hours"].as_object().unwrap().values())
            .map(|h| h["denied"].as_u64().unwrap())
            .sum();
        assert!(spent > 0, "{name} spends: {usage}");
        assert!(
            refused > 0 || !refusals,
            "a 300-a-day budget is refused: {usage}"
        );
        let svg = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            svg.contains(&format!("acme: {spent} calls on 2026-11-22")),
            "{name}: the caption's total is the usage's"
        );
        let limit: u64 = if refusals { 300 } else { 2500 };
        assert!(svg.contains(&format!("daily limit {limit}")), "{name}");
        let waited: u64 = rows
            .iter()
            .flat_map(|u| u["hours"].as_object().unwrap().values())
            .map(|h| h["waited"].as_u64().unwrap_or(0))
            .sum();
        // Refusals told apart: a spent budget, and waits for a slot.
        if refused > waited {
            assert!(
                svg.contains(&format!(
                    "{} restarts, refused by a limit",
                    refused - waited
                )),
                "{name}"
            );
        }
        if waited > 0 {
            assert!(
                svg.contains(&format!("{waited} restarts, waits for a concurrency slot")),
                "{name}"
            );
        }
        for u in rows
            .iter()
            .filter(|u| u["exempt"] == false && u["calls"].as_u64() > Some(0))
        {
            let source = u["source"].as_str().unwrap();
            assert!(svg.contains(source), "{name}: {source} in the legend");
        }
        let png = render(&dir.join(name));
        // The biggest spender's band: sources are stacked (and coloured) in
        // name order, so its colour is the palette's entry at its rank.
        let mut by_source: std::collections::BTreeMap<&str, u64> = Default::default();
        for u in rows.iter().filter(|u| u["exempt"] == false) {
            *by_source.entry(u["source"].as_str().unwrap()).or_default() +=
                u["calls"].as_u64().unwrap();
        }
        let rank = by_source
            .iter()
            .filter(|(_, n)| **n > 0)
            .enumerate()
            .max_by_key(|(_, (_, n))| **n)
            .map(|(i, _)| i)
            .unwrap();
        let palette = [
            (0x4e, 0x79, 0xa7),
            (0xf2, 0x8e, 0x2b),
            (0x59, 0xa1, 0x4f),
            (0xb0, 0x7a, 0xa1),
            (0x76, 0xb7, 0xb2),
            (0xed, 0xc9, 0x48),
            (0x9c, 0x75, 0x5f),
            (0xba, 0xb0, 0xac),
        ];
        let red = (0xd6, 0x27, 0x28); // limit line and restart marks
        assert!(
            pixels_of(&png, palette[rank % 8]) > 1000,
            "{name}: the biggest source's band is drawn, not only its legend swatch"
        );
        // The y-axis fits the data: a limit over 3× the day's calls is
        // named in the legend, not drawn (a normal day was a flat line).
        if spent * 3 >= limit {
            assert!(
                pixels_of(&png, red) > 200,
                "{name}: the limit and the restarts are drawn"
            );
        } else {
            assert!(
                svg.contains(&format!("daily limit {limit} (far above)")),
                "{name}: {spent} calls against {limit}"
            );
        }
    }
    let volumes = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/booking-volumes.toml");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/booking.toml");
    let plan = json(&metered(
        &[
            "plan",
            "--config",
            config,
            "--volumes",
            volumes,
            "--json",
            "--chart",
            "plan.svg",
        ],
        &dir,
    ));
    let svg = std::fs::read_to_string(dir.join("plan.svg")).unwrap();
    for s in plan["sources"].as_array().unwrap() {
        if s["calls_per_day"].as_f64() > Some(0.0) {
            let source = s["source"].as_str().unwrap();
            assert!(svg.contains(source), "plan: {source} stacked and named");
        }
    }
    assert!(
        svg.contains("hour of the day (UTC)") && svg.contains("calls per hour"),
        "axis labels"
    );
    let png = render(&dir.join("plan.svg"));
    assert!(
        pixels_of(&png, (0x4e, 0x79, 0xa7)) > 100,
        "plan: the first source's bars"
    );
    // METERED_KEEP_CHARTS=DIR keeps the rendered pictures to look at.
    if let Some(keep) = std::env::var_os("METERED_KEEP_CHARTS") {
        for f in ["burn.png", "demo.png", "plan.png"] {
            let _ = std::fs::copy(dir.join(f), Path::new(&keep).join(f));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
