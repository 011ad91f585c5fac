//! The use cases, written against the ports so every driver (CLI, Lambda functions) runs the same code.

pub mod finalize;
pub mod generate;
pub mod plan;
