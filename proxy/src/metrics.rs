//! Per-export counters, process-wide connection counters ([`PROCESS`]) and
//! a Prometheus text endpoint (`GET /metrics`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

/// Counters of one export.
#[derive(Debug, Default)]
pub struct ExportMetrics {
    /// Write-like commands (WRITE, TRIM, WRITE_ZEROES) carried out.
    pub writes_accepted: AtomicU64,
    /// Write-like commands refused with EPERM: their token was below the
    /// fence, or the connection had no token.
    pub writes_fenced: AtomicU64,
    /// Handshakes refused (stale, unverifiable or damaged fence).
    pub handshakes_refused: AtomicU64,
    /// Reads served.
    pub reads: AtomicU64,
    /// The fence (highest token accepted).
    pub fence: AtomicU64,
    /// 1 while the export's fence state is damaged (writes refused).
    pub fence_damaged: AtomicU64,
    /// 1 while the lease service has confirmed the fence and the watch
    /// follows it; 0 after a start or a lost watch until it answers.
    pub fence_confirmed: AtomicU64,
}

/// Counters of the whole proxy process (connections are not per export
/// until their handshake names one).
#[derive(Debug, Default)]
pub struct ProcessMetrics {
    /// NBD connections open now.
    pub connections: AtomicU64,
    /// Connections closed at accept because `proxy.connections_max` were
    /// open.
    pub connections_refused: AtomicU64,
    /// Connections closed by the handshake deadline or an idle timeout.
    pub connections_timed_out: AtomicU64,
    /// Failed accepts (out of file descriptors, say).
    pub accept_errors: AtomicU64,
}

/// The process's counters.
pub static PROCESS: ProcessMetrics = ProcessMetrics {
    connections: AtomicU64::new(0),
    connections_refused: AtomicU64::new(0),
    connections_timed_out: AtomicU64::new(0),
    accept_errors: AtomicU64::new(0),
};

/// A process-wide metric family: name, type, help, and the field it reads.
type ProcessFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ProcessMetrics) -> &AtomicU64,
);

/// Every export's counters, by name.
pub type Registry = Arc<Vec<(String, Arc<ExportMetrics>)>>;

/// A metric family: name, type, help, and the field it reads.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ExportMetrics) -> &AtomicU64,
);

/// Prometheus text exposition of `registry` and [`PROCESS`].
#[must_use]
pub fn render(registry: &Registry) -> String {
    render_with(registry, &PROCESS)
}

/// Prometheus text exposition of `registry` and `process`.
#[must_use]
pub fn render_with(registry: &Registry, process: &ProcessMetrics) -> String {
    let mut out = String::new();
    let families: [Family; 7] = [
        (
            "palisade_proxy_writes_accepted_total",
            "counter",
            "Write-like NBD commands carried out.",
            |m| &m.writes_accepted,
        ),
        (
            "palisade_proxy_writes_fenced_total",
            "counter",
            "Write-like NBD commands refused with EPERM (stale or no token).",
            |m| &m.writes_fenced,
        ),
        (
            "palisade_proxy_handshakes_refused_total",
            "counter",
            "NBD handshakes refused (stale or unverifiable token, damaged fence).",
            |m| &m.handshakes_refused,
        ),
        (
            "palisade_proxy_reads_total",
            "counter",
            "NBD reads served.",
            |m| &m.reads,
        ),
        (
            "palisade_proxy_fence",
            "gauge",
            "Highest fencing token accepted for the export.",
            |m| &m.fence,
        ),
        (
            "palisade_proxy_fence_damaged",
            "gauge",
            "1 while the export's fence state is damaged and writes are refused.",
            |m| &m.fence_damaged,
        ),
        (
            "palisade_proxy_fence_confirmed",
            "gauge",
            "1 while the lease service has confirmed the export's fence and the watch follows it.",
            |m| &m.fence_confirmed,
        ),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (export, metrics) in registry.iter() {
            let _ = writeln!(
                out,
                "{name}{{export=\"{}\"}} {}",
                escape(export),
                field(metrics).load(Ordering::Relaxed)
            );
        }
    }
    let process_families: [ProcessFamily; 4] = [
        (
            "palisade_proxy_connections",
            "gauge",
            "NBD connections open.",
            |m| &m.connections,
        ),
        (
            "palisade_proxy_connections_refused_total",
            "counter",
            "NBD connections closed at accept because proxy.connections_max were open.",
            |m| &m.connections_refused,
        ),
        (
            "palisade_proxy_connections_timed_out_total",
            "counter",
            "NBD connections closed by the handshake deadline or an idle timeout.",
            |m| &m.connections_timed_out,
        ),
        (
            "palisade_proxy_accept_errors_total",
            "counter",
            "Failed accepts of NBD connections (out of file descriptors, say).",
            |m| &m.accept_errors,
        ),
    ];
    for (name, kind, help, field) in process_families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {}", field(process).load(Ordering::Relaxed));
    }
    out
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `addr` from a background thread.
pub fn serve(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    info!(%local, "metrics on http://{local}/metrics");
    std::thread::Builder::new()
        .name("proxy-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..n]);
                let response = if head.starts_with("GET /metrics ") {
                    let body = render(&registry);
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let body = "try GET /metrics\n";
                    format!(
                        "HTTP/1.0 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                if let Err(e) = stream.write_all(response.as_bytes()) {
                    warn!(error = %e, "metrics client went away");
                }
            }
        })?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_help_type_and_one_line_per_export() {
        let a = Arc::new(ExportMetrics::default());
        a.writes_fenced.store(3, Ordering::Relaxed);
        let registry: Registry = Arc::new(vec![
            ("disk0".into(), a),
            ("we\"ird".into(), Arc::default()),
        ]);
        let text = render(&registry);
        assert!(text.contains("# TYPE palisade_proxy_writes_fenced_total counter\n"));
        assert!(text.contains("palisade_proxy_writes_fenced_total{export=\"disk0\"} 3\n"));
        assert!(text.contains("{export=\"we\\\"ird\"}"));
    }

    #[test]
    fn process_counters_have_no_export_label() {
        let process = ProcessMetrics::default();
        process.connections_refused.store(9, Ordering::Relaxed);
        let text = render_with(&Arc::new(Vec::new()), &process);
        assert!(text.contains("# TYPE palisade_proxy_connections gauge\n"));
        assert!(text.contains("\npalisade_proxy_connections_refused_total 9\n"));
    }
}
