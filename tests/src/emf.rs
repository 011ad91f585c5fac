//! A checker of CloudWatch Embedded Metric Format documents, after the specification: the `_aws`
//! metadata (a millisecond `Timestamp`, `CloudWatchMetrics` directives with a `Namespace`, dimension
//! sets of at most 30 keys, at most 100 metric definitions with a valid `Unit`), and every dimension
//! key and metric name present as a top-level member (a string; a number or up to 100 numbers).

use serde_json::Value;

/// The units the specification allows.
pub const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// One metric a document carries: namespace, name, unit (`None` when absent), its dimensions and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub namespace: String,
    pub name: String,
    pub unit: String,
    pub dimensions: Vec<(String, String)>,
    pub values: Vec<f64>,
}

/// The lines of `output` that are EMF documents (they have an `_aws` member), each checked; the
/// metrics they carry, or what is wrong with the first bad one.
pub fn metrics(output: &str) -> Result<Vec<Metric>, String> {
    let mut found = Vec::new();
    for line in output.lines().filter(|l| l.contains("\"_aws\"")) {
        found.extend(document(line).map_err(|e| format!("{e}: {line}"))?);
    }
    Ok(found)
}

/// The metrics of one EMF document, or why it is not one.
pub fn document(line: &str) -> Result<Vec<Metric>, String> {
    let root: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let root = root.as_object().ok_or("not a JSON object")?;
    let aws = root.get("_aws").and_then(Value::as_object).ok_or("no _aws object")?;
    aws.get("Timestamp")
        .and_then(Value::as_u64)
        .filter(|&t| t > 1_000_000_000_000)
        .ok_or("_aws.Timestamp is not a time in milliseconds")?;
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("no _aws.CloudWatchMetrics")?;
    let mut metrics = Vec::new();
    for directive in directives {
        let namespace = directive
            .get("Namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && n.len() <= 1024);
        let namespace = namespace.ok_or("a directive without a Namespace")?;
        let sets = directive
            .get("Dimensions")
            .and_then(Value::as_array)
            .ok_or("no Dimensions")?;
        let mut keys = Vec::new();
        for set in sets {
            let set = set
                .as_array()
                .filter(|s| s.len() <= 30)
                .ok_or("a dimension set is not an array of at most 30")?;
            for key in set {
                let key = key.as_str().ok_or("a dimension key is not a string")?;
                let value = root.get(key).and_then(Value::as_str);
                let value = value.ok_or_else(|| format!("dimension {key} is not a top-level string"))?;
                keys.push((key.to_owned(), value.to_owned()));
            }
        }
        let definitions = directive
            .get("Metrics")
            .and_then(Value::as_array)
            .filter(|m| m.len() <= 100);
        for definition in definitions.ok_or("no Metrics array of at most 100")? {
            let name = definition
                .get("Name")
                .and_then(Value::as_str)
                .ok_or("a metric without a Name")?;
            let unit = match definition.get("Unit") {
                None => "None",
                Some(unit) => unit
                    .as_str()
                    .filter(|u| UNITS.contains(u))
                    .ok_or(format!("{name}: unit {unit} is not valid"))?,
            };
            let values = match root.get(name) {
                Some(Value::Number(n)) => vec![n.as_f64().unwrap_or(f64::NAN)],
                Some(Value::Array(values)) if values.len() <= 100 => values.iter().filter_map(Value::as_f64).collect(),
                _ => return Err(format!("metric {name} has no top-level number or array of numbers")),
            };
            metrics.push(Metric {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                unit: unit.to_owned(),
                dimensions: keys.clone(),
                values,
            });
        }
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"_aws":{"Timestamp":1764000000000,"CloudWatchMetrics":[{"Namespace":"imagepipe","Dimensions":[["function","reason"]],"Metrics":[{"Name":"ImagesFailed","Unit":"Count"},{"Name":"SpendUsd"}]}]},"function":"generator","reason":"refused","ImagesFailed":2,"SpendUsd":[0.5,0.25]}"#;

    #[test]
    fn a_valid_document_yields_its_metrics() {
        let metrics = document(GOOD).unwrap();
        assert_eq!(metrics.len(), 2);
        assert_eq!(
            (metrics[0].name.as_str(), metrics[0].unit.as_str()),
            ("ImagesFailed", "Count")
        );
        assert_eq!(metrics[1].values, [0.5, 0.25]);
        assert_eq!(metrics[1].unit, "None");
        assert_eq!(metrics[0].dimensions[1], ("reason".into(), "refused".into()));
    }

    #[test]
    fn broken_documents_are_refused() {
        for (from, to) in [
            (r#""Unit":"Count""#, r#""Unit":"USD""#),
            (r#""reason":"refused","#, ""),
            (r#""ImagesFailed":2,"#, ""),
            (r#""Timestamp":1764000000000,"#, ""),
            (r#""Namespace":"imagepipe","#, ""),
        ] {
            let broken = GOOD.replacen(from, to, 1);
            assert!(document(&broken).is_err(), "{broken}");
        }
    }
}
