//! Every entry of the invalid-resources table is rejected offline by the check it names, at the
//! field it names and (for CEL rules) with its exact message; and the same objects with the
//! offending part removed are accepted, so each rejection is caused by what the case says.

use std::path::PathBuf;

use portway_crds::testdata::{CheckName, InvalidCase, parse_invalid_cases};
use portway_crds::validation::{Check, Kind, validate};

fn table() -> Vec<InvalidCase> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid-resources.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_invalid_cases(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn kind_of(case: &InvalidCase) -> Kind {
    let kind = case.object["kind"].as_str().unwrap_or_default();
    Kind::from_kind(kind).unwrap_or_else(|| panic!("{}: unknown kind {kind}", case.case))
}

#[test]
fn table_has_at_least_fifteen_distinct_cases() {
    let cases = table();
    assert!(cases.len() >= 15, "only {} cases", cases.len());
    let mut names: Vec<_> = cases.iter().map(|c| c.case.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    let cel_messages: std::collections::BTreeSet<_> =
        cases.iter().filter_map(|c| c.message.as_deref()).collect();
    assert!(
        cel_messages.len() >= 15,
        "CEL rules exercised: {}",
        cel_messages.len()
    );
}

#[test]
fn every_invalid_resource_is_rejected_as_described() {
    let mut failures = Vec::new();
    let cases = table();
    for case in &cases {
        let kind = kind_of(case);
        let result = validate(kind, &case.object, case.old.as_ref());
        let Err(invalid) = result else {
            failures.push(format!("{}: accepted", case.case));
            continue;
        };
        let want: Check = case.check.into();
        let hit = invalid.violations.iter().find(|v| {
            v.check == want
                && v.path == case.field
                && case.message.as_deref().is_none_or(|m| v.message == m)
        });
        if hit.is_none() {
            failures.push(format!(
                "{}: expected {:?} at {} {:?}, got {:?}",
                case.case, case.check, case.field, case.message, invalid.violations
            ));
        }
        if case.check == CheckName::Cel {
            assert!(
                case.message.is_some(),
                "{}: CEL cases name their message",
                case.case
            );
        }
    }
    println!(
        "invalid-resources: {} tried, {} rejected as described",
        cases.len(),
        cases.len() - failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The transition case is valid on create: only the update trips the immutability rule.
#[test]
fn immutability_only_applies_to_updates() {
    for case in table().iter().filter(|c| c.old.is_some()) {
        let kind = kind_of(case);
        assert!(
            validate(kind, &case.object, None).is_ok(),
            "{} on create",
            case.case
        );
        let old = case.old.as_ref().map(|o| o.to_owned()).unwrap_or_default();
        assert!(
            validate(kind, &old, Some(&old)).is_ok(),
            "{} unchanged update",
            case.case
        );
    }
}
