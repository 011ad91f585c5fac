//! The splitter Lambda function: an S3 upload or a schedule names a CSV; its rows become jobs.

use imagepipe::config::Config;
use imagepipe::lambda::{AwsClients, init_tracing};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use splitter::handler;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let clients = AwsClients::from_env().await;
    imagepipe::adapters::ssm_secrets::load_secrets(&clients.ssm).await?;
    let deps = handler::Deps::new(&clients, Config::from_env()?)?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        handler::handle(&deps, event)
    }))
    .await
}
