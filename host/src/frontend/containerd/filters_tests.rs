//! The filter grammar at the level of its strings: quoting and escapes, spaces, blank
//! filters, and each refusal with its reason. Root-free, like the rest of the parser's tests.

use super::{Fields, Filter, parse_all};

/// An object whose only fields are `name` and `labels.<key>`.
struct Obj(&'static str, &'static [(&'static str, &'static str)]);

impl Fields for Obj {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.0.into()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                let key = rest.join(".");
                self.1
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            }
            _ => None,
        }
    }
}

fn matches(filter: &str, o: &Obj) -> bool {
    Filter::parse(filter)
        .unwrap_or_else(|e| panic!("{filter:?}: {e}"))
        .matches(o)
}

fn reason(filter: &str) -> String {
    Filter::parse(filter).expect_err(filter).reason
}

#[test]
fn quoted_values_take_escapes_commas_and_spaces() {
    let o = Obj("a,b \"q\"\\/\n\t", &[("k", " padded ")]);
    assert!(matches(r#"name=="a,b \"q\"\\\/\n\t""#, &o));
    assert!(!matches(r#"name=="a,b""#, &o));
    assert!(matches(r#"labels.k==" padded ""#, &o));
    // Unquoted values are trimmed at both ends, so they cannot hold the padding.
    assert!(!matches("labels.k== padded ", &o));
    assert!(matches("labels.k!= padded ", &o));
}

#[test]
fn spaces_between_tokens_are_ignored() {
    let o = Obj("a", &[("k", "v")]);
    assert!(matches("  name == a ,  labels . k == v  ", &o));
    assert!(matches(" labels.k ", &o));
    assert!(!matches("labels.k , labels.other", &o));
}

#[test]
fn an_unquoted_value_ends_at_a_comma_which_starts_a_new_selector() {
    let o = Obj("a", &[("b", "")]);
    // `name==a` AND `b` present: `b` is no field of the object.
    assert!(!matches("name==a,b", &o));
    assert!(matches("name==a,labels.b", &o));
}

#[test]
fn blank_filters_in_a_request_are_ignored() {
    let filters = parse_all(&["".into(), "  ".into(), "name==x".into()]).unwrap();
    assert_eq!(filters.len(), 1);
    assert!(super::any_matches(&filters, &Obj("x", &[])));
    assert!(!super::any_matches(&filters, &Obj("y", &[])));
}

#[test]
fn each_malformed_filter_is_refused_with_its_reason() {
    for (bad, why) in [
        (r#"name=="open"#, "unterminated quoted string"),
        (r#"name=="a\"#, "unterminated quoted string"),
        (r#"name=="a\x""#, "unknown escape `\\x`"),
        (r#"labels."k"#, "unterminated quoted string"),
        (r#"name=="a"x"#, "expected `,`, `==`, `!=` or `~=` at `x`"),
        ("name=x", "expected `,`, `==`, `!=` or `~=` at `=x`"),
        ("name<x", "expected `,`, `==`, `!=` or `~=` at `<x`"),
        ("", "expected a field name at ``"),
        (",name", "expected a field name at `,name`"),
        ("name,", "expected a field name at ``"),
        ("labels.", "expected a field name at ``"),
        ("labels..k", "expected a field name at `.k`"),
        ("na/me==x", "expected `,`, `==`, `!=` or `~=` at `/me==x`"),
        ("name~=[", "bad regular expression"),
    ] {
        let r = reason(bad);
        assert!(r.contains(why), "{bad:?}: {r}");
    }
}

#[test]
fn a_refusal_quotes_at_most_200_characters_of_the_filter() {
    let long = format!("name==\"{}", "x".repeat(1000));
    let e = Filter::parse(&long).unwrap_err();
    assert_eq!(e.filter.chars().count(), 200);
    assert!(e.to_string().starts_with("filter `name==\"xxx"), "{e}");
}
