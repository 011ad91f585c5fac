//! The run ledger in one DynamoDB table (on demand, TTL on `expires_at`), partition `pk` = run id:
//! - `sk = "run"`: the run record, its counters (`ADD`) and its claims;
//! - `sk = "row#<row>"`: one row's outcome, written once (`attribute_not_exists`) in the same
//!   transaction that moves the counters;
//! - `sk = "inv#<row>"`: one invalid row;
//! - `pk = "open-runs"`, `sk = <run id>`: the runs not yet complete, for the reconciler.
//!
//! Every call is O(1) in the run's size, but reading the rows back (`outcomes`, `invalid_rows`),
//! which pages through them with `Query`.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, ReturnValue, TransactWriteItem, Update};

use crate::domain::events::Outcome;
use crate::domain::rows::InvalidRow;
use crate::domain::template::Mode;
use crate::ports::ledger::{
    Action, Advance, Checkpoint, Claim, LedgerError, PAGE_ROWS, Page, RunLedger, RunRecord, RunState, SplitTotals,
    Tally,
};

/// A transaction holds at most 100 items: 99 outcomes and the run record.
const OUTCOMES_PER_TRANSACTION: usize = 99;
/// BatchGetItem reads at most 100 items.
const BATCH_GET_LIMIT: usize = 100;
/// BatchWriteItem takes at most 25 items.
const BATCH_WRITE_LIMIT: usize = 25;
/// Concurrent transactions on one run record conflict; they are tried again this often.
const CONFLICT_RETRIES: u32 = 8;
const OPEN_RUNS: &str = "open-runs";

type Item = HashMap<String, AttributeValue>;

/// The ledger table.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
    /// Items expire this long after their run started.
    retention: Duration,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn row_sk(prefix: &str, row: u64) -> String {
    format!("{prefix}#{row:010}")
}

fn action_attr(action: Action) -> &'static str {
    match action {
        Action::Split => "claim_split",
        Action::Start => "claim_start",
        Action::Completion => "claim_completion",
    }
}

/// Maps an SDK error to retryable (throttling, 5xx, timeouts, no response) or not.
fn ledger_error<E>(error: SdkError<E, HttpResponse>) -> LedgerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().unwrap_or_default().to_owned();
    let message = match error.message() {
        Some(message) => format!("{code}: {message}"),
        None if code.is_empty() => crate::adapters::s3_store::error_chain(&error),
        None => code.clone(),
    };
    let throttled = [
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
    ];
    let retryable = matches!(
        error,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    ) || status.is_some_and(|s| s >= 500)
        || throttled.contains(&code.as_str());
    if retryable {
        LedgerError::Unavailable(message)
    } else {
        LedgerError::Failed(message)
    }
}

fn is_conditional_failure<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    error.code() == Some("ConditionalCheckFailedException")
}

/// Names every `#name` of `expression` as the attribute `name` (reserved words included).
fn names(expression: &str) -> HashMap<String, String> {
    expression
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '#'))
        .filter_map(|word| word.strip_prefix('#'))
        .map(|name| (format!("#{name}"), name.to_owned()))
        .collect()
}

impl DynamoLedger {
    pub fn new(client: Client, table: &str, retention: Duration) -> Self {
        Self {
            client,
            table: table.to_owned(),
            retention,
        }
    }

    fn key(&self, pk: &str, sk: &str) -> Item {
        HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
    }

    fn expires_at(&self, started_at_ms: u64) -> AttributeValue {
        n(started_at_ms / 1000 + self.retention.as_secs())
    }

    fn record_item(&self, run: &RunRecord) -> Item {
        let mut item = self.key(&run.run_id, "run");
        for (name, value) in [
            ("source", &run.source),
            ("etag", &run.etag),
            ("template", &run.template),
            ("model", &run.model),
            ("provider", &run.provider),
            ("template_source", &run.template_source),
        ] {
            item.insert(name.into(), s(value));
        }
        if let Some(entry) = run.model_entry.as_ref().and_then(|e| serde_json::to_string(e).ok()) {
            item.insert("model_entry".into(), s(entry));
        }
        item.insert("state".into(), s(run.state.as_str()));
        if run.mode.is_batch() {
            item.insert("mode".into(), s("batch"));
        }
        for (name, value) in [
            ("started_at", run.started_at_ms),
            ("updated_at", run.updated_at_ms),
            ("cp_offset", run.checkpoint.offset),
            ("cp_rows", run.checkpoint.rows_read),
            ("cp_sent", run.checkpoint.sent),
            ("succeeded", run.counts.succeeded),
            ("failed", run.counts.failed),
            ("reused", run.counts.reused),
            ("recorded", run.recorded()),
            ("cms_updated", run.counts.cms_updated),
            ("cms_failed", run.counts.cms_failed),
        ] {
            item.insert(name.into(), n(value));
        }
        item.insert("spend".into(), n(run.counts.spend_usd));
        item.insert("expires_at".into(), self.expires_at(run.started_at_ms));
        item
    }

