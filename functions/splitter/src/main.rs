//! The splitter Lambda function: an S3 upload or a schedule names a CSV; its rows become jobs.

use imagepipe::drivers::lambda::AwsClients;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use splitter::handler;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (clients, config) = AwsClients::init().await?;
    let deps = handler::Deps::new(&clients, config)?;
    let metrics = imagepipe::ports::metrics::Emf::install("splitter")?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        metrics.around(handler::handle(&deps, event))
    }))
    .await
}
