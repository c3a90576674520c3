//! Driver options as an author reads them: the last value of a key wins, and each refusal
//! names the key, the value and what was expected.

use super::Options;
use crate::Error;

fn opts(pairs: &[(&str, &str)]) -> Options {
    Options(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn invalid(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected invalid-argument, got {other:?}"),
    }
}

#[test]
fn the_last_value_of_a_key_wins() {
    let o = opts(&[("size", "1G"), ("a", "x"), ("size", "2M")]);
    assert_eq!(o.get("size"), Some("2M"));
    assert_eq!(o.size("size").unwrap(), Some(2 << 20));
    assert_eq!(o.size("other").unwrap(), None);
}

#[test]
fn a_bad_size_names_the_key_and_the_value() {
    for bad in ["", "1.5G", "-1", "lots", "99999999999T"] {
        let m = invalid(opts(&[("quota", bad)]).size("quota"));
        assert_eq!(
            m,
            format!("option `quota`: `{bad}` is not a size (bytes with K, M, G or T)")
        );
    }
}

#[test]
fn an_unknown_key_is_named_with_the_known_ones() {
    let m = invalid(opts(&[("index", "on"), ("mtu", "1")]).reject_unknown(&["index", "xino"]));
    assert_eq!(m, "unknown option `mtu` (known: index, xino)");
    let m = invalid(opts(&[("mtu", "1")]).reject_unknown(&[]));
    assert_eq!(m, "unknown option `mtu`: this driver takes no options here");
    assert!(opts(&[("index", "on")]).reject_unknown(&["index"]).is_ok());
    assert!(opts(&[]).reject_unknown(&[]).is_ok());
}