    /// A conditional update of the run record; `Ok(None)` when the condition does not hold.
    async fn update_run(
        &self,
        run_id: &str,
        update: &str,
        condition: &str,
        values: Item,
    ) -> Result<Option<RunRecord>, LedgerError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(run_id, "run")))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names(&format!("{update} {condition}"))).filter(|n| !n.is_empty()))
            .set_expression_attribute_values(Some(values).filter(|v| !v.is_empty()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => output.attributes.map(|item| parse_record(&item)).transpose(),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(ledger_error(e)),
        }
    }

    async fn page(
        &self,
        run_id: &str,
        prefix: &str,
        after: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), LedgerError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(run_id))
            .expression_attribute_values(":from", s(row_sk(prefix, after.map_or(0, |a| a + 1))))
            .expression_attribute_values(":to", s(row_sk(prefix, 9_999_999_999)))
            .limit(PAGE_ROWS as i32)
            .send()
            .await
            .map_err(ledger_error)?;
        let bodies: Vec<String> = output
            .items()
            .iter()
            .filter_map(|item| item.get("body")?.as_s().ok().cloned())
            .collect();
        let last_row = output
            .items()
            .last()
            .and_then(|item| item.get("sk")?.as_s().ok()?.split_once('#')?.1.parse().ok());
        Ok((bodies, output.last_evaluated_key().and(last_row)))
    }

    /// One transaction: the outcomes (each only if its row has none) and the counters they move.
    async fn record_chunk(&self, run_id: &str, outcomes: &[&Outcome]) -> Result<Result<(), Vec<u64>>, LedgerError> {
        let tally = Tally::of(outcomes.iter().copied());
        let mut items = Vec::with_capacity(outcomes.len() + 1);
        let expires = self.expires_at(crate::domain::events::now_ms());
        for outcome in outcomes {
            let mut item = self.key(run_id, &row_sk("row", outcome.row()));
            let body = serde_json::to_string(outcome).map_err(|e| LedgerError::Failed(e.to_string()))?;
            item.insert("body".into(), s(body));
            item.insert("expires_at".into(), expires.clone());
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(|e| LedgerError::Failed(e.to_string()))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        let update_expression = "ADD succeeded :s, failed :f, reused :r, spend :c, cms_updated :cu, cms_failed :cf, \
                                 recorded :n SET updated_at = :now";
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(self.key(run_id, "run")))
            .update_expression(update_expression)
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":s", n(tally.succeeded))
            .expression_attribute_values(":f", n(tally.failed))
            .expression_attribute_values(":r", n(tally.reused))
            .expression_attribute_values(":c", n(tally.spend_usd))
            .expression_attribute_values(":cu", n(tally.cms_updated))
            .expression_attribute_values(":cf", n(tally.cms_failed))
            .expression_attribute_values(":n", n(tally.succeeded + tally.failed))
            .expression_attribute_values(":now", n(crate::domain::events::now_ms()))
            .build()
            .map_err(|e| LedgerError::Failed(e.to_string()))?;
        items.push(TransactWriteItem::builder().update(update).build());
        let error = match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => return Ok(Ok(())),
            Err(e) => e,
        };
        let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = error.as_service_error() else {
            return Err(ledger_error(error));
        };
        let codes: Vec<&str> = cancelled
            .cancellation_reasons()
            .iter()
            .map(|r| r.code().unwrap_or("None"))
            .collect();
        if codes.get(outcomes.len()) == Some(&"ConditionalCheckFailed") {
            return Err(LedgerError::UnknownRun(run_id.to_owned()));
        }
        let existing: Vec<u64> = outcomes
            .iter()
            .zip(&codes)
            .filter(|(_, code)| **code == "ConditionalCheckFailed")
            .map(|(o, _)| o.row())
            .collect();
        if !existing.is_empty() {
            return Ok(Err(existing));
        }
        if codes.is_empty() {
            // No reasons given: find the rows already recorded by reading them.
            let mut existing = Vec::new();
            for outcome in outcomes {
                if self.outcome(run_id, outcome.row()).await?.is_some() {
                    existing.push(outcome.row());
                }
            }
            if !existing.is_empty() {
                return Ok(Err(existing));
            }
        }
        Err(LedgerError::Unavailable(format!(
            "transaction cancelled: {}",
            codes.join(", ")
        )))
    }
}

