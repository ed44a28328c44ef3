//! Durable fence store (placeholder until written).
