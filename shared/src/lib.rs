//! imagepipe: CSV rows in, AI-generated images out.
//!
//! The domain (templates, rows, keys, jobs, events, reports), the use cases (plan, generate, split,
//! deliver, finish) written against small ports (object store, message queue, image provider, CMS,
//! notifier), and the adapters that implement the ports. The CLI and the three Lambda functions are
//! drivers of the same use cases.

pub mod adapters;
pub mod aws_cost;
pub mod catalog;
pub mod config;
pub mod deployment;
pub mod events;
pub mod failure_class;
pub mod image_format;
pub mod job;
pub mod key;
pub mod lambda;
pub mod ledger;
pub mod local;
pub mod locations;
pub mod metrics;
pub mod net;
pub mod pattern;
pub mod provider;
pub mod publish;
pub mod queue;
pub mod record_limit;
pub mod redact;
pub mod report;
pub mod report_html;
pub mod results;
pub mod retry;
pub mod rows;
pub mod store;
pub mod template;
pub mod usecase;
