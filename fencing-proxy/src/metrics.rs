//! Per-export counters, process-wide connection counters ([`PROCESS`]),
//! their Prometheus text exposition ([`render`]) and the `/metrics`
//! endpoint ([`Endpoint`]), served by a plain thread of
//! `palisade_host::admin::threaded`, as the lease node's data plane's is.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use palisade_host::admin::threaded::AdminThread;
use socket2::Socket;
use tracing::info;

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

/// The `/metrics` endpoint (`proxy.metrics`): a listener bound before the
/// event loop starts, so a port that cannot be bound fails the start, and
/// served by a thread of its own ([`palisade_host::admin::threaded`]) once
/// [`crate::server::run`] starts it: a scrape never takes the event loop's
/// time, and a stuck loop still answers scrapes.
#[derive(Debug)]
pub struct Endpoint {
    listener: Socket,
    local: SocketAddr,
    registry: Registry,
}

impl Endpoint {
    /// Binds `addr`; `registry` is what its scrapes render.
    pub fn bind(addr: SocketAddr, registry: Registry) -> io::Result<Endpoint> {
        let (listener, local) = palisade_host::admin::bind_listener(addr)?;
        info!(%local, "metrics on http://{local}/metrics");
        Ok(Endpoint {
            listener,
            local,
            registry,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves `GET /metrics` (and `HEAD`) from a new thread until the
    /// returned handle is dropped.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub fn start(self) -> io::Result<AdminThread> {
        let registry = self.registry;
        let pages = Arc::new(move |_now_ms: u64| render(&registry));
        palisade_host::admin::threaded::start(self.listener, pages)
    }
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

    /// One request on a fresh connection; the whole response.
    fn ask(addr: SocketAddr, request: &[u8]) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(request).expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }

    #[test]
    fn the_endpoint_serves_the_registry_on_its_thread() {
        let disk = Arc::new(ExportMetrics::default());
        disk.reads.store(4, Ordering::Relaxed);
        let registry: Registry = Arc::new(vec![("disk0".into(), disk)]);
        let endpoint =
            Endpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)), registry).expect("bind");
        let addr = endpoint.local_addr();
        assert_ne!(addr.port(), 0);
        let admin = endpoint.start().expect("admin thread");

        let get = ask(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        let head = ask(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let other = ask(addr, b"GET / HTTP/1.1\r\n\r\n");
        drop(admin);

        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(
            get.contains("\npalisade_proxy_reads_total{export=\"disk0\"} 4\n"),
            "{get}"
        );
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
    }
}
