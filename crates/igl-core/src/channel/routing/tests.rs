use igl_domain::{Jurisdiction, MessageContent};

use super::*;

fn jurisdiction(code: &str) -> Jurisdiction {
    Jurisdiction::parse(code).unwrap()
}

fn content(receiver: &str, predicate: &str) -> MessageContent {
    MessageContent {
        sender: jurisdiction("AU"),
        receiver: jurisdiction(receiver),
        subject: "AU.abn0000000000.XXXX".into(),
        obj: "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n".into(),
        predicate: predicate.into(),
    }
}

fn patterns(texts: &[&str]) -> Vec<Pattern> {
    texts
        .iter()
        .map(|text| Pattern::parse(text).unwrap())
        .collect()
}

fn rule(channel: &str, receivers: &[&str]) -> RoutingRule {
    RoutingRule::new(
        channel,
        receivers.iter().map(|code| jurisdiction(code)).collect(),
    )
}

const COO: &str = "UN.CEFACT.Trade.CertificateOfOrigin.created";

#[test]
fn patterns_are_exact_or_trailing_star_prefixes() {
    let prefix = Pattern::parse("UN.CEFACT.*").unwrap();
    assert!(prefix.matches(COO));
    assert!(prefix.matches("UN.CEFACT."));
    assert!(!prefix.matches("UN.CEFACT"));
    assert!(!prefix.matches("un.cefact.trade"), "case-sensitive");
    let exact = Pattern::parse("UN.CEFACT").unwrap();
    assert!(exact.matches("UN.CEFACT"));
    assert!(!exact.matches("UN.CEFACT.x"));
    assert!(Pattern::parse("*").unwrap().matches(""));
    assert!(Pattern::parse("*").unwrap().matches("anything"));
    for bad in ["", "a*b", "**", "*a", "a b", "a\n"] {
        assert!(Pattern::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        Pattern::parse("a*b").unwrap_err().to_string(),
        "\"a*b\" is not a routing pattern: may contain '*' only as its last character"
    );
}

#[test]
fn the_first_rule_serving_the_receiver_wins() {
    let rules = [
        rule("nz", &["NZ"]),
        rule("sg-1", &["SG"]),
        rule("sg-2", &["SG", "NZ"]),
    ];
    assert_eq!(
        route(&content("SG", COO), &rules).unwrap().channel_id,
        "sg-1"
    );
    assert_eq!(route(&content("NZ", COO), &rules).unwrap().channel_id, "nz");
    let all: Vec<&str> = matching_rules(&content("NZ", COO), &rules)
        .map(|rule| rule.channel_id.as_str())
        .collect();
    assert_eq!(all, ["nz", "sg-2"]);
}

#[test]
fn no_rule_for_the_receiver_is_no_route_with_a_reason() {
    let rules = [rule("sg", &["SG"])];
    let error = route(&content("GB", COO), &rules).unwrap_err();
    assert_eq!(error.reason, "no channel serves receiver \"GB\"");
    assert_eq!(
        error.to_string(),
        "no route: no channel serves receiver \"GB\""
    );
    assert!(route(&content("SG", COO), &[]).is_err());
    let receiverless = [rule("nowhere", &[])];
    assert!(route(&content("SG", COO), &receiverless).is_err());
}

#[test]
fn predicate_patterns_select_among_rules() {
    let rules = [
        rule("docs", &["SG"]).with_predicates(patterns(&["UN.CEFACT.Trade.Invoice.*"])),
        rule("coo", &["SG"]).with_predicates(patterns(&["UN.CEFACT.*", "urn:x"])),
    ];
    assert_eq!(
        route(&content("SG", COO), &rules).unwrap().channel_id,
        "coo"
    );
    assert_eq!(
        route(&content("SG", "UN.CEFACT.Trade.Invoice.created"), &rules)
            .unwrap()
            .channel_id,
        "docs"
    );
    assert_eq!(
        route(&content("SG", "urn:x"), &rules).unwrap().channel_id,
        "coo"
    );
    let error = route(&content("SG", "GS1.epcis.event"), &rules).unwrap_err();
    assert_eq!(
        error.reason,
        "channel docs: predicate \"GS1.epcis.event\" matches none of [UN.CEFACT.Trade.Invoice.*]; \
         channel coo: predicate \"GS1.epcis.event\" matches none of [UN.CEFACT.*, urn:x]"
    );
}

#[test]
fn allow_lists_restrict_each_listed_field() {
    let allow = FieldFilter::new()
        .with(MessageField::Sender, patterns(&["NZ", "AU"]))
        .with(MessageField::Obj, patterns(&["Qm*"]));
    let rules = [rule("sg", &["SG"]).with_allow(allow)];
    assert!(route(&content("SG", COO), &rules).is_ok());
    let mut other = content("SG", COO);
    other.obj = "https://example.org/doc".into();
    assert_eq!(
        route(&other, &rules).unwrap_err().reason,
        "channel sg: obj \"https://example.org/doc\" is not allowed (allowed: [Qm*])"
    );
}

#[test]
fn deny_wins_over_allow() {
    let allow = FieldFilter::new().with(MessageField::Subject, patterns(&["*"]));
    let deny = FieldFilter::new().with(MessageField::Subject, patterns(&["AU.abn*"]));
    let rules = [
        rule("strict", &["SG"]).with_allow(allow).with_deny(deny),
        rule("fallback", &["SG"]),
    ];
    assert_eq!(
        route(&content("SG", COO), &rules).unwrap().channel_id,
        "fallback"
    );
    let error = route(&content("SG", COO), &rules[..1]).unwrap_err();
    assert_eq!(
        error.reason,
        "channel strict: subject \"AU.abn0000000000.XXXX\" is denied by AU.abn*"
    );
}

#[test]
fn an_empty_allow_list_allows_nothing() {
    let allow = FieldFilter::new().with(MessageField::Predicate, Vec::new());
    let rules = [rule("sg", &["SG"]).with_allow(allow)];
    assert!(route(&content("SG", COO), &rules).is_err());
}

#[test]
fn the_table_wraps_the_functions() {
    let table = RoutingTable::new(vec![rule("sg", &["SG"])]);
    assert_eq!(table.rules().len(), 1);
    assert_eq!(table.route(&content("SG", COO)).unwrap().channel_id, "sg");
    assert_eq!(table.matching(&content("NZ", COO)).count(), 0);
    assert_eq!(MessageField::parse("obj"), Some(MessageField::Obj));
    assert_eq!(MessageField::parse("sender_ref"), None);
}
