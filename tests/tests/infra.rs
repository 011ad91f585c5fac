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

/// The lines of the top-level section or resource `name` (up to the next one at its indent).
fn block(name: &str) -> Vec<&'static str> {
    let lines: Vec<&str> = TEMPLATE.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == format!("{name}:") || l.trim_end() == format!("  {name}:"))
        .unwrap_or_else(|| panic!("{name} is not in the template"));
    let indent = lines[start].len() - lines[start].trim_start().len();
    let end = (start + 1..lines.len())
        .find(|&i| {
            let line = lines[i];
            !line.trim().is_empty()
                && !line.trim_start().starts_with('#')
                && line.len() - line.trim_start().len() <= indent
        })
        .unwrap_or(lines.len());
    lines[start..end].to_vec()
}

#[test]
fn each_function_reads_only_the_secrets_its_role_may_read() {
    // A function reads every `_PARAM` secret it is given when it starts; one it may not read stops it.
    assert!(
        !block("Globals").iter().any(|l| l.contains("_PARAM:")),
        "no secret for every function"
    );
    for function in ["SplitterFunction", "GeneratorFunction", "FinalizerFunction"] {
        let lines = block(function);
        let given: Vec<&str> = lines
            .iter()
            .filter(|l| l.contains("_PARAM: !Ref "))
            .filter_map(|l| l.split("!Ref ").nth(1))
            .collect();
        let granted: Vec<&str> = lines
            .iter()
            .filter(|l| l.contains(":parameter${"))
            .filter_map(|l| l.split(":parameter${").nth(1)?.split('}').next())
            .collect();
        assert!(!given.is_empty(), "{function} is given its secrets by name");
        let mut sorted = (given.clone(), granted.clone());
        sorted.0.sort_unstable();
        sorted.1.sort_unstable();
        assert_eq!(
            sorted.0, sorted.1,
            "{function}: secrets given {given:?}, readable {granted:?}"
        );
    }
    assert!(block("FinalizerFunction").iter().all(|l| !l.contains("API_KEY_PARAM")));
    assert!(
        block("GeneratorFunction")
            .iter()
            .all(|l| !l.contains("CMS_TOKEN_PARAM"))
    );
}
