//! The apply journal on disk: encoding, replay after a "crash", corrupt and oversized files.

use std::io::Cursor;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::undo::{Meta, Note};
use super::*;
use crate::sys::fs::Dir;

/// A tar with directories (`name/`), files and whiteouts (`.wh.` names, opaque markers).
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(rustix::process::geteuid().as_raw() as u64);
        h.set_gid(rustix::process::getegid().as_raw() as u64);
        h.set_mtime(2_000_000);
        if let Some(dir) = path.strip_suffix('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o711);
            h.set_size(0);
            b.append_data(&mut h, dir, &b""[..]).unwrap();
        } else {
            h.set_mode(0o600);
            h.set_size(body.len() as u64);
            b.append_data(&mut h, path, *body).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// Everything beneath `root` (itself included): path → mode, owner, mtime, content.
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let body = if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            String::new()
        } else {
            String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
        };
        out.push((
            rel,
            format!(
                "{:o} {}:{} {}.{} {body}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            ),
        ));
    }
    out.sort();
    out
}

struct Layer {
    tmp: tempfile::TempDir,
}

impl Layer {
    /// A driver home with a layer `layer/` holding some content.
    fn new() -> Layer {
        let tmp = tempfile::tempdir().unwrap();
        let l = tmp.path().join("home/layer");
        std::fs::create_dir_all(l.join("etc/conf.d")).unwrap();
        std::fs::create_dir_all(l.join("var/lib")).unwrap();
        std::fs::write(l.join("etc/passwd"), b"root").unwrap();
        std::fs::write(l.join("etc/conf.d/a"), b"a").unwrap();
        std::fs::write(l.join("etc/conf.d/b"), b"b").unwrap();
        std::fs::write(l.join("var/lib/db"), b"db").unwrap();
        std::fs::write(l.join("top"), b"top").unwrap();
        Layer { tmp }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("home/layer")
    }

    fn home(&self) -> Dir {
        Dir::open_ambient(&self.tmp.path().join("home")).unwrap()
    }

    fn journal_path(&self) -> PathBuf {
        self.tmp.path().join("journal")
    }
}

/// A tar that replaces, deletes, empties (opaque), adds beside and into what the layer held,
/// and changes a directory's metadata.
fn changing_tar() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("etc/", b""),
        ("etc/passwd", b"replaced"),
        ("etc/.wh.gone", b""),
        ("etc/conf.d/.wh..wh..opq", b""),
        ("etc/conf.d/c", b"c"),
        ("var/lib/.wh.db", b""),
        ("new/dir/file", b"new"),
        ("top", b"top2"),
        ("added", b"added"),
    ]
}

/// A kill after any number of the tar's entries, before the store recorded the apply: the
/// journal on disk (the apply's scratch directory kept) rolls the layer back exactly.
#[test]
fn replaying_the_journal_of_a_cut_short_apply_gives_the_layer_back_exactly() {
    if !crate::test_env::root_or_skip(
        "replaying_the_journal_of_a_cut_short_apply_gives_the_layer_back_exactly",
        "apply makes implied parents and its scratch directory owned 0:0",
    ) {
        return;
    }
    let all = changing_tar();
    for cut in 0..=all.len() {
        let layer = Layer::new();
        let before = snapshot(&layer.root());
        let home = layer.home();
        let dest = home.open_dir("layer").unwrap();
        let mut journal = Journal::create(&layer.journal_path(), "L").unwrap();
        apply_layer_tar_journaled(
            Cursor::new(tar_of(&all[..cut])),
            &dest,
            "layer",
            WhiteoutFormat::Delete,
            Some(&mut journal),
        )
        .unwrap();
        drop(journal);
        if cut == all.len() {
            assert_ne!(snapshot(&layer.root()), before, "the apply changed nothing");
        }
        // The next open: the file is all there is.
        let mut journal = Journal::open(&layer.journal_path(), "L").unwrap();
        replay_journal(&home, &mut journal).unwrap();
        assert_eq!(snapshot(&layer.root()), before, "cut after {cut} entries");
        assert!(
            journal.is_empty(),
            "the replay cuts the journal back as it goes"
        );
        // Replaying again (a crash after the replay) changes nothing.
        replay_journal(&home, &mut journal).unwrap();
        assert_eq!(snapshot(&layer.root()), before);
    }
}

