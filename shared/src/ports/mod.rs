//! The ports: the traits the use cases are written against. Adapters implement them.

pub mod batch;
pub mod ledger;
pub mod metrics;
pub mod provider;
pub mod publish;
pub mod queue;
pub mod store;
