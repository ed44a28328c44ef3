//! The fencing proxy's `/metrics` page passes `promtool check metrics`.

#[path = "../../control/tests/common/promtool.rs"]
mod promtool;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use palisade_fencing_proxy::metrics::{render, ExportMetrics, Registry};

#[test]
fn promtool_accepts_the_proxy_exposition() {
    let disk = Arc::new(ExportMetrics::default());
    disk.writes_accepted.store(5, Ordering::Relaxed);
    disk.writes_fenced.store(2, Ordering::Relaxed);
    disk.fence.store((7 << 32) | 3, Ordering::Relaxed);
    let registry: Registry = Arc::new(vec![
        ("disk0".into(), disk),
        ("we\"ird\\name".into(), Arc::default()),
    ]);
    let body = render(&registry);
    assert!(body.contains("palisade_proxy_writes_fenced_total{export=\"disk0\"} 2\n"));
    promtool::check(&body);
}
