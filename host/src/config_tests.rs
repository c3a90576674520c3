//! The edges of the size and duration syntax of `strata.toml` and `--opt`: what is taken,
//! and that everything else (signs, fractions, overflow, missing numbers or units) is refused
//! rather than read as something else.

use std::time::Duration;

use super::{parse_duration, parse_size};

#[test]
fn sizes_in_every_spelling() {
    for (text, want) in [
        ("0", 0),
        ("1024", 1024),
        ("64k", 64 << 10),
        ("64K", 64 << 10),
        ("64KB", 64 << 10),
        ("64KiB", 64 << 10),
        ("3m", 3 << 20),
        ("3MiB", 3 << 20),
        (" 2 G ", 2 << 30),
        ("1T", 1 << 40),
        ("16777215T", 16_777_215 << 40),
    ] {
        assert_eq!(parse_size(text), Some(want), "{text:?}");
    }
}

#[test]
fn sizes_that_are_not_a_whole_number_of_bytes_within_u64_are_refused() {
    for text in [
        "",
        "K",
        "KiB",
        "-1",
        "-1K",
        "1.5G",
        "1e3",
        "1P",
        "1 KK",
        "0x10",
        "ten",
        "16777216T",
        "18446744073709551616",
    ] {
        assert_eq!(parse_size(text), None, "{text:?}");
    }
}

#[test]
fn durations_in_every_unit() {
    for (text, want) in [
        ("0ms", Duration::ZERO),
        ("250ms", Duration::from_millis(250)),
        ("10s", Duration::from_secs(10)),
        (" 2 m ", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("4294967295ms", Duration::from_millis(u32::MAX as u64)),
    ] {
        assert_eq!(parse_duration(text), Some(want), "{text:?}");
    }
}

#[test]
fn durations_without_a_unit_or_out_of_range_are_refused() {
    for text in [
        "",
        "10",
        "ms",
        "s",
        "-1s",
        "1.5s",
        "1d",
        "1 min",
        "10sec",
        "4294967296ms",
        "1e3s",
    ] {
        assert_eq!(parse_duration(text), None, "{text:?}");
    }
}
