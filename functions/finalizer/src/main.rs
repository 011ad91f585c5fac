//! The finalizer Lambda function: outcomes → CMS, run records, one report and Slack message per run.

use finalizer::handler;
use imagepipe::drivers::lambda::AwsClients;
use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (clients, config) = AwsClients::init().await?;
    let deps = handler::Deps::new(&clients, config)?;
    let metrics = imagepipe::ports::metrics::Emf::install("finalizer")?;
    run(service_fn(|event| metrics.around(handler::handle(&deps, event)))).await
}