fn get_s<'a>(item: &'a Item, name: &str) -> &'a str {
    item.get(name).and_then(|v| v.as_s().ok()).map_or("", String::as_str)
}

fn get_n<T: std::str::FromStr + Default>(item: &Item, name: &str) -> T {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

fn parse_record(item: &Item) -> Result<RunRecord, LedgerError> {
    let state = RunState::parse(get_s(item, "state"))
        .ok_or_else(|| LedgerError::Failed(format!("run record with state {:?}", get_s(item, "state"))))?;
    let totals = match item.get("totals").and_then(|v| v.as_s().ok()) {
        None => None,
        Some(json) => Some(
            serde_json::from_str::<SplitTotals>(json)
                .map_err(|e| LedgerError::Failed(format!("run totals this version cannot read: {e}")))?,
        ),
    };
    Ok(RunRecord {
        run_id: get_s(item, "pk").to_owned(),
        source: get_s(item, "source").to_owned(),
        etag: get_s(item, "etag").to_owned(),
        template: get_s(item, "template").to_owned(),
        model: get_s(item, "model").to_owned(),
        template_source: get_s(item, "template_source").to_owned(),
        model_entry: item
            .get("model_entry")
            .and_then(|v| v.as_s().ok())
            .and_then(|json| serde_json::from_str(json).ok()),
        provider: get_s(item, "provider").to_owned(),
        started_at_ms: get_n(item, "started_at"),
        state,
        totals,
        checkpoint: Checkpoint {
            offset: get_n(item, "cp_offset"),
            rows_read: get_n(item, "cp_rows"),
            sent: get_n(item, "cp_sent"),
        },
        counts: Tally {
            succeeded: get_n(item, "succeeded"),
            failed: get_n(item, "failed"),
            reused: get_n(item, "reused"),
            spend_usd: get_n(item, "spend"),
            cms_updated: get_n(item, "cms_updated"),
            cms_failed: get_n(item, "cms_failed"),
        },
        updated_at_ms: get_n(item, "updated_at"),
        started_announced: item.contains_key("start_done"),
        stopped: item.get("stopped").and_then(|v| v.as_s().ok()).cloned(),
        redrives: get_n(item, "redrives"),
        mode: match get_s(item, "mode") {
            "batch" => Mode::Batch,
            _ => Mode::Sync,
        },
        completed_at_ms: item.contains_key("completed_at").then(|| get_n(item, "completed_at")),
    })
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, LedgerError> {
    serde_json::from_str(body).map_err(|e| LedgerError::Failed(format!("a row record this version cannot read: {e}")))
}

impl RunLedger for DynamoLedger {
    #[tracing::instrument(skip_all, fields(run_id = %run.run_id))]
    async fn create_run(&self, run: &RunRecord) -> Result<RunRecord, LedgerError> {
        let record = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.record_item(run)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| LedgerError::Failed(e.to_string()))?;
        let mut open = self.key(OPEN_RUNS, &run.run_id);
        open.insert("started_at".into(), n(run.started_at_ms));
        open.insert("expires_at".into(), self.expires_at(run.started_at_ms));
        let open = Put::builder()
            .table_name(&self.table)
            .set_item(Some(open))
            .build()
            .map_err(|e| LedgerError::Failed(e.to_string()))?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(record).build())
            .transact_items(TransactWriteItem::builder().put(open).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(run.clone()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(TransactWriteItemsError::TransactionCanceledException(_))
                ) =>
            {
                self.run(&run.run_id)
                    .await?
                    .ok_or_else(|| LedgerError::Unavailable(format!("creating run {}: {e:?}", run.run_id)))
            }
            Err(e) => Err(ledger_error(e)),
        }
    }

    #[tracing::instrument(skip(self))]
    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, LedgerError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(run_id, "run")))
            .consistent_read(true)
            .send()
            .await
            .map_err(ledger_error)?;
        output.item.map(|item| parse_record(&item)).transpose()
    }

    #[tracing::instrument(skip(self, totals))]
    async fn set_totals(&self, run_id: &str, totals: &SplitTotals) -> Result<(), LedgerError> {
        let json = serde_json::to_string(totals).map_err(|e| LedgerError::Failed(e.to_string()))?;
        let values = HashMap::from([
            (":t".to_owned(), s(json)),
            (":a".to_owned(), n(totals.awaited)),
            (":now".to_owned(), n(crate::domain::events::now_ms())),
        ]);
        self.update_run(
            run_id,
            "SET #totals = :t, #awaited = :a, #updated_at = :now",
            "attribute_exists(pk) AND attribute_not_exists(#totals)",
            values,
        )
        .await
        .map(|_| ())
    }

    #[tracing::instrument(skip(self))]
    async fn advance(&self, run_id: &str, step: Advance) -> Result<bool, LedgerError> {
        let Advance { from, to, finished } = step;
        let mut update = "SET #cp_offset = :o, #cp_rows = :r, #cp_sent = :s, #updated_at = :now".to_owned();
        if finished {
            update.push_str(", #state = :running");
        }
        let mut values = HashMap::from([
            (":o".to_owned(), n(to.offset)),
            (":r".to_owned(), n(to.rows_read)),
            (":s".to_owned(), n(to.sent)),
            (":fo".to_owned(), n(from.offset)),
            (":fr".to_owned(), n(from.rows_read)),
            (":fs".to_owned(), n(from.sent)),
            (":splitting".to_owned(), s(RunState::Splitting.as_str())),
            (":running".to_owned(), s(RunState::Running.as_str())),
            (":now".to_owned(), n(crate::domain::events::now_ms())),
        ]);
        if !finished {
            values.remove(":running");
        }
        let condition = "#state = :splitting AND #cp_offset = :fo AND #cp_rows = :fr AND #cp_sent = :fs";
        Ok(self.update_run(run_id, &update, condition, values).await?.is_some())
    }

    #[tracing::instrument(skip(self, rows), fields(rows = rows.len()))]
    async fn record_invalid(&self, run_id: &str, rows: &[InvalidRow]) -> Result<(), LedgerError> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        let expires = self.expires_at(crate::domain::events::now_ms());
        for chunk in rows.chunks(BATCH_WRITE_LIMIT) {
            let mut requests = Vec::with_capacity(chunk.len());
            for row in chunk {
                let mut item = self.key(run_id, &row_sk("inv", row.row));
                let body = serde_json::to_string(row).map_err(|e| LedgerError::Failed(e.to_string()))?;
                item.insert("body".into(), s(body));
                item.insert("expires_at".into(), expires.clone());
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map_err(|e| LedgerError::Failed(e.to_string()))?;
                requests.push(WriteRequest::builder().put_request(put).build());
            }
            let mut pending = HashMap::from([(self.table.clone(), requests)]);
            for attempt in 0.. {
                let output = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(ledger_error)?;
                pending = output.unprocessed_items.unwrap_or_default();
                pending.retain(|_, requests| !requests.is_empty());
                if pending.is_empty() {
                    break;
                }
                if attempt >= CONFLICT_RETRIES {
                    return Err(LedgerError::Unavailable(
                        "invalid rows left unprocessed by DynamoDB".into(),
                    ));
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        Ok(())
    }

    #[tracing::instrument(skip(self, outcomes), fields(outcomes = outcomes.len()))]
    async fn record(&self, run_id: &str, outcomes: &[Outcome]) -> Result<Vec<Outcome>, LedgerError> {
        // A transaction may name an item once: keep the first outcome of each row.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&Outcome> = outcomes.iter().filter(|o| seen.insert(o.row())).collect();
        let mut recorded = Vec::new();
        for chunk in unique.chunks(OUTCOMES_PER_TRANSACTION) {
            let mut pending: Vec<&Outcome> = chunk.to_vec();
            let mut attempt = 0;
            while !pending.is_empty() {
                match self.record_chunk(run_id, &pending).await {
                    Ok(Ok(())) => {
                        recorded.extend(pending.drain(..).cloned());
                    }
                    Ok(Err(existing)) => pending.retain(|o| !existing.contains(&o.row())),
                    Err(LedgerError::Unavailable(reason)) if attempt < CONFLICT_RETRIES => {
                        tracing::debug!(%reason, attempt, "transaction tried again");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(recorded)
    }

    #[tracing::instrument(skip(self, rows), fields(rows = rows.len()))]
    async fn recorded_rows(&self, run_id: &str, rows: &[u64]) -> Result<Vec<u64>, LedgerError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut unique: Vec<u64> = rows.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut found = Vec::new();
        for chunk in unique.chunks(BATCH_GET_LIMIT) {
            let keys: Vec<Item> = chunk.iter().map(|&row| self.key(run_id, &row_sk("row", row))).collect();
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .projection_expression("sk")
                    .consistent_read(true)
                    .build()
                    .map_err(|e| LedgerError::Failed(e.to_string()))?,
            );
            let mut attempt = 0;
            while let Some(request) = pending.take() {
                let output = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(ledger_error)?;
                for item in output
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    if let Some(row) = get_s(&item, "sk").split_once('#').and_then(|(_, r)| r.parse().ok()) {
                        found.push(row);
                    }
                }
                pending = output
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
                if pending.is_some() {
                    attempt += 1;
                    if attempt > CONFLICT_RETRIES {
                        return Err(LedgerError::Unavailable("rows left unread by DynamoDB".into()));
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Ok(found)
    }

    #[tracing::instrument(skip(self))]
    async fn outcome(&self, run_id: &str, row: u64) -> Result<Option<Outcome>, LedgerError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(run_id, &row_sk("row", row))))
            .consistent_read(true)
            .send()
            .await
            .map_err(ledger_error)?;
        output
            .item
            .and_then(|item| item.get("body")?.as_s().ok().cloned())
            .map(|body| parse_body(&body))
            .transpose()
    }

    #[tracing::instrument(skip(self))]
    async fn claim(&self, run_id: &str, claim: Claim) -> Result<Option<RunRecord>, LedgerError> {
        let attr = action_attr(claim.action);
        let free = format!("(attribute_not_exists(#{attr}) OR #{attr} < :now)");
        let mut values = HashMap::from([
            (":now".to_owned(), n(claim.now_ms)),
            (":until".to_owned(), n(claim.until_ms)),
        ]);
        let condition = match claim.action {
            Action::Split => {
                values.insert(":splitting".into(), s(RunState::Splitting.as_str()));
                format!("#state = :splitting AND {free}")
            }
            Action::Start => {
                values.insert(":splitting".into(), s(RunState::Splitting.as_str()));
                format!("#state <> :splitting AND attribute_not_exists(#start_done) AND {free}")
            }
            Action::Completion => {
                values.insert(":running".into(), s(RunState::Running.as_str()));
                format!(
                    "#state = :running AND attribute_exists(#start_done) AND #recorded >= #awaited \
                     AND attribute_not_exists(#completed_at) AND {free}"
                )
            }
        };
        self.update_run(run_id, &format!("SET #{attr} = :until"), &condition, values)
            .await
    }

    #[tracing::instrument(skip(self))]
    async fn release(&self, run_id: &str, action: Action) -> Result<(), LedgerError> {
        let claim = action_attr(action);
        self.update_run(
            run_id,
            &format!("REMOVE #{claim}"),
            "attribute_exists(pk)",
            HashMap::new(),
        )
        .await
        .map(|_| ())
    }

    #[tracing::instrument(skip(self))]
    async fn done(&self, run_id: &str, action: Action, now_ms: u64) -> Result<(), LedgerError> {
        let claim = action_attr(action);
        if action == Action::Split {
            return self.release(run_id, action).await;
        }
        if action == Action::Start {
            let values = HashMap::from([(":now".to_owned(), n(now_ms))]);
            return self
                .update_run(
                    run_id,
                    &format!("SET #start_done = :now REMOVE #{claim}"),
                    "attribute_exists(pk)",
                    values,
                )
                .await
                .map(|_| ());
        }
        let update_expression = format!("SET #state = :complete, #completed_at = :now REMOVE #{claim}");
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(self.key(run_id, "run")))
            .update_expression(&update_expression)
            .set_expression_attribute_names(Some(names(&update_expression)))
            .expression_attribute_values(":complete", s(RunState::Complete.as_str()))
            .expression_attribute_values(":now", n(now_ms))
            .build()
            .map_err(|e| LedgerError::Failed(e.to_string()))?;
        let open = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(self.key(OPEN_RUNS, run_id)))
            .build()
            .map_err(|e| LedgerError::Failed(e.to_string()))?;
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build())
            .transact_items(TransactWriteItem::builder().delete(open).build())
            .send()
            .await
            .map_err(ledger_error)?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn outcomes(&self, run_id: &str, after: Option<u64>) -> Result<Page<Outcome>, LedgerError> {
        let (bodies, next_after) = self.page(run_id, "row", after).await?;
        let items = bodies.iter().map(|b| parse_body(b)).collect::<Result<_, _>>()?;
        Ok(Page { items, next_after })
    }

    #[tracing::instrument(skip(self))]
    async fn invalid_rows(&self, run_id: &str, after: Option<u64>) -> Result<Page<InvalidRow>, LedgerError> {
        let (bodies, next_after) = self.page(run_id, "inv", after).await?;
        let items = bodies.iter().map(|b| parse_body(b)).collect::<Result<_, _>>()?;
        Ok(Page { items, next_after })
    }

    #[tracing::instrument(skip(self))]
    async fn stop(&self, run_id: &str, reason: &str) -> Result<bool, LedgerError> {
        let values = HashMap::from([(":r".to_owned(), s(reason))]);
        let stopped = self
            .update_run(
                run_id,
                "SET #stopped = :r",
                "attribute_exists(pk) AND attribute_not_exists(#stopped)",
                values,
            )
            .await?;
        Ok(stopped.is_some())
    }

    #[tracing::instrument(skip(self))]
    async fn stop_over_budget(&self, run_id: &str, cap_usd: f64, reason: &str) -> Result<bool, LedgerError> {
        let values = HashMap::from([(":r".to_owned(), s(reason)), (":cap".to_owned(), n(cap_usd))]);
        let condition = "attribute_exists(pk) AND attribute_not_exists(#stopped) AND #spend >= :cap";
        Ok(self
            .update_run(run_id, "SET #stopped = :r", condition, values)
            .await?
            .is_some())
    }

    #[tracing::instrument(skip(self, rows), fields(rows = rows.len()))]
    async fn reopen(&self, run_id: &str, rows: &[u64]) -> Result<Vec<u64>, LedgerError> {
        let mut reopened = Vec::new();
        for chunk in rows.chunks(OUTCOMES_PER_TRANSACTION - 1) {
            // Only recorded failures: a row that succeeded since is left alone.
            let mut failed = Vec::new();
            for &row in chunk {
                if let Some(Outcome::Failed { .. }) = self.outcome(run_id, row).await? {
                    failed.push(row);
                }
            }
            if failed.is_empty() {
                continue;
            }
            let mut items = Vec::with_capacity(failed.len() + 1);
            for &row in &failed {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(self.key(run_id, &row_sk("row", row))))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .map_err(|e| LedgerError::Failed(e.to_string()))?;
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            let update_expression = "ADD failed :minus, recorded :minus SET updated_at = :now";
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(self.key(run_id, "run")))
                .update_expression(update_expression)
                .expression_attribute_values(":minus", n(-(failed.len() as i64)))
                .expression_attribute_values(":now", n(crate::domain::events::now_ms()))
                .build()
                .map_err(|e| LedgerError::Failed(e.to_string()))?;
            items.push(TransactWriteItem::builder().update(update).build());
            self.client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
                .map_err(ledger_error)?;
            reopened.extend(failed);
        }
        // Open again: the completion is claimed anew, the stop is lifted, the run is listed as open.
        let values = HashMap::from([
            (":running".to_owned(), s(RunState::Running.as_str())),
            (":one".to_owned(), n(1)),
        ]);
        self.update_run(
            run_id,
            "SET #state = :running ADD #redrives :one REMOVE #completed_at, #claim_completion, #stopped",
            "attribute_exists(pk)",
            values,
        )
        .await?;
        let mut open = self.key(OPEN_RUNS, run_id);
        open.insert("started_at".into(), n(crate::domain::events::now_ms()));
        open.insert("expires_at".into(), self.expires_at(crate::domain::events::now_ms()));
        (self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(open))
            .send()
            .await)
            .map_err(ledger_error)?;
        Ok(reopened)
    }

    #[tracing::instrument(skip(self))]
    async fn open_runs(&self) -> Result<Vec<String>, LedgerError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(OPEN_RUNS))
            .into_paginator()
            .send();
        let mut runs: Vec<(u64, String)> = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(ledger_error)?;
            runs.extend(
                page.items()
                    .iter()
                    .map(|item| (get_n(item, "started_at"), get_s(item, "sk").to_owned())),
            );
        }
        runs.sort();
        Ok(runs.into_iter().map(|(_, id)| id).collect())
    }
}

/// 20 ms, 40 ms … up to ~1 s, jittered: concurrent writers of one run record drift apart.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 20u64 << attempt.min(6);
    Duration::from_millis(ceiling / 2 + rand::random::<u64>() % (ceiling / 2 + 1))
}
