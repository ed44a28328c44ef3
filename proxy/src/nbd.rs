//! NBD protocol (placeholder until written).
