//! Choosing an upstream: tiers, fitness (lag, regions, quarantine), power of two choices.

pub mod balance;
