use std::io::{Cursor, Read, Write};

use super::*;
use crate::sys::fs::Dir;

fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(rustix::process::geteuid().as_raw() as u64);
        h.set_gid(rustix::process::getegid().as_raw() as u64);
        b.append_data(&mut h, path, *body).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn names_are_normalised_and_climbing_is_refused() {
    assert_eq!(apply::tests_normalise(b"/a/./b/"), Ok("a/b".into()));
    assert_eq!(apply::tests_normalise(b"./x"), Ok("x".into()));
    assert!(apply::tests_normalise(b"a/../../b").is_err());
    assert!(apply::tests_normalise(b"a\0b").is_err());
}

#[test]
fn gzip_and_zstd_are_detected() {
    let plain = tar_with(&[("f", b"hello")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(Cursor::new(plain.clone()), 1).unwrap();
    for input in [plain.clone(), gz, zst] {
        let mut out = Vec::new();
        decompressed(Box::new(Cursor::new(input)))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
    }
}

#[test]
fn apply_then_export_round_trips_files_and_deletions() {
    if !crate::test_env::root_or_skip(
        "apply_then_export_round_trips_files_and_deletions",
        "apply makes implied parents and its scratch directory owned 0:0",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = Dir::open_ambient(tmp.path()).unwrap();
    for d in ["parent", "child", "replay"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
    }
    let parent = top.open_dir("parent").unwrap();
    apply_layer_tar(
        Cursor::new(tar_with(&[
            ("a/one", b"1"),
            ("a/two", b"22"),
            ("gone/x", b"x"),
        ])),
        &parent,
        WhiteoutFormat::Delete,
    )
    .unwrap();
    for d in ["child", "replay"] {
        std::fs::remove_dir(tmp.path().join(d)).unwrap();
        crate::copy::copy_tree(
            &top,
            "parent",
            &top,
            d,
            crate::copy::CopyMode::ReflinkOrCopy,
        )
        .unwrap();
    }
    let child = top.open_dir("child").unwrap();
    let stats = apply_layer_tar(
        Cursor::new(tar_with(&[
            ("a/two", b"two"),
            ("a/.wh.one", b""),
            (".wh.gone", b""),
        ])),
        &child,
        WhiteoutFormat::Delete,
    )
    .unwrap();
    assert_eq!(stats.size, 3);
    assert!(!tmp.path().join("child/a/one").exists());
    assert!(!tmp.path().join("child/gone").exists());
    let found = changes(&child, Some(&parent)).unwrap();
    let kinds: Vec<(String, ChangeKind)> = found.into_iter().map(|c| (c.path, c.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ("/a".into(), ChangeKind::Modify),
            ("/a/one".into(), ChangeKind::Delete),
            ("/a/two".into(), ChangeKind::Modify),
            ("/gone".into(), ChangeKind::Delete),
        ]
    );
    assert_eq!(diff_size(&child, Some(&parent)).unwrap(), 3);
    let mut tar = Vec::new();
    write_diff_tar(&child, Some(&parent), &mut tar).unwrap();
    let replay = top.open_dir("replay").unwrap();
    let applied = apply_layer_tar(Cursor::new(tar), &replay, WhiteoutFormat::Delete).unwrap();
    assert_eq!(applied.size, 3);
    let left = changes(&replay, Some(&child)).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn hostile_entries_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("layer")).unwrap();
    std::fs::create_dir(tmp.path().join("outside")).unwrap();
    let layer = Dir::open_ambient(&tmp.path().join("layer")).unwrap();
    let outside = tmp.path().join("outside").to_string_lossy().into_owned();
    // A symlink to the outside, then a write through it: lands inside (chroot semantics).
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "esc", &outside).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(1);
    b.append_data(&mut h, "esc/pwned", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let _ = apply_layer_tar(Cursor::new(tar), &layer, WhiteoutFormat::Delete);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("outside"))
            .unwrap()
            .count(),
        0
    );
    // `..` names are refused, naming the entry.
    let mut raw = tar_with(&[("x", b"x")]);
    raw[..100].fill(0);
    raw[..13].copy_from_slice(b"../../escaped");
    let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
    h.set_cksum();
    raw[..512].copy_from_slice(h.as_bytes());
    let err = apply_layer_tar(Cursor::new(raw), &layer, WhiteoutFormat::Delete).unwrap_err();
    assert!(err.to_string().contains("../../escaped"), "{err}");
    assert!(!tmp.path().join("escaped").exists());
}

/// Names of every path beneath `root`, with their content for files.
fn listing(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                stack.push(path);
                out.push((rel, Vec::new()));
            } else {
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_undo_journal_past_its_budget_fails_the_apply_and_undoes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let top = Dir::open_ambient(tmp.path()).unwrap();
    std::fs::create_dir(tmp.path().join("layer")).unwrap();
    // An existing directory with a long path (names under NAME_MAX, about 3.8 KiB in all),
    // so that each entry the tar adds into it costs the journal a note of that size.
    let component = "d".repeat(200);
    let deep: Vec<&str> = std::iter::repeat_n(component.as_str(), 19).collect();
    let deep = deep.join("/");
    std::fs::create_dir_all(tmp.path().join("layer").join(&deep)).unwrap();
    std::fs::write(tmp.path().join("layer/kept"), b"kept").unwrap();
    let before = listing(&tmp.path().join("layer"));
    let layer = top.open_dir("layer").unwrap();
    let count = undo::MAX_UNDO_BYTES / deep.len() + 100;
    let names: Vec<String> = (0..count).map(|i| format!("{deep}/f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let err = apply_layer_tar(
        Cursor::new(tar_with(&entries)),
        &layer,
        WhiteoutFormat::Delete,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("more of what the layer held than an apply can undo"),
        "{msg}"
    );
    assert!(msg.contains("left as it was"), "{msg}");
    assert_eq!(listing(&tmp.path().join("layer")), before);
}

#[test]
fn a_replacing_apply_leaves_no_scratch_directory() {
    if !crate::test_env::root_or_skip(
        "a_replacing_apply_leaves_no_scratch_directory",
        "apply makes implied parents and its scratch directory owned 0:0",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = Dir::open_ambient(tmp.path()).unwrap();
    std::fs::create_dir(tmp.path().join("layer")).unwrap();
    std::fs::write(tmp.path().join("layer/a"), b"old").unwrap();
    let layer = top.open_dir("layer").unwrap();
    // The scratch name is random per apply (an entry naming it exactly is refused): a tar
    // guessing at the prefix writes an ordinary directory.
    let ok = apply_layer_tar(
        Cursor::new(tar_with(&[("a", b"new"), (".strata-apply-x/y", b"1")])),
        &layer,
        WhiteoutFormat::Delete,
    )
    .unwrap();
    assert_eq!(ok.entries, 2);
    assert_eq!(std::fs::read(tmp.path().join("layer/a")).unwrap(), b"new");
    // No scratch directory is left after a successful apply that replaced a file.
    let names: Vec<_> = std::fs::read_dir(tmp.path().join("layer"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".strata-apply-") && n != ".strata-apply-x")
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