/// A failed journaled apply is undone in the process, and the file says nothing is left to
/// undo; a recorded one keeps its scratch directory until `finish_journal`.
#[test]
fn a_failed_journaled_apply_is_undone_and_a_finished_one_loses_its_scratch() {
    if !crate::test_env::root_or_skip(
        "a_failed_journaled_apply_is_undone_and_a_finished_one_loses_its_scratch",
        "apply makes implied parents and its scratch directory owned 0:0",
    ) {
        return;
    }
    let layer = Layer::new();
    let before = snapshot(&layer.root());
    let home = layer.home();
    let dest = home.open_dir("layer").unwrap();
    let mut raw = tar_of(&changing_tar());
    raw.truncate(raw.len() - 1536 - 100);
    let mut journal = Journal::create(&layer.journal_path(), "L").unwrap();
    let err = apply_layer_tar_journaled(
        Cursor::new(raw),
        &dest,
        "layer",
        WhiteoutFormat::Delete,
        Some(&mut journal),
    )
    .unwrap_err();
    assert!(matches!(err, ArchiveError::Undone(_)), "{err}");
    assert_eq!(snapshot(&layer.root()), before);
    assert!(journal.is_empty());

    apply_layer_tar_journaled(
        Cursor::new(tar_of(&changing_tar())),
        &dest,
        "layer",
        WhiteoutFormat::Delete,
        Some(&mut journal),
    )
    .unwrap();
    let scratch = |root: &Path| {
        std::fs::read_dir(root)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(".strata-apply-")
            })
            .count()
    };
    assert_eq!(scratch(&layer.root()), 1, "kept until the store records it");
    let after: Vec<_> = snapshot(&layer.root())
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".strata-apply-") && !p.is_empty())
        .collect();
    finish_journal(&home, &journal).unwrap();
    assert_eq!(scratch(&layer.root()), 0);
    let finished: Vec<_> = snapshot(&layer.root())
        .into_iter()
        .filter(|(p, _)| !p.is_empty())
        .collect();
    assert_eq!(finished, after);
}

/// An apply onto an empty layer journals one record, whatever the tar holds.
#[test]
fn a_fresh_apply_journals_only_that_it_was_fresh() {
    if !crate::test_env::root_or_skip(
        "a_fresh_apply_journals_only_that_it_was_fresh",
        "apply makes implied parents and its scratch directory owned 0:0",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("home/layer")).unwrap();
    let home = Dir::open_ambient(&tmp.path().join("home")).unwrap();
    let dest = home.open_dir("layer").unwrap();
    let mut journal = Journal::create(&tmp.path().join("j"), "L").unwrap();
    let names: Vec<String> = (0..500).map(|i| format!("d{}/f{i}", i % 7)).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    apply_layer_tar_journaled(
        Cursor::new(tar_of(&entries)),
        &dest,
        "layer",
        WhiteoutFormat::Delete,
        Some(&mut journal),
    )
    .unwrap();
    let records = journal.records().unwrap();
    assert_eq!(records.len(), 1);
    assert!(matches!(records[0].1, Note::Start { fresh: true, .. }));
    replay_journal(&home, &mut journal).unwrap();
    assert_eq!(
        std::fs::read_dir(tmp.path().join("home/layer"))
            .unwrap()
            .count(),
        0
    );
}

fn meta() -> Meta {
    Meta {
        uid: 1,
        gid: 2,
        mode: 0o40755,
        atime: (-5, 6),
        mtime: (1_700_000_000, 999_999_999),
        xattrs: vec![("user.k".into(), vec![0, 1, 2]), ("user.e".into(), vec![])],
    }
}

fn every_note() -> Vec<Note> {
    vec![
        Note::Start {
            dest: "dir/L/diff".into(),
            scratch: ".strata-apply-00ff".into(),
            fresh: false,
            root_meta: meta(),
        },
        Note::Meta {
            rel: "a".into(),
            meta: meta(),
        },
        Note::Created("a/b c".into()),
        Note::MovedAside {
            rel: "a/é".into(),
            slot: u64::MAX,
        },
    ]
}

