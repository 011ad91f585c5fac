//! `infra/template.yaml` and the code agree: the functions' environment in the template is exactly
//! the variables `Config` reads (plus the secrets' `_PARAM` names), and every handler it names exists.

use std::collections::BTreeSet;

use imagepipe::drivers::config::{VARIABLES, secret_variables};

const TEMPLATE: &str = include_str!("../../infra/template.yaml");

/// The keys of every `Variables:` block of the template.
fn template_variables() -> BTreeSet<String> {
    let mut variables = BTreeSet::new();
    let mut block_indent = None;
    for line in TEMPLATE.lines() {
        let indent = line.len() - line.trim_start().len();
        match block_indent {
            Some(outer) if indent > outer && !line.trim().is_empty() => {
                if let Some((name, _)) = line.trim().split_once(':') {
                    variables.insert(name.to_owned());
                }
            }
            _ => block_indent = None,
        }
        if line.trim() == "Variables:" {
            block_indent = Some(indent);
        }
    }
    variables
}

#[test]
fn template_environment_matches_the_config_exactly() {
    let mut expected: BTreeSet<String> = VARIABLES.iter().map(|v| v.to_string()).collect();
    expected.extend(secret_variables().iter().map(|s| format!("{s}_PARAM")));
    expected.insert("RUST_LOG".into());
    let found = template_variables();
    let missing: Vec<_> = expected.difference(&found).collect();
    let unknown: Vec<_> = found.difference(&expected).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "missing in the template: {missing:?}; unknown to Config: {unknown:?}"
    );
}

#[test]
fn secrets_are_never_plain_values_in_the_template() {
    for secret in secret_variables() {
        assert!(
            !TEMPLATE.contains(&format!("{secret}:")),
            "{secret} must be passed by name ({secret}_PARAM)"
        );
    }
}

#[test]
fn every_function_package_is_deployed_from_its_cargo_lambda_directory() {
    for function in ["splitter", "generator", "finalizer"] {
        assert!(
            TEMPLATE.contains(&format!("CodeUri: ../target/lambda/{function}/")),
            "{function}"
        );
    }
}
