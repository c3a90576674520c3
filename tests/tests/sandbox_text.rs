//! What a driver says reaches the operator escaped: no terminal control sequence, no forged
//! line, in status lines, errors, logs and crash reports.

use strata_tests::{TempStore, hostile_wasm, root_or_skip};

/// Retitles the terminal, clears it, and starts a line that looks like the host's own.
const HOSTILE_TEXT: &str = "\u{1b}]0;owned\u{7}\u{1b}[2J\nstrata: all layers verified\u{9b}1m";

fn config(t: &TempStore) -> std::path::PathBuf {
    let path = t.dir.path().join("strata.toml");
    // TOML basic strings spell control characters as \uXXXX.
    let toml_text: String = HOSTILE_TEXT
        .chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{:04X}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect();
    std::fs::write(
        &path,
        format!(
            "driver = \"hostile\"\n[drivers.hostile]\npath = {:?}\n\
             grants = [\"files\", \"copy\", \"archive\", \"btrfs\", \"zfs\", \"log\"]\n\
             options = {{ status-text = \"{toml_text}\" }}\n",
            hostile_wasm()
        ),
    )
    .unwrap();
    path
}

fn assert_clean(what: &str, text: &str) {
    for bad in ['\u{1b}', '\u{7}', '\u{9b}'] {
        assert!(
            !text.contains(bad),
            "{what}: raw control character {bad:?} in {text:?}"
        );
    }
    assert!(
        !text.lines().any(|l| l.starts_with("strata: all layers")),
        "{what}: a forged line: {text:?}"
    );
    assert!(
        text.contains("owned") && text.contains("all layers verified"),
        "{what}: the text is still shown, escaped: {text:?}"
    );
}

#[test]
fn driver_text_is_escaped_everywhere_it_is_shown() {
    if !root_or_skip(
        "driver_text_is_escaped_everywhere_it_is_shown",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let conf = config(&t);
    let conf = conf.to_str().unwrap();
    let opt = format!("--opt=error-text={HOSTILE_TEXT}");

    // Status lines.
    let (ok, out, err) = t.cli(&["--config", conf, "status"]);
    assert!(ok, "{err}");
    assert_clean("status", &out);

    // An error message.
    let (ok, _, err) = t.cli(&["--config", conf, "layer", "create", "--id", "a", &opt]);
    assert!(!ok);
    assert_clean("error", &err);

    // A log message.
    let opt = format!("--opt=log-text={HOSTILE_TEXT}");
    let (ok, _, err) = t.cli(&["--config", conf, "layer", "create", "--id", "b", &opt]);
    assert!(ok, "{err}");
    assert_clean("log", &err);

    // A crash report with the driver's stderr.
    let opt = format!("--opt=panic-text={HOSTILE_TEXT}");
    let (ok, _, err) = t.cli(&["--config", conf, "layer", "create", "--id", "c", &opt]);
    assert!(!ok);
    assert_clean("crash", &err);
}

/// A file name holding a newline cannot forge a line of `layer changes`.
#[test]
fn changes_quote_paths_that_are_not_plain() {
    if !root_or_skip(
        "changes_quote_paths_that_are_not_plain",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let (ok, _, err) = t.cli(&["--driver", "vfs", "layer", "create", "--rw", "--id", "base"]);
    assert!(ok, "{err}");
    let (ok, out, err) = t.cli(&["--driver", "vfs", "layer", "mount", "base"]);
    assert!(ok, "{err}");
    let mnt = std::path::PathBuf::from(out.trim());
    std::fs::create_dir(mnt.join("x\nDelete ")).unwrap();
    std::fs::write(mnt.join("x\nDelete ").join("etc\u{1b}[2J"), b"").unwrap();
    let (ok, _, err) = t.cli(&["--driver", "vfs", "layer", "unmount", "base"]);
    assert!(ok, "{err}");
    let (ok, out, err) = t.cli(&["--driver", "vfs", "layer", "changes", "base"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "one line per change: {out:?}");
    assert!(
        out.lines().all(|l| l.starts_with("Add \"/x\\nDelete ")),
        "{out:?}"
    );
    assert!(!out.contains('\u{1b}'), "{out:?}");
}
