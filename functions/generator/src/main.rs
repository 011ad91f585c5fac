//! The generator Lambda function: SQS batches of jobs → images in S3, outcomes to the events queue.

use generator::handler;
use imagepipe::config::Config;
use imagepipe::lambda::{AwsClients, init_tracing};
use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let clients = AwsClients::from_env().await;
    imagepipe::adapters::ssm_secrets::load_secrets(&clients.ssm).await?;
    let deps = handler::Deps::new(&clients, Config::from_env()?)?;
    run(service_fn(|event| handler::handle(&deps, event))).await
}