#[test]
fn journal_records_round_trip_and_a_torn_last_record_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("j");
    let mut j = Journal::create(&path, "L").unwrap();
    for n in every_note() {
        j.append(&n).unwrap();
    }
    let len = j.len();
    drop(j);
    let j = Journal::open(&path, "L").unwrap();
    let notes: Vec<Note> = j.records().unwrap().into_iter().map(|(_, n)| n).collect();
    assert_eq!(notes, every_note());
    drop(j);
    // A kill in the middle of the last write: the record is dropped (its change never
    // started), the others stay.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 3).unwrap();
    let j = Journal::open(&path, "L").unwrap();
    assert_eq!(j.records().unwrap().len(), every_note().len() - 1);
    assert!(std::fs::metadata(&path).unwrap().len() < len - 3);
    // Another layer's journal is not this one's.
    assert!(matches!(
        Journal::open(&path, "M"),
        Err(JournalError::Corrupt { .. })
    ));
}

#[test]
fn a_corrupt_forged_or_oversized_journal_is_refused_not_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("j");
    let home = Dir::open_ambient(tmp.path()).unwrap();
    // A flipped byte in the middle fails its record's check.
    let mut j = Journal::create(&path, "L").unwrap();
    for n in every_note() {
        j.append(&n).unwrap();
    }
    drop(j);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let refused = Journal::open(&path, "L").and_then(|j| j.records());
    assert!(
        matches!(refused, Err(JournalError::Corrupt { .. })),
        "{:?}",
        refused.err()
    );
    // A path leaving the layer root, and a note before any start, are refused.
    for forged in [
        vec![every_note().remove(0), Note::Created("a/../../etc".into())],
        vec![Note::Created("a".into())],
        vec![Note::Start {
            dest: "d".into(),
            scratch: "not-a-scratch".into(),
            fresh: true,
            root_meta: meta(),
        }],
    ] {
        let mut j = Journal::create(&path, "L").unwrap();
        for n in &forged {
            j.append(n).unwrap();
        }
        let err = replay_journal(&home, &mut j).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
    // No header.
    std::fs::write(&path, b"something else").unwrap();
    assert!(Journal::open(&path, "L").is_err());
    // Larger than a journal may grow.
    let mut j = Journal::create(&path, "L").unwrap();
    j.append(&every_note()[0]).unwrap();
    drop(j);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(MAX_JOURNAL_BYTES + 1).unwrap();
    let err = Journal::open(&path, "L").err().unwrap();
    assert!(err.to_string().contains("more than"), "{err}");
}

/// A journal that would pass its budget fails the apply, which is undone.
#[test]
fn a_journal_past_its_budget_fails_the_apply_and_undoes_it() {
    let layer = Layer::new();
    let before = snapshot(&layer.root());
    let home = layer.home();
    let dest = home.open_dir("layer").unwrap();
    // Replacing entries the layer had (each costs a note) with long names.
    let component = "d".repeat(200);
    let deep: Vec<&str> = std::iter::repeat_n(component.as_str(), 19).collect();
    let deep = deep.join("/");
    std::fs::create_dir_all(layer.root().join(&deep)).unwrap();
    let before_deep = snapshot(&layer.root());
    assert_ne!(before, before_deep);
    let count = MAX_JOURNAL_BYTES as usize / deep.len() + 100;
    let names: Vec<String> = (0..count).map(|i| format!("{deep}/f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let mut journal = Journal::create(&layer.journal_path(), "L").unwrap();
    let err = apply_layer_tar_journaled(
        Cursor::new(tar_of(&entries)),
        &dest,
        "layer",
        WhiteoutFormat::Delete,
        Some(&mut journal),
    )
    .unwrap_err();
    assert!(matches!(err, ArchiveError::Undone(_)), "{err}");
    assert!(err.to_string().contains("than an apply can undo"), "{err}");
    assert_eq!(snapshot(&layer.root()), before_deep);
    assert!(journal.is_empty());
    assert!(std::fs::metadata(layer.journal_path()).unwrap().len() <= MAX_JOURNAL_BYTES);
}
