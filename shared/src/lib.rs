//! imagepipe: CSV rows in, AI-generated images out.
//!
//! - [`domain`]: templates, rows, keys, jobs, the catalog, events and reports — plain data and rules.
//! - [`ports`]: what the use cases need from the world: object store, queue, run ledger, CMS,
//!   notifier, image provider.
//! - [`usecase`]: split, deliver (generate), record (finalize), report, redrive — written against
//!   the ports only.
//! - [`adapters`]: the ports on AWS (S3, SQS, DynamoDB, SSM), on disk and in memory, over HTTP.
//! - [`providers`]: the image providers and their registry.
//! - [`drivers`]: what runs the use cases: the local run, and the Lambda functions' start-up.

pub mod adapters;
pub mod domain;
pub mod drivers;
pub mod ports;
pub mod providers;
pub mod usecase;
