//! [`validate_id`]: every layer id and name the store takes (from a driver, a client, an
//! image) is one safe path component of bounded length, and a refusal says what was refused
//! and the rule.

use super::{MAX_ID_LEN, StoreError, validate_id};

#[test]
fn safe_single_components_within_the_length_are_accepted() {
    for ok in [
        "a",
        "0",
        "abc123",
        "a.b-c_d",
        "sha256-0123abcdef",
        "a..b",
        "A-",
        &"x".repeat(MAX_ID_LEN),
    ] {
        assert!(validate_id("layer id", ok).is_ok(), "{ok:?}");
    }
}

#[test]
fn anything_else_is_refused_naming_what_and_the_rule() {
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "-flag",
        "_a",
        "a/b",
        "a/../b",
        "/abs",
        "a b",
        "a\0b",
        "a\nb",
        "a:b",
        "caf\u{e9}",
        "a\u{202e}b",
        &"x".repeat(MAX_ID_LEN + 1),
    ] {
        let e = validate_id("layer id", bad).expect_err(bad);
        let StoreError::Invalid(m) = &e else {
            panic!("{bad:?}: {e}")
        };
        assert!(m.starts_with("invalid layer id `"), "{bad:?}: {m}");
        assert!(m.contains(&format!("at most {MAX_ID_LEN} bytes")), "{m}");
    }
}
