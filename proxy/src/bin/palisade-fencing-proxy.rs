//! `palisade-fencing-proxy`: NBD in front of storage, fencing stale writers.

fn main() {
    eprintln!("palisade-fencing-proxy: not built yet");
    std::process::exit(1);
}
