//! Charts as inline SVG: a page that opens anywhere, with no script and no network.

/// One series of (ms since the epoch, value).
#[derive(Clone, Debug)]
pub struct Line {
    /// Legend.
    pub name: String,
    /// CSS colour.
    pub color: String,
    /// Points, in time order.
    pub points: Vec<(i64, f64)>,
}

impl Line {
    /// A series from points.
    pub fn of(name: &str, color: &str, points: impl IntoIterator<Item = (i64, f64)>) -> Self {
        Self {
            name: name.into(),
            color: color.into(),
            points: points.into_iter().collect(),
        }
    }
}

/// A time chart: lines, an optional shaded band, an optional vertical marker (the origin).
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above it.
    pub title: String,
    /// The series.
    pub lines: Vec<Line>,
    /// (ms, low, high) of a band.
    pub band: Option<Vec<(i64, f64, f64)>>,
    /// A vertical line at this instant.
    pub marker_ms: Option<i64>,
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Chart {
    /// The chart as an `<svg>` element with its title.
    pub fn svg(&self) -> String {
        let (w, h, left, bottom, top) = (960.0, 300.0, 70.0, 30.0, 20.0);
        let xs = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .chain(self.band.iter().flatten().map(|b| b.0));
        let (x0, x1) = xs.fold((i64::MAX, i64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let ymax = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .chain(self.band.iter().flatten().map(|b| b.2))
            .fold(0.0f64, f64::max)
            .max(1.0);
        if x0 >= x1 {
            return format!("<h3>{}</h3><p>no data</p>", escape(&self.title));
        }
        let px = |x: i64| left + (x - x0) as f64 / (x1 - x0) as f64 * (w - left - 10.0);
        let py = |y: f64| top + (1.0 - y / ymax) * (h - top - bottom);
        let mut svg = format!(
            "<h3>{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-size=\"11\" font-family=\"sans-serif\">",
            escape(&self.title)
        );
        for k in 0..=4 {
            let y = ymax * f64::from(k) / 4.0;
            svg.push_str(&format!(
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>",
                w - 10.0,
                py(y),
                py(y),
                left - 4.0,
                py(y) + 4.0,
                y
            ));
        }
        // A tick per day.
        let day = 86_400_000i64;
        let mut d = (x0 + day - 1).div_euclid(day) * day;
        while d <= x1 {
            let label = chrono::DateTime::from_timestamp_millis(d)
                .map_or_else(String::new, |t| t.format("%m-%d").to_string());
            svg.push_str(&format!(
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#f4f4f4\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
                h - bottom,
                h - bottom + 14.0,
                x = px(d)
            ));
            d += day;
        }
        if let Some(band) = &self.band {
            if !band.is_empty() {
                let upper: Vec<String> = band
                    .iter()
                    .map(|b| format!("{:.1},{:.1}", px(b.0), py(b.2)))
                    .collect();
                let lower: Vec<String> = band
                    .iter()
                    .rev()
                    .map(|b| format!("{:.1},{:.1}", px(b.0), py(b.1)))
                    .collect();
                svg.push_str(&format!(
                    "<polygon points=\"{} {}\" fill=\"#d62728\" fill-opacity=\"0.15\" stroke=\"none\"/>",
                    upper.join(" "),
                    lower.join(" ")
                ));
            }
        }
        for l in &self.lines {
            let pts: Vec<String> = l
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
                .collect();
            svg.push_str(&format!(
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.2\"/>",
                pts.join(" "),
                escape(&l.color)
            ));
        }
        if let Some(m) = self.marker_ms.filter(|m| (x0..=x1).contains(m)) {
            svg.push_str(&format!(
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#333\" stroke-dasharray=\"4 3\"/>",
                h - bottom,
                x = px(m)
            ));
        }
        for (k, l) in self.lines.iter().enumerate() {
            let x = left + 10.0 + 170.0 * k as f64;
            svg.push_str(&format!(
                "<rect x=\"{x}\" y=\"4\" width=\"12\" height=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"10\">{}</text>",
                escape(&l.color),
                x + 16.0,
                escape(&l.name)
            ));
        }
        svg.push_str("</svg>");
        svg
    }

    /// A page of its own.
    pub fn page(&self, intro: &str) -> String {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>body{{font-family:sans-serif;margin:2em}}</style></head><body>{}{}</body></html>",
            escape(&self.title),
            intro,
            self.svg()
        )
    }
}
