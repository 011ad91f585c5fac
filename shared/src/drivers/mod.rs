//! What runs the use cases: the local run over local adapters, and the Lambda functions' start-up
//! and configuration over AWS adapters.

pub mod config;
pub mod lambda;
pub mod local;
