//! The result of one scenario: a human table and one JSON line.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::stats::Percentiles;

/// Sessions of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionsReport {
    /// Sessions asked for.
    pub requested: usize,
    /// Sessions opened.
    pub open: usize,
    /// Sessions that could not be opened.
    pub failed: usize,
    /// Sessions the server closed during the run.
    pub closed_by_server: u64,
}

/// Deliveries of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryReport {
    /// Publishes the schedule called for.
    pub scheduled: u64,
    /// Publishes accepted.
    pub accepted: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Deliveries expected (accepted × recipients).
    pub expected: u64,
    /// Deliveries received (first time per session).
    pub delivered: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Frames received again (or out of order) by a session.
    pub duplicated: u64,
    /// Accepted publishes per second over the drive.
    pub publish_rate: f64,
    /// Deliveries per second, first due time to last frame.
    pub delivered_per_sec: f64,
    /// How far the publishers fell behind their schedule at worst, ms.
    pub max_publisher_lag_ms: f64,
}

/// The node's process during a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerReport {
    /// Resident memory before any session opened, KiB.
    pub rss_before_kib: u64,
    /// Resident memory once the sessions were open, KiB.
    pub rss_sessions_kib: u64,
    /// Resident memory at the end, KiB.
    pub rss_after_kib: u64,
    /// Peak resident memory, KiB.
    pub rss_peak_kib: u64,
    /// `(rss_sessions - rss_before) / open sessions`, bytes.
    pub rss_per_session_bytes: u64,
    /// CPU while the sessions were open and the harness did not publish, cores (idle
    /// scenario only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores_idle: Option<f64>,
    /// CPU during the measured load, cores.
    pub cpu_cores_load: f64,
    /// Open file descriptors with the sessions open.
    pub fds: u64,
}

/// One scenario's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `embedded` or `production`.
    pub mode: String,
    /// How publishes travelled: `http`, `kafka`, `sqlite`, or empty.
    pub via: String,
    /// When the run started (UTC).
    pub started_at: String,
    /// Load average when the run started (other work on the machine shows here).
    pub load_average: String,
    /// Parameters of the load.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// Sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsReport>,
    /// Deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryReport>,
    /// Push latency: publish due → frame received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Percentiles>,
    /// Publish call latency: request sent → 202 (or bus acknowledgement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_latency: Option<Percentiles>,
    /// The node's process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerReport>,
    /// The harness's own CPU during the load, cores (it shares the machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harness_cpu_cores: Option<f64>,
    /// Scenario-specific results.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub results: Map<String, Value>,
}

impl Report {
    /// A report for `scenario` on `mode`, stamped now.
    pub fn new(scenario: &str, mode: &str, via: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            mode: mode.to_owned(),
            via: via.to_owned(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            load_average: crate::procfs::loadavg(),
            ..Self::default()
        }
    }

    /// The report as one line of JSON.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a two-column table, nested fields as dotted keys.
    pub fn table(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut rows = Vec::new();
        flatten("", &value, &mut rows);
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("── {} ", self.scenario);
        out.push_str(&"─".repeat(width.saturating_sub(self.scenario.len()) + 20));
        out.push('\n');
        for (key, value) in rows {
            out.push_str(&format!("{key:<width$}  {value}\n"));
        }
        out
    }
}

fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let line = item
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", scalar(v)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                rows.push((format!("{prefix}[{i}]"), line));
            }
        }
        other => rows.push((prefix.to_owned(), scalar(other))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_flattens_nested_fields() {
        let mut report = Report::new("seed", "embedded", "http");
        report.delivery = Some(DeliveryReport {
            lost: 0,
            ..DeliveryReport::default()
        });
        let table = report.table();
        assert!(table.contains("delivery.lost"));
        assert!(!report.json_line().contains('\n'));
    }
}
