//! The use cases, written against the ports so every driver (CLI, Lambda functions) runs the same code.

pub mod deliver;
pub mod generate;
pub mod lease;
pub mod messages;
pub mod plan;
pub mod record;
pub mod redrive;
pub mod report;
pub mod split;
pub mod stops;
