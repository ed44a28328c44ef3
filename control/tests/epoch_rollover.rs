//! When a resource uses up its epoch's 2^32 sequence numbers the data plane
//! asks for a new epoch; the control plane persists it before publishing,
//! so tokens keep growing (S1) without a restart.

use palisade_control::node::Node;
use palisade_tuning::{Config, CoreSelection};

#[test]
fn a_new_epoch_is_durable_before_it_is_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::builtin_default();
    config.listen.client = "127.0.0.1:0".parse().expect("addr");
    config.node.cores = CoreSelection::Count(1);
    let mut node = Node::start(&config, dir.path().to_path_buf()).expect("start");
    assert_eq!(node.epoch(), 1);
    node.tick();
    assert_eq!(node.epoch(), 1, "no request, no new epoch");
    node.leadership().request_new_epoch();
    node.tick();
    assert_eq!(node.epoch(), 2);
    assert_eq!(node.leadership().load().epoch, 2);
    let text = std::fs::read_to_string(dir.path().join("epoch")).expect("epoch file");
    assert!(text.starts_with("palisade-epoch v1 2 "), "{text}");
    node.shutdown();
    // The next start moves past the rolled-over epoch.
    let node = Node::start(&config, dir.path().to_path_buf()).expect("restart");
    assert_eq!(node.epoch(), 3);
    node.shutdown();
}
