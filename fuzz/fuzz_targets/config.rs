//! The config parser: `palisade_tuning::Config::load` of arbitrary TOML
//! text through the injected `MemSource`, as `palisade serve --config`
//! and `palisade config check` read a file.
//!
//! Input: the file's text (invalid UTF-8 is replaced, as no file the
//! loader accepts can hold it).
//!
//! Asserts (tuning/src/lib.rs "What it never does", docs/OPERATIONS.md
//! "Config reference"):
//! - it never panics on input;
//! - a refused file names at least one issue, each with a reason and a
//!   dotted key (an operator fixes a file in one pass; an empty key is a
//!   known finding, masked unless PALISADE_FUZZ_UNMASK=1);
//! - an accepted config validates (`validate` agrees with `load`), and its
//!   derived values (`grace_period`, `members`, `peer_listen`, resolved
//!   paths, tenant lookup) compute without panicking;
//! - round trip: `to_toml` of an accepted config parses back to the same
//!   config, and rendering that gives the same text (the rendering is a
//!   fixed point: `palisade config default` and config rewrites are
//!   stable).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade_tuning::{Config, MemSource};

const PATH: &str = "/etc/palisade/palisade.toml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let source = MemSource::new().with(PATH, text);
    match Config::load(Path::new(PATH), &source) {
        Err(errors) => {
            assert!(
                !errors.issues().is_empty(),
                "refused without naming an issue"
            );
            for issue in errors.issues() {
                // Once a finding: an empty TOML key was reported under an
                // empty name (artifacts/config/empty-key-unnamed).
                assert!(!issue.key.is_empty(), "an issue without a key: {issue:?}");
                assert!(
                    !issue.reason.is_empty(),
                    "an issue without a reason: {issue:?}"
                );
            }
            let _ = errors.to_string();
        }
        Ok(config) => {
            if let Err(errors) = config.validate() {
                panic!("load accepted a config that validate refuses:\n{errors}");
            }
            let _ = config.grace_period();
            let _ = config.members();
            let _ = config.peer_listen();
            let _ = config.data_dir_resolved();
            let _ = config.secret_file_resolved();
            for (index, tenant) in config.tenants.iter().enumerate() {
                let found = config.tenant(&tenant.name).map(|(i, _)| i as usize);
                assert_eq!(
                    found,
                    Some(index),
                    "tenant {:?} not found at its index",
                    tenant.name
                );
            }
            let rendered = config.to_toml();
            let again = match Config::from_toml_str(&rendered, Some(Path::new("/etc/palisade"))) {
                Ok(again) => again,
                Err(errors) => {
                    panic!("to_toml wrote a config that does not load:\n{errors}\n---\n{rendered}")
                }
            };
            assert!(again == config, "to_toml changed the config:\n{rendered}");
            assert_eq!(again.to_toml(), rendered, "rendering is not a fixed point");
        }
    }
});
