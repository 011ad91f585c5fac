//! The finalizer Lambda function: outcomes → CMS, run records, one report and Slack message per run.

use finalizer::handler;
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
