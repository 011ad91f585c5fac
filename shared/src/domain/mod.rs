//! The domain: what a run is made of, with no I/O.

pub mod aws_cost;
pub mod catalog;
pub mod deployment;
pub mod events;
pub mod failure_class;
pub mod image_format;
pub mod job;
pub mod key;
pub mod locations;
pub mod pattern;
pub mod record_limit;
pub mod redact;
pub mod report;
pub mod report_html;
pub mod results;
pub mod retry;
pub mod rows;
pub mod template;
