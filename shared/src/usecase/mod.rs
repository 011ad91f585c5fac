//! The use cases, written against the ports so every driver (CLI, Lambda functions) runs the same code.

pub mod complete;
pub mod deliver;
pub mod finalize;
pub mod finish;
pub mod generate;
pub mod plan;
pub mod split;
