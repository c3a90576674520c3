//! Front ends: how people and programs reach the layer service. Today the `strata` CLI.

pub mod cli;
pub mod containerd;
mod images;
mod output;
