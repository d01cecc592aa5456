//! The incident report as one self-contained HTML page: no script, no external resource, the
//! timeline drawn as inline SVG (one mark per event on a time axis, leaks, revocations and
//! later uses told apart by colour). The markup is well-formed XHTML, so a strict XML parser
//! reads it as well as a browser does.

use super::report::Incident;
use crate::cmd::replay::row::human_time;
use std::fmt::Write;

/// Escapes text for element content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn colour(kind: &str) -> &'static str {
    match kind {
        "leak.detected" => "#d9480f",
        "leak_matched" | "leak_inert" | "leak_unmatched" => "#f08c00",
        "revoked" | "expired" => "#2f9e44",
        "rotated" | "rotation_started" => "#1971c2",
        "used" | "verify_denied" | "denied" => "#c2255c",
        _ => "#495057",
    }
}

const WIDTH: f64 = 960.0;
const ROW: f64 = 22.0;

fn timeline_svg(i: &Incident) -> String {
    let (Some(first), Some(last)) = (i.timeline.first(), i.timeline.last()) else {
        return String::new();
    };
    let span = (last.time - first.time).as_seconds_f64().max(0.001);
    let height = ROW * i.timeline.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"timeline\">\n<line x1=\"20\" y1=\"20\" x2=\"{}\" y2=\"20\" stroke=\"#adb5bd\"/>\n",
        WIDTH - 20.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"20\" y=\"14\" font-size=\"11\">{}</text><text x=\"{}\" y=\"14\" font-size=\"11\" text-anchor=\"end\">+{:.3} s</text>",
        esc(&human_time(first.time)),
        WIDTH - 20.0,
        span
    );
    for (n, e) in i.timeline.iter().enumerate() {
        let x = 20.0 + (e.time - first.time).as_seconds_f64() / span * (WIDTH - 320.0);
        let y = 40.0 + ROW * n as f64;
        let offset_ms = (e.time - first.time).whole_milliseconds();
        let _ = writeln!(
            svg,
            "<g><line x1=\"{x:.1}\" y1=\"20\" x2=\"{x:.1}\" y2=\"{y:.1}\" stroke=\"#dee2e6\"/><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">+{offset_ms} ms {} {}</text></g>",
            colour(&e.kind),
            x + 9.0,
            y + 4.0,
            esc(&e.kind),
            esc(&e.about)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The report as an HTML page.
pub(crate) fn render(i: &Incident) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<h1>Incident: {}</h1>\n<p>From the event log ({} events read): {} finding(s), {} JIT lease(s).</p>",
        esc(&i.about),
        i.events_read,
        i.findings.len(),
        i.leases.len()
    );
    body.push_str("<h2>Timeline</h2>\n");
    body.push_str(&timeline_svg(i));
    body.push_str("<h2>Findings</h2>\n<table>\n<tr><th>leak</th><th>detected (UTC)</th><th>where</th><th>value</th><th>outcome</th><th>credential</th><th>revoked (UTC)</th><th>time to revoke</th><th>rotated (UTC)</th><th>later uses or tries</th></tr>\n");
    for f in &i.findings {
        let place = [
            f.location.repo.clone(),
            f.location.file.clone(),
            f.location.line.map(|l| l.to_string()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(":");
        let who = f
            .credential
            .clone()
            .or_else(|| f.lease.as_ref().map(|l| format!("lease {l}")))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.leak_id),
            esc(&human_time(f.detected_at)),
            esc(&place),
            esc(&f.fingerprint),
            esc(&f.outcome),
            esc(&who),
            esc(&f.revoked_at.map(human_time).unwrap_or_else(|| "—".into())),
            esc(&f
                .time_to_revoke_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "—".into())),
            esc(&f.rotated_at.map(human_time).unwrap_or_else(|| "—".into())),
            f.after.len()
        );
    }
    body.push_str("</table>\n<h2>Events</h2>\n<table>\n<tr><th>time (UTC)</th><th>event</th><th>about</th><th>detail</th></tr>\n");
    for e in &i.timeline {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td style=\"color:{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&human_time(e.time)),
            colour(&e.kind),
            esc(&e.kind),
            esc(&e.about),
            esc(&e.text)
        );
    }
    body.push_str("</table>\n");
    format!(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>Incident: {}</title>\n<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#212529}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #dee2e6;padding:4px 8px;font-size:13px;text-align:left}}th{{background:#f1f3f5}}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        esc(&i.about)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("a\u{7}b"), "a b");
    }
}
