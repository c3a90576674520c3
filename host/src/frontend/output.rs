//! What the CLI's commands share (the layer, image and container commands of [`super::cli`]
//! and [`super::images`]): argument parsing and output. Kept below both so that neither
//! front-end module depends on the other.

use std::io::Write;

use anyhow::Result;

use crate::text::escape;

/// A `KEY=VALUE` argument (driver options).
pub(super) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

pub(super) fn print_json(value: serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &value)?;
    writeln!(out)?;
    Ok(())
}

/// A JSON document for people (`inspect` without `--json`): pretty, each line escaped.
/// JSON escapes C0 controls in strings but not DEL, C1 controls (`\u{9b}` starts a terminal
/// sequence too) or bidirectional overrides; strings from images and drivers may hold them.
/// Real newlines are only the layout's, so escaping line by line keeps the layout.
pub(super) fn print_human_json(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        writeln!(out, "{}", escape(line))?;
    }
    Ok(())
}

/// A path given by a user or found in an image, for a line of human output: quoted when it
/// holds anything unusual, as `ls` quotes.
pub(super) fn quoted(path: &str) -> String {
    crate::text::quote_path(path).into_owned()
}
