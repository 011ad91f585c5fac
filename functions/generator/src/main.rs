//! The generator Lambda function: SQS batches of jobs → images in S3, outcomes to the events queue.

use generator::handler;
use imagepipe::drivers::lambda::AwsClients;
use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (clients, config) = AwsClients::init().await?;
    let deps = handler::Deps::new(&clients, config)?;
    let metrics = imagepipe::ports::metrics::Emf::install("generator")?;
    run(service_fn(|event| metrics.around(handler::handle(&deps, event)))).await
}
