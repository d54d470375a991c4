//! Prometheus text exposition (format 0.0.4) of the agent's own figures and every
//! subsystem's reported metrics.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::status::{Metric, MetricKind};

/// Resident set size of this process, from `/proc/self/status` (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Renders all metrics.
pub fn render(s: &super::State) -> String {
    let mut all = vec![
        Metric::gauge(
            "fleetlet_uptime_seconds",
            "Seconds since the agent started.",
            s.started.elapsed().as_secs_f64(),
        ),
        Metric::gauge(
            "fleetlet_resident_memory_bytes",
            "Resident set size of the agent.",
            rss_bytes().unwrap_or(0) as f64,
        ),
        Metric::gauge(
            "fleetlet_event_loop_live",
            "1 while the event loop ticks.",
            f64::from(u8::from(s.liveness.is_live())),
        ),
        Metric::gauge("fleetlet_build_info", "Build information.", 1.0)
            .label("version", env!("CARGO_PKG_VERSION")),
    ];
    for (name, report) in s.status.snapshot() {
        all.push(
            Metric::gauge("fleetlet_subsystem_state", "Subsystem state: 0 starting, 1 running, 2 degraded, 3 disabled, 4 stopped, 5 failed.", report.state.as_gauge())
                .label("subsystem", name),
        );
        all.extend(report.metrics);
    }
    format_metrics(&all)
}

/// Formats samples, grouping by name so `# HELP`/`# TYPE` appear once per family.
pub fn format_metrics(samples: &[Metric]) -> String {
    let mut families: BTreeMap<&str, Vec<&Metric>> = BTreeMap::new();
    for m in samples {
        families.entry(m.name.as_str()).or_default().push(m);
    }
    let mut out = String::new();
    for (name, ms) in families {
        let kind = match ms[0].kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        };
        let _ = writeln!(
            out,
            "# HELP {name} {}",
            ms[0].help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for m in ms {
            if m.labels.is_empty() {
                let _ = writeln!(out, "{name} {}", fmt_value(m.value));
            } else {
                let labels: Vec<String> = m
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {}", labels.join(","), fmt_value(m.value));
            }
        }
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_labels_escaped() {
        let text = format_metrics(&[
            Metric::counter("fleetlet_x_total", "X.", 3.0).label("p", "a\"b"),
            Metric::gauge("fleetlet_y", "Y.", 1.5),
            Metric::counter("fleetlet_x_total", "X.", 4.0).label("p", "c"),
        ]);
        assert_eq!(
            text,
            "# HELP fleetlet_x_total X.\n# TYPE fleetlet_x_total counter\nfleetlet_x_total{p=\"a\\\"b\"} 3\nfleetlet_x_total{p=\"c\"} 4\n# HELP fleetlet_y Y.\n# TYPE fleetlet_y gauge\nfleetlet_y 1.5\n"
        );
    }

    #[test]
    fn rss_is_readable_on_linux() {
        assert!(rss_bytes().unwrap() > 0);
    }
}
