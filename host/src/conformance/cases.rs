//! The cases. Names are stable: people filter on them and CI logs quote them.
//!
//! Sources: containers/storage `drivers/graphtest` (create-*, deep-chain, diff-apply,
//! changes, echo, list-layers), its CLI tests (populate/*, mount/*), and containerd's
//! snapshotter testsuite (snapshot/*), adapted to layers: containerd's Prepare is a
//! read-write child, Commit is "stop writing", View is a read-only child.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::ops::{self, Op, chmod, chown, content, dir, file, file_at, remove_all};
use super::{Check, Ctx, driver_error, same_changes, same_tree};
use crate::contract::ChangeKind::{self, Add, Delete, Modify};
use crate::contract::DriverError;

pub(super) type CaseFn = Box<dyn Fn(&mut Ctx) -> Check + Send + Sync>;

pub(super) struct Case {
    pub name: String,
    pub run: CaseFn,
}

fn case(name: &str, run: impl Fn(&mut Ctx) -> Check + Send + Sync + 'static) -> Case {
    Case {
        name: name.into(),
        run: Box::new(run),
    }
}

pub(super) fn all(deep_chain: usize) -> Vec<Case> {
    let mut v = vec![
        case("create-empty", create_empty),
        case("create-base", |c| {
            create_base(c, "Base1")?;
            verify_base(c, "Base1", 0o555)
        }),
        case("create-snap", create_snap),
        case("create-from-template", create_from_template),
        case(&format!("deep-chain-{deep_chain}"), move |c| {
            deep_chain_read(c, deep_chain)
        }),
        case("diff-apply", |c| diff_apply(c, 100)),
        case("changes", changes_many),
        case(
            "diff/same-size-same-mtime-rewrites",
            same_size_same_mtime_rewrites,
        ),
    ];
    for depth in 0..10 {
        v.push(case(&format!("echo/depth-{depth}"), move |c| {
            echo(c, depth)
        }));
    }
    v.extend([
        case("list-layers", list_layers),
        case("populate/changes", |c| populate(c, false)),
        case("populate/diff-entries", populate_diff_entries),
        case("populate/apply-diff", |c| populate(c, true)),
        case("mount/refcount", mount_refcount),
        case(
            "mount/child-while-parent-mounted",
            child_while_parent_mounted,
        ),
        case("remove/children-first", remove_children_first),
        case("read-only/refuses-writes", read_only_refuses_writes),
        case("file-types/child", |c| file_types(c, FileTypesCheck::Child)),
        case("file-types/diff-round-trip", |c| {
            file_types(c, FileTypesCheck::RoundTrip)
        }),
        case("file-types/whiteouts-and-opaque", |c| {
            file_types(c, FileTypesCheck::Whiteouts)
        }),
        case("options/unknown-rejected", unknown_option_rejected),
        case("quota/size", quota),
        case("snapshot/basic", snapshot_basic),
        case("snapshot/layer-file-update", layer_file_update),
        case(
            "snapshot/remove-directory-in-lower-layer",
            remove_dir_in_lower,
        ),
        case("snapshot/chown", snapshot_chown),
        case(
            "snapshot/directory-permission-on-commit",
            directory_permission_on_commit,
        ),
        case("snapshot/deleted-files-in-child", deleted_files_in_child),
        case("snapshot/move-file-from-lower-layer", move_file_from_lower),
        case("snapshot/rename", snapshot_rename),
        case("snapshot/remove-intermediate", remove_intermediate),
        case("snapshot/128-layers-mount", layers_128_mount),
    ]);
    v
}

fn fail<T>(msg: impl Into<String>) -> Check<T> {
    Err(msg.into())
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, expected: T, actual: T) -> Check {
    if expected == actual {
        Ok(())
    } else {
        fail(format!("{what}: expected {expected:?}, actual {actual:?}"))
    }
}

/// Entries of the directory at `root`, sorted, without `lost+found`.
fn entries(root: &Path) -> Check<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(root).map_err(|e| format!("listing {}: {e}", root.display()))? {
        let name = e
            .map_err(|e| format!("listing {}: {e}", root.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name != "lost+found" {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// graphtest's `verifyFile`: type, permission bits incl. setuid/setgid/sticky, owner.
fn verify_file(root: &Path, rel: &str, dir: bool, mode: u32, uid: u32, gid: u32) -> Check {
    let p = root.join(rel.trim_start_matches('/'));
    let md = std::fs::metadata(&p).map_err(|e| format!("{rel}: {e}"))?;
    expect_eq(&format!("{rel}: is a directory"), dir, md.is_dir())?;
    expect_eq(
        &format!("{rel}: mode"),
        format!("{mode:04o}"),
        format!("{:04o}", md.mode() & 0o7777),
    )?;
    expect_eq(&format!("{rel}: owner"), (uid, gid), (md.uid(), md.gid()))
}

fn read(root: &Path, rel: &str) -> Check<Vec<u8>> {
    std::fs::read(root.join(rel.trim_start_matches('/'))).map_err(|e| format!("reading {rel}: {e}"))
}

fn expect_content(root: &Path, rel: &str, expected: &[u8]) -> Check {
    let got = read(root, rel)?;
    if got == expected {
        Ok(())
    } else {
        fail(format!(
            "{rel}: content expected {:?}, actual {:?}",
            String::from_utf8_lossy(expected),
            String::from_utf8_lossy(&got)
        ))
    }
}

fn expect_absent(root: &Path, rel: &str) -> Check {
    match std::fs::symlink_metadata(root.join(rel.trim_start_matches('/'))) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => fail(format!("{rel}: expected absent, lstat failed: {e}")),
        Ok(md) => fail(format!(
            "{rel}: expected absent (deleted), found a {}",
            if md.is_dir() { "directory" } else { "file" }
        )),
    }
}

// ---- graphtest -------------------------------------------------------------------------

fn create_empty(c: &mut Ctx) -> Check {
    c.create_ro("empty", None)?;
    if !c.exists("empty")? {
        return fail("the driver says layer empty does not exist right after creating it");
    }
    let m = c.mount("empty")?;
    verify_file(&m, "/", true, 0o555, 0, 0)?;
    let names = entries(&m)?;
    if !names.is_empty() {
        return fail(format!(
            "an empty layer's root lists {names:?}; driver-internal entries must not be visible"
        ));
    }
    c.unmount("empty")?;
    Ok(())
}

fn base_ops() -> Vec<Op> {
    vec![
        dir("/a subdir", 0o1705),
        chown("/a subdir", 1, 2),
        chmod("/a subdir", 0o1705),
        file("/a file", "Some data", 0o4222),
    ]
}

/// graphtest's `createBase`: a read-write base with a sticky 01705 dir owned 1:2 and a
/// setuid 04222 file.
fn create_base(c: &mut Ctx, id: &str) -> Check {
    c.create(id, None)?;
    c.write(id, &base_ops())
}

fn verify_base_at(m: &Path, root_mode: u32) -> Check {
    verify_file(m, "/", true, root_mode, 0, 0)?;
    verify_file(m, "/a subdir", true, 0o1705, 1, 2)?;
    verify_file(m, "/a file", false, 0o4222, 0, 0)?;
    expect_content(m, "/a file", b"Some data")?;
    expect_eq(
        "root entries",
        vec!["a file".to_string(), "a subdir".to_string()],
        entries(m)?,
    )
}

fn verify_base(c: &mut Ctx, id: &str, root_mode: u32) -> Check {
    let m = c.mount(id)?;
    verify_base_at(&m, root_mode).map_err(|e| format!("layer {id}: {e}"))?;
    c.unmount(id)?;
    Ok(())
}

fn create_snap(c: &mut Ctx) -> Check {
    create_base(c, "Base2")?;
    c.create("Snap2", Some("Base2"))?;
    verify_base(c, "Snap2", 0o555)?;
    c.write("Snap2", &[chmod("/", 0o711)])?;
    c.create_ro("SecondSnap", Some("Snap2"))?;
    verify_base(c, "SecondSnap", 0o711)
        .map_err(|e| format!("a child's root keeps its parent's (changed) mode: {e}"))
}

fn create_from_template(c: &mut Ctx) -> Check {
    create_base(c, "Base3")?;
    c.create("Snap3", Some("Base3"))?;
    c.write("Snap3", &[file("/testfile.txt", "test content", 0o755)])?;
    c.create_from_template("FromTemplate", "Snap3", true)?;
    c.create_from_template("ROFromTemplate", "Snap3", false)?;
    for id in ["FromTemplate", "ROFromTemplate"] {
        expect_eq(
            &format!("{id}: parent"),
            Some("Base3".to_string()),
            c.parent_of(id)?,
        )?;
        same_changes(
            &format!("{id} against its template Snap3"),
            &[],
            &c.changes(id, Some("Snap3"))?,
        )?;
        same_changes(
            &format!("{id} against its parent Base3"),
            &[(Add, "/testfile.txt")],
            &c.changes(id, None)?,
        )?;
    }
    same_changes(
        "Snap3 against Base3",
        &[(Add, "/testfile.txt")],
        &c.changes("Snap3", None)?,
    )?;
    for id in ["FromTemplate", "ROFromTemplate", "Snap3"] {
        let m = c.mount(id)?;
        expect_content(&m, "/testfile.txt", b"test content").map_err(|e| format!("{id}: {e}"))?;
        c.unmount(id)?;
    }
    if c.try_remove("Snap3").is_ok() {
        return fail("template Snap3 was removed while layers created from it exist");
    }
    verify_base(c, "Base3", 0o555)
}

fn deep_chain_read(c: &mut Ctx, count: usize) -> Check {
    c.create("base", None)?;
    c.write("base", &[file("/testfile.txt", "test content", 0o755)])?;
    // `count` layers in all, the base included: a stack of 500 is overlayfs's limit.
    let mut last = "base".to_string();
    for i in 1..count {
        let id = format!("layer-{i:03}");
        c.create(&id, Some(&last))?;
        c.write(
            &id,
            &[
                file("/top-id", id.as_str(), 0o755),
                dir(&format!("/layer-{i}"), 0o755),
                file(&format!("/layer-{i}/layer-id"), id.as_str(), 0o755),
                file(&format!("/layer-{i}/parent-id"), last.as_str(), 0o755),
            ],
        )?;
        last = id;
    }
    let m = c.mount(&last)?;
    expect_content(&m, "/top-id", last.as_bytes())?;
    let mut expected = last.clone();
    for i in (1..count).rev() {
        expect_content(&m, &format!("/layer-{i}/layer-id"), expected.as_bytes())
            .map_err(|e| format!("walking down from the top of {count} layers: {e}"))?;
        expected = String::from_utf8_lossy(&read(&m, &format!("/layer-{i}/parent-id"))?).into();
    }
    expect_eq("the bottom of the chain", "base".to_string(), expected)?;
    expect_content(&m, "/testfile.txt", b"test content")
        .map_err(|e| format!("the base layer's file, read through {count} layers: {e}"))?;
    c.unmount(&last)?;
    Ok(())
}

/// graphtest's `addManyFiles`: `directory-<i>/file-<i+j>`, 64 bytes from `seed+i+j`.
fn many_files(count: usize, seed: u64, create_dirs: bool) -> Vec<Op> {
    let mut v = Vec::new();
    for i in (0..count).step_by(100) {
        if create_dirs {
            v.push(dir(&format!("/directory-{i}"), 0o755));
        }
        for j in 0..100.min(count - i) {
            v.push(file(
                &format!("/directory-{i}/file-{}", i + j),
                content(64, seed + (i + j) as u64),
                0o755,
            ));
        }
    }
    v
}

fn check_many_files(m: &Path, count: usize, seed: u64) -> Check {
    for i in (0..count).step_by(100) {
        for j in 0..100.min(count - i) {
            let rel = format!("/directory-{i}/file-{}", i + j);
            if read(m, &rel)? != content(64, seed + (i + j) as u64) {
                return fail(format!("{rel}: content is not the seed-{seed} content"));
            }
        }
    }
    Ok(())
}

fn diff_apply(c: &mut Ctx, count: usize) -> Check {
    c.create("base", None)?;
    let mut base = many_files(count, 3, true);
    base.extend([
        file(
            "/file-remove.txt",
            "This file should get removed in upper!",
            0o644,
        ),
        dir("/var", 0o755),
        dir("/var/lib", 0o755),
    ]);
    c.write("base", &base)?;
    c.create("upper", Some("base"))?;
    let mut upper = many_files(count, 6, false);
    upper.extend([remove_all("/file-remove.txt"), remove_all("/var/lib")]);
    c.write("upper", &upper)?;
    let diff_size = c.diff_size("upper", None)?;
    let tar = c.diff("upper", None)?;

    c.create_ro("diff", Some("base"))?;
    let m = c.mount("diff")?;
    check_many_files(&m, count, 3).map_err(|e| format!("before applying: {e}"))?;
    expect_content(
        &m,
        "/file-remove.txt",
        b"This file should get removed in upper!",
    )?;
    c.unmount("diff")?;

    let applied = c.apply("diff", tar)?;
    expect_eq(
        "size returned by apply-diff vs diff-size of the source layer",
        diff_size,
        applied.size,
    )?;
    let m = c.mount("diff")?;
    check_many_files(&m, count, 6).map_err(|e| format!("after applying: {e}"))?;
    expect_absent(&m, "/file-remove.txt").map_err(|e| format!("whiteout not applied: {e}"))?;
    expect_absent(&m, "/var/lib").map_err(|e| format!("whiteout not applied: {e}"))?;
    if !m.join("var").is_dir() {
        return fail("/var: the parent of a deleted directory must stay");
    }
    c.unmount("diff")?;
    let upper_m = c.mount("upper")?;
    let diff_m = c.mount("diff")?;
    let r = same_tree(&upper_m, &diff_m).map_err(|e| format!("the applied diff: {e}"));
    c.unmount("diff")?;
    c.unmount("upper")?;
    r
}

fn changes_many(c: &mut Ctx) -> Check {
    const COUNT: usize = 20;
    const SEED: u64 = 6;
    c.create("base", None)?;
    c.write("base", &many_files(COUNT, 3, true))?;
    c.create("upper", Some("base"))?;
    // graphtest's `changeManyFiles`.
    let mut ops = Vec::new();
    let mut expected: Vec<(ChangeKind, String)> = Vec::new();
    for i in (0..COUNT).step_by(100) {
        expected.push((Modify, format!("/directory-{i}")));
        for j in 0..100.min(COUNT - i) {
            let n = i + j;
            match j % 3 {
                0 => {
                    let p = format!("/directory-{i}/file-{n}");
                    ops.push(file(&p, content(64, SEED + n as u64), 0o755));
                    expected.push((Modify, p));
                }
                1 => {
                    let p = format!("/directory-{i}/file-{SEED}-{n}");
                    ops.push(file(&p, content(64, SEED + n as u64), 0o755));
                    expected.push((Add, p));
                }
                _ => {
                    let p = format!("/directory-{i}/file-{n}");
                    ops.push(remove_all(&p));
                    expected.push((Delete, p));
                }
            }
        }
    }
    c.write("upper", &ops)?;
    let expected: Vec<(ChangeKind, &str)> =
        expected.iter().map(|(k, p)| (*k, p.as_str())).collect();
    same_changes("upper against base", &expected, &c.changes("upper", None)?)
}

/// Files rewritten in the child with other bytes of the same size, and the same mtime as
/// in the parent (pinned, so the case does not depend on the clock's resolution: on a
/// filesystem with whole-second mtimes two writes in one second look like this), must all
/// be in the changes and in the diff: metadata alone cannot tell them apart.
fn same_size_same_mtime_rewrites(c: &mut Ctx) -> Check {
    const COUNT: usize = 100;
    const LEN: usize = 300;
    let mtime = ops::next_mtime();
    let path = |n: usize| format!("/rewrites/file-{n}");
    c.create("base", None)?;
    let mut base = vec![dir("/rewrites", 0o755)];
    base.extend((0..COUNT).map(|n| file_at(&path(n), content(LEN, n as u64), 0o644, mtime)));
    c.write("base", &base)?;
    c.create("child", Some("base"))?;
    let rewritten = |n: usize| content(LEN, 1_000 + n as u64);
    let child: Vec<Op> = (0..COUNT)
        .map(|n| file_at(&path(n), rewritten(n), 0o644, mtime))
        .collect();
    c.write("child", &child)?;

    let mut expected = vec![(Modify, "/rewrites".to_string())];
    expected.extend((0..COUNT).map(|n| (Modify, path(n))));
    let expected: Vec<(ChangeKind, &str)> =
        expected.iter().map(|(k, p)| (*k, p.as_str())).collect();
    same_changes("child against base", &expected, &c.changes("child", None)?)?;

    let tar = c.diff("child", None)?;
    let mut found = [false; COUNT];
    let mut a = tar::Archive::new(tar.as_slice());
    for e in a.entries().map_err(|e| format!("reading the diff: {e}"))? {
        let mut e = e.map_err(|e| format!("reading the diff: {e}"))?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let Some(n) = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .strip_prefix("rewrites/file-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < COUNT)
        else {
            continue;
        };
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data)
            .map_err(|e| format!("reading {name} in the diff: {e}"))?;
        if data != rewritten(n) {
            return fail(format!("{name} in the diff: not the rewritten content"));
        }
        found[n] = true;
    }
    let missing: Vec<String> = (0..COUNT).filter(|n| !found[*n]).map(path).collect();
    if !missing.is_empty() {
        return fail(format!(
            "diff of child: {} of {COUNT} rewritten files missing: {missing:?}",
            missing.len()
        ));
    }
    Ok(())
}

fn echo(c: &mut Ctx, depth: usize) -> Check {
    let mut paths: Vec<String> = Vec::new();
    let mut p = String::new();
    for i in 1..=9 {
        p.push_str(&format!("/subdir{i}"));
        paths.push(p.clone());
    }
    paths.push(format!("{p}/file"));
    let data = content(128, depth as u64);

    create_base(c, "base")?;
    verify_base(c, "base", 0o555)?;
    // The base stays mounted while its children are created and compared.
    let base_m = c.mount("base")?;
    let mut ops: Vec<Op> = paths[..9].iter().map(|p| dir(p, 0o700)).collect();
    ops.push(file(&paths[9], data.clone(), 0o600));
    ops::apply(&base_m, &ops)?;
    let mut expected: Vec<(ChangeKind, &str)> = vec![(Add, "/a file"), (Add, "/a subdir")];
    expected.extend(paths.iter().map(|p| (Add, p.as_str())));
    same_changes("base", &expected, &c.changes("base", None)?)?;

    c.create("second", Some("base"))?;
    let second_m = c.mount("second")?;
    ops::apply(&second_m, &[remove_all(&paths[depth])])?;
    let mut expected: Vec<(ChangeKind, &str)> = paths[..depth]
        .iter()
        .map(|p| (Modify, p.as_str()))
        .collect();
    expected.push((Delete, &paths[depth]));
    same_changes(
        "second against base",
        &expected,
        &c.changes("second", None)?,
    )?;

    c.create("third", Some("second"))?;
    let third_m = c.mount("third")?;
    let mut ops: Vec<Op> = paths[depth..9].iter().map(|p| dir(p, 0o700)).collect();
    ops.push(file(&paths[9], data, 0o600));
    ops::apply(&third_m, &ops)?;
    let mut expected: Vec<(ChangeKind, &str)> = paths[..depth]
        .iter()
        .map(|p| (Modify, p.as_str()))
        .collect();
    expected.extend(paths[depth..].iter().map(|p| (Add, p.as_str())));
    same_changes(
        "third against second",
        &expected,
        &c.changes("third", None)?,
    )?;

    c.unmount("third")?;
    c.unmount("second")?;
    c.unmount("base")?;
    Ok(())
}

fn list_layers(c: &mut Ctx) -> Check {
    create_base(c, "base")?;
    c.write("base", &many_files(20, 3, true))?;
    c.create("mid", Some("base"))?;
    c.write("mid", &many_files(20, 4, false))?;
    c.create("upper", Some("mid"))?;
    expect_eq(
        "layer ls",
        vec!["base".to_string(), "mid".into(), "upper".into()],
        c.list()?,
    )?;
    c.remove("upper")?;
    expect_eq(
        "layer ls after removing upper",
        vec!["base".to_string(), "mid".into()],
        c.list()?,
    )
}

// ---- containers/storage CLI tests -------------------------------------------------------

fn random_file(path: &str, seed: u64) -> Op {
    file(path, content(256, seed), 0o644)
}

fn populate_ops() -> [Vec<Op>; 3] {
    let mut lower = vec![
        random_file("/layer1file1", 1),
        random_file("/layer1file2", 2),
        random_file("/layer1file3", 3),
    ];
    for i in 1..=9 {
        lower.push(dir(&format!("/layerdir{i}"), 0o755));
    }
    for i in 4..=6 {
        lower.push(dir(&format!("/layerdir{i}/layer1subdir"), 0o755));
    }
    for (d, f) in [(7, 4), (8, 5), (9, 6)] {
        lower.push(random_file(&format!("/layerdir{d}/layer1file{f}"), f));
    }
    let mut mid: Vec<Op> = [
        "/layer1file1",
        "/layer1file2",
        "/layerdir1",
        "/layerdir2",
        "/layerdir4",
        "/layerdir5",
        "/layerdir7",
        "/layerdir8",
    ]
    .iter()
    .map(|p| remove_all(p))
    .collect();
    mid.extend([
        random_file("/layer2file1", 10),
        dir("/layerdir10", 0o755),
        dir("/layerdir11", 0o755),
        dir("/layerdir11/layer2subdir", 0o755),
        dir("/layerdir12", 0o755),
        random_file("/layerdir12/layer2file2", 11),
    ]);
    let upper = vec![
        random_file("/layerfile1", 20),
        dir("/layerdir1", 0o755),
        dir("/layerdir4", 0o755),
        dir("/layerdir4/layer1subdir", 0o755),
        dir("/layerdir7", 0o755),
        random_file("/layerdir7/layer1file4", 21),
        dir("/layerdir3/layer3subdir", 0o755),
        dir("/layerdir3/layer3subdir/layer3subsubdir", 0o755),
    ];
    [lower, mid, upper]
}

const POPULATE_LOWER: &[&str] = &[
    "/layer1file1",
    "/layer1file2",
    "/layer1file3",
    "/layerdir1",
    "/layerdir2",
    "/layerdir3",
    "/layerdir4",
    "/layerdir4/layer1subdir",
    "/layerdir5",
    "/layerdir5/layer1subdir",
    "/layerdir6",
    "/layerdir6/layer1subdir",
    "/layerdir7",
    "/layerdir7/layer1file4",
    "/layerdir8",
    "/layerdir8/layer1file5",
    "/layerdir9",
    "/layerdir9/layer1file6",
];

fn populate_expected() -> [Vec<(ChangeKind, &'static str)>; 3] {
    let lower = POPULATE_LOWER.iter().map(|p| (Add, *p)).collect();
    let mid = vec![
        (Delete, "/layer1file1"),
        (Delete, "/layer1file2"),
        (Delete, "/layerdir1"),
        (Delete, "/layerdir2"),
        (Delete, "/layerdir4"),
        (Delete, "/layerdir5"),
        (Delete, "/layerdir7"),
        (Delete, "/layerdir8"),
        (Add, "/layer2file1"),
        (Add, "/layerdir10"),
        (Add, "/layerdir11"),
        (Add, "/layerdir11/layer2subdir"),
        (Add, "/layerdir12"),
        (Add, "/layerdir12/layer2file2"),
    ];
    let upper = vec![
        (Add, "/layerdir1"),
        (Modify, "/layerdir3"),
        (Add, "/layerdir3/layer3subdir"),
        (Add, "/layerdir3/layer3subdir/layer3subsubdir"),
        (Add, "/layerdir4"),
        (Add, "/layerdir4/layer1subdir"),
        (Add, "/layerdir7"),
        (Add, "/layerdir7/layer1file4"),
        (Add, "/layerfile1"),
    ];
    [lower, mid, upper]
}

const POPULATE_IDS: [&str; 3] = ["lower", "mid", "upper"];

/// Builds containers/storage's three populate layers (all read-write, written through a
/// mount) and checks their changes.
fn populate_layers(c: &mut Ctx) -> Check {
    let mut parent: Option<&str> = None;
    for (id, ops) in POPULATE_IDS.iter().zip(populate_ops()) {
        c.create(id, parent)?;
        c.write(id, &ops)?;
        parent = Some(id);
    }
    for (id, expected) in POPULATE_IDS.iter().zip(populate_expected()) {
        same_changes(id, &expected, &c.changes(id, None)?)?;
    }
    Ok(())
}

/// populate, then (with `reapply`) export the three diffs, rebuild the chain from them and
/// check the rebuilt layers have the same changes and the same tree.
fn populate(c: &mut Ctx, reapply: bool) -> Check {
    populate_layers(c)?;
    if !reapply {
        return Ok(());
    }
    let mut parent: Option<String> = None;
    for (id, expected) in POPULATE_IDS.iter().zip(populate_expected()) {
        let tar = c.diff(id, None)?;
        let copy = format!("{id}-copy");
        c.create_ro(&copy, parent.as_deref())?;
        c.apply(&copy, tar)?;
        same_changes(
            &format!("{copy} (rebuilt from {id}'s diff)"),
            &expected,
            &c.changes(&copy, None)?,
        )?;
        parent = Some(copy);
    }
    let a = c.mount("upper")?;
    let b = c.mount("upper-copy")?;
    let r = same_tree(&a, &b).map_err(|e| format!("upper-copy against upper: {e}"));
    c.unmount("upper-copy")?;
    c.unmount("upper")?;
    r
}

/// The entry names of a tar, as `tar tf` prints them: no leading `./`, directories with a
/// trailing `/`.
fn tar_entries(tar: &[u8]) -> Check<Vec<String>> {
    let mut a = tar::Archive::new(tar);
    let mut names = Vec::new();
    for e in a.entries().map_err(|e| format!("reading the diff: {e}"))? {
        let e = e.map_err(|e| format!("reading the diff: {e}"))?;
        let raw = e.path_bytes().into_owned();
        let mut name = String::from_utf8_lossy(&raw).into_owned();
        while let Some(rest) = name.strip_prefix("./") {
            name = rest.to_string();
        }
        let name = name
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        if name.is_empty() || name == "." {
            names.push("./".to_string());
            continue;
        }
        if e.header().entry_type().is_dir() {
            names.push(format!("{name}/"));
        } else {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn populate_diff_entries(c: &mut Ctx) -> Check {
    populate_layers(c)?;
    let lower: Vec<String> = POPULATE_LOWER
        .iter()
        .map(|p| {
            let p = p.trim_start_matches('/');
            if p.contains("file") && !p.ends_with("subdir") {
                p.to_string()
            } else {
                format!("{p}/")
            }
        })
        .collect();
    let mid: Vec<String> = [
        ".wh.layer1file1",
        ".wh.layer1file2",
        ".wh.layerdir1",
        ".wh.layerdir2",
        ".wh.layerdir4",
        ".wh.layerdir5",
        ".wh.layerdir7",
        ".wh.layerdir8",
        "layer2file1",
        "layerdir10/",
        "layerdir11/",
        "layerdir11/layer2subdir/",
        "layerdir12/",
        "layerdir12/layer2file2",
    ]
    .map(String::from)
    .to_vec();
    let upper: Vec<String> = [
        "layerdir1/",
        "layerdir3/",
        "layerdir3/layer3subdir/",
        "layerdir3/layer3subdir/layer3subsubdir/",
        "layerdir4/",
        "layerdir4/layer1subdir/",
        "layerdir7/",
        "layerdir7/layer1file4",
        "layerfile1",
    ]
    .map(String::from)
    .to_vec();
    for (id, mut expected) in POPULATE_IDS.iter().zip([lower, mid, upper]) {
        expected.sort();
        let got = tar_entries(&c.diff(id, None)?)?;
        if got != expected {
            let missing: Vec<&String> = expected.iter().filter(|e| !got.contains(e)).collect();
            let extra: Vec<&String> = got.iter().filter(|g| !expected.contains(g)).collect();
            return fail(format!(
                "diff of {id}: tar entries differ; missing: {missing:?}; unexpected: {extra:?}"
            ));
        }
    }
    Ok(())
}

fn is_mounted(p: &Path) -> bool {
    crate::sys::mount::is_mount_point(p)
}

fn mount_refcount(c: &mut Ctx) -> Check {
    create_base(c, "base")?;
    let m1 = c.mount("base")?;
    let m2 = c.mount("base")?;
    expect_eq("the second mount's path", &m1, &m2)?;
    expect_eq("users left after one unmount", 1, c.unmount("base")?)?;
    if !is_mounted(&m1) {
        return fail("unmounting once of two users unmounted the layer");
    }
    verify_base_at(&m1, 0o555).map_err(|e| format!("still mounted after one unmount: {e}"))?;
    if c.try_remove("base").is_ok() {
        return fail("a mounted layer was removed");
    }
    expect_eq("users left after the last unmount", 0, c.unmount("base")?)?;
    if is_mounted(&m1) {
        return fail(format!(
            "{} is still a mount point after the last unmount",
            m1.display()
        ));
    }
    if c.unmount("base").is_ok() {
        return fail("unmounting a layer that is not mounted succeeded");
    }
    let m = c.mount("base")?;
    c.mount("base")?;
    c.mount("base")?;
    expect_eq(
        "users left after a forced unmount",
        0,
        c.force_unmount("base")?,
    )?;
    if is_mounted(&m) {
        return fail("a forced unmount left the layer mounted");
    }
    // Mounts nest: a layer and its child mounted at once, each its own tree.
    c.create("child", Some("base"))?;
    let pm = c.mount("base")?;
    let cm = c.mount("child")?;
    if pm == cm {
        return fail("a layer and its child were given the same mount point");
    }
    verify_base_at(&cm, 0o555)?;
    c.unmount("child")?;
    c.unmount("base")?;
    Ok(())
}

fn child_while_parent_mounted(c: &mut Ctx) -> Check {
    create_base(c, "base")?;
    let pm = c.mount("base")?;
    c.create("child", Some("base"))?;
    let cm = c.mount("child")?;
    verify_base_at(&cm, 0o555).map_err(|e| format!("child: {e}"))?;
    ops::apply(&cm, &[file("/child-only", "x", 0o644)])?;
    expect_absent(&pm, "/child-only")
        .map_err(|e| format!("the parent sees its child's write: {e}"))?;
    ops::apply(&pm, &[file("/parent-late", "y", 0o644)])?;
    c.unmount("child")?;
    c.unmount("base")?;
    Ok(())
}

fn remove_children_first(c: &mut Ctx) -> Check {
    create_base(c, "base")?;
    c.create("mid", Some("base"))?;
    c.create_ro("top", Some("mid"))?;
    for id in ["base", "mid"] {
        match c.try_remove(id) {
            Ok(()) => return fail(format!("layer {id} was removed while it has a child")),
            Err(e) if e.to_string().contains("children") => {}
            Err(e) => {
                return fail(format!(
                    "removing {id} (with children) failed, but not saying so: {e}"
                ));
            }
        }
    }
    for id in ["top", "mid", "base"] {
        c.remove(id)?;
        if c.exists(id)? {
            return fail(format!("the driver still has layer {id} after removing it"));
        }
    }
    expect_eq(
        "layer ls after removing all",
        Vec::<String>::new(),
        c.list()?,
    )
}

fn expect_erofs(what: &str, r: std::io::Result<()>) -> Check {
    match r {
        Ok(()) => fail(format!("{what} succeeded in a read-only layer")),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) => Ok(()),
        Err(e) => fail(format!(
            "{what} in a read-only layer failed, but with {e} instead of EROFS"
        )),
    }
}

fn read_only_refuses_writes(c: &mut Ctx) -> Check {
    create_base(c, "base")?;
    c.create_ro("view", Some("base"))?;
    c.create_ro("image", None)?;
    for id in ["view", "image"] {
        let m = c.mount(id)?;
        expect_erofs(
            &format!("{id}: creating a file"),
            std::fs::write(m.join("new-file"), b"x"),
        )?;
        expect_erofs(
            &format!("{id}: mkdir"),
            std::fs::create_dir(m.join("new-dir")),
        )?;
        expect_erofs(
            &format!("{id}: chmod of the root"),
            std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o777)),
        )?;
        c.unmount(id)?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileTypesCheck {
    Child,
    RoundTrip,
    Whiteouts,
}

/// Every file type and metadata a layer must keep.
fn file_type_ops() -> Vec<Op> {
    vec![
        dir("/d", 0o755),
        file("/d/reg", "regular file\n", 0o644),
        ops::xattr("/d/reg", "user.strata-test", b"hello"),
        ops::xattr("/d", "user.dir-attr", b"\x00binary\xff"),
        ops::hardlink("/d/reg-link", "/d/reg"),
        ops::hardlink("/second-link", "/d/reg"),
        file("/owned", "owned by 1000\n", 0o640),
        chown("/owned", 1000, 1001),
        file("/setuid", "#!/bin/sh\n", 0o755),
        chmod("/setuid", 0o4755),
        file("/setgid", "#!/bin/sh\n", 0o755),
        chown("/setgid", 0, 50),
        chmod("/setgid", 0o2755),
        dir("/sticky", 0o755),
        chmod("/sticky", 0o1777),
        dir("/setgid-dir", 0o755),
        chown("/setgid-dir", 7, 8),
        chmod("/setgid-dir", 0o2775),
        ops::symlink("/link", "d/reg"),
        ops::symlink("/dangling", "/nowhere/at/all"),
        ops::symlink("/owned-link", "owned"),
        chown("/owned-link", 5, 6),
        ops::fifo("/fifo", 0o640),
        ops::device("/chardev", false, 1, 3, 0o666),
        ops::device("/blockdev", true, 7, 200, 0o660),
        file("/empty", "", 0o600),
        file("/big", content(3 << 20, 99), 0o644),
    ]
}

fn file_types(c: &mut Ctx, check: FileTypesCheck) -> Check {
    let flat = c.flat()?;
    let ops = file_type_ops();
    ops::apply(&flat, &ops)?;
    c.create("base", None)?;
    c.write("base", &ops)?;
    c.expect_tree("base", &flat)?;
    match check {
        FileTypesCheck::Child => {
            c.expect_view("base", &flat)?;
            c.create("child", Some("base"))?;
            c.expect_tree("child", &flat)
        }
        FileTypesCheck::RoundTrip => {
            let tar = c.diff("base", None)?;
            c.create_ro("replica", None)?;
            c.apply("replica", tar)?;
            c.expect_tree("replica", &flat)
                .map_err(|e| format!("base's diff applied onto an empty layer: {e}"))
        }
        FileTypesCheck::Whiteouts => {
            let upper_ops = vec![
                remove_all("/fifo"),
                remove_all("/d"),
                dir("/d", 0o700),
                file("/d/new", "new in an opaque dir\n", 0o644),
                remove_all("/sticky"),
                file("/setuid", "#!/bin/sh\nexit 0\n", 0o755),
                chmod("/setuid", 0o4755),
                ops::xattr("/owned", "user.added", b"later"),
            ];
            ops::apply(&flat, &upper_ops)?;
            c.create("upper", Some("base"))?;
            c.write("upper", &upper_ops)?;
            c.expect_tree("upper", &flat)?;
            let tar = c.diff("upper", None)?;
            c.create_ro("replica", Some("base"))?;
            c.apply("replica", tar)?;
            c.expect_tree("replica", &flat).map_err(|e| {
                format!("upper's diff (whiteouts, an opaque dir) applied onto a fresh child of base: {e}")
            })
        }
    }
}

fn unknown_option_rejected(c: &mut Ctx) -> Check {
    match c.try_create_with("layer", &[("no-such-option", "1")]) {
        Ok(()) => fail(
            "creating a layer with option no-such-option=1 succeeded; unknown options must be rejected, not ignored",
        ),
        Err(e) => match driver_error(&e) {
            Some(DriverError::InvalidArgument(_) | DriverError::Unsupported(_)) => Ok(()),
            _ => fail(format!(
                "an unknown option must be invalid-argument or unsupported; got: {e}"
            )),
        },
    }
}

/// `size=50M`: either the driver enforces it (a write past it fails with EDQUOT) or it says
/// `unsupported`. Silently ignoring it fails.
fn quota(c: &mut Ctx) -> Check {
    const LIMIT: u64 = 50 << 20;
    if let Err(e) = c.try_create_with("limited", &[("size", "50M")]) {
        if let Some(DriverError::Unsupported(m)) = driver_error(&e) {
            c.note(format!("size= reported unsupported: {m}"));
            return Ok(());
        }
        return fail(format!(
            "creating a layer with size=50M failed, but not as `unsupported`: {e}"
        ));
    }
    let m = c.mount("limited")?;
    let path = m.join("filler");
    let chunk = content(1 << 20, 5);
    let result = (|| -> std::io::Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(&path)?;
        let mut written = 0u64;
        while written < 2 * LIMIT {
            f.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        f.sync_all()?;
        Ok(written)
    })();
    let _ = std::fs::remove_file(&path);
    c.unmount("limited")?;
    match result {
        Ok(n) => fail(format!(
            "wrote {} MiB into a layer created with size=50M",
            n >> 20
        )),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error()) => Ok(()),
        Err(e) => fail(format!(
            "writing past size=50M failed with {e}, expected EDQUOT (disk quota exceeded)"
        )),
    }
}

// ---- containerd snapshotter testsuite ----------------------------------------------------

/// containerd's `checkSnapshots`: each applier becomes a read-write layer on the previous
/// one; after each, a read-only view must equal a plain directory that got the same writes.
fn chain(c: &mut Ctx, name: &str, appliers: &[Vec<Op>]) -> Check {
    let flat = c.flat()?;
    let mut parent: Option<String> = None;
    for (i, ops) in appliers.iter().enumerate() {
        let id = format!("{name}-{i}");
        c.create(&id, parent.as_deref())?;
        c.write(&id, ops)?;
        ops::apply(&flat, ops)?;
        c.expect_view(&id, &flat)
            .map_err(|e| format!("after layer {i}: {e}"))?;
        parent = Some(id);
    }
    Ok(())
}

fn snapshot_basic(c: &mut Ctx) -> Check {
    let first = vec![
        file("/foo", "foo\n", 0o777),
        dir("/a", 0o755),
        dir("/a/b", 0o755),
        dir("/a/b/c", 0o755),
    ];
    let second = vec![
        file("/bar", "bar\n", 0o644),
        file("/foo", "bar\n", 0o777),
        remove_all("/a/b"),
    ];
    chain(c, "basic", &[first, second])?;
    expect_eq(
        "parent of basic-1",
        Some("basic-0".to_string()),
        c.parent_of("basic-1")?,
    )?;
    if c.try_remove("basic-0").is_ok() {
        return fail("removing basic-0 with a child succeeded");
    }
    c.remove("basic-1")?;
    c.remove("basic-0")
}

fn layer_file_update(c: &mut Ctx) -> Check {
    // The second /etc/hosts has the same size and the same mtime as the first: only its
    // content says it changed (moby#21555).
    let hosts_mtime = ops::next_mtime();
    let first = vec![
        dir("/etc", 0o700),
        file_at("/etc/hosts", "mydomain 10.0.0.1", 0o644, hosts_mtime),
        file("/etc/profile", "PATH=/usr/bin", 0o644),
    ];
    let second = vec![
        file_at("/etc/hosts", "mydomain 10.0.0.2", 0o644, hosts_mtime),
        chmod("/etc/profile", 0o666),
        dir("/root", 0o700),
        file("/root/.bashrc", "PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    chain(c, "update", &[first, second])
}

fn remove_dir_in_lower(c: &mut Ctx) -> Check {
    chain(
        c,
        "lowerdir",
        &[
            vec![dir("/lib", 0o700), file("/lib/hidden", "hidden", 0o644)],
            vec![
                remove_all("/lib"),
                dir("/lib", 0o700),
                file("/lib/not-hidden", "not hidden", 0o644),
            ],
            vec![file("/lib/newfile", "new", 0o644)],
        ],
    )
}

fn snapshot_chown(c: &mut Ctx) -> Check {
    chain(
        c,
        "chown",
        &[
            vec![
                dir("/opt", 0o700),
                dir("/opt/a", 0o700),
                dir("/opt/a/b", 0o700),
                file("/opt/a/b/file.txt", "hello", 0o644),
            ],
            vec![
                chown("/opt", 1, 1),
                chown("/opt/a", 1, 1),
                chown("/opt/a/b", 1, 1),
                chown("/opt/a/b/file.txt", 1, 1),
            ],
        ],
    )
}

fn directory_permission_on_commit(c: &mut Ctx) -> Check {
    let mut first: Vec<Op> = (1..=5).map(|i| dir(&format!("/dir{i}"), 0o700)).collect();
    first.extend([
        file("/dir4/f1", "f1", 0o644),
        file("/dir5/f1", "f1", 0o644),
        chown("/dir1", 1, 1),
        chown("/dir2", 1, 1),
        chown("/dir3", 1, 1),
        chown("/dir5", 1, 1),
        chown("/dir5/f1", 1, 1),
    ]);
    let second = vec![
        chown("/dir2", 0, 0),
        remove_all("/dir3"),
        chown("/dir4", 1, 1),
        chown("/dir4/f1", 1, 1),
    ];
    let third = vec![
        dir("/dir3", 0o700),
        chown("/dir3", 1, 1),
        remove_all("/dir5"),
        dir("/dir5", 0o700),
        chown("/dir5", 1, 1),
    ];
    chain(c, "perm", &[first, second, third])
}

fn deleted_files_in_child(c: &mut Ctx) -> Check {
    chain(
        c,
        "deleted",
        &[
            vec![file("/foo", "foo", 0o644), file("/foobar", "foobar", 0o644)],
            vec![remove_all("/foobar")],
            vec![],
        ],
    )
}

fn move_file_from_lower(c: &mut Ctx) -> Check {
    chain(
        c,
        "move",
        &[
            vec![
                dir("/dir1", 0o700),
                file("/dir1/f1", "Hello", 0o644),
                dir("/dir2", 0o700),
                file("/dir2/f2", "Hello again", 0o644),
            ],
            vec![
                dir("/dir3", 0o700),
                file("/dir3/f1", "Hello", 0o644),
                remove_all("/dir1"),
                ops::hardlink("/dir3/f2", "/dir2/f2"),
                remove_all("/dir2/f2"),
            ],
        ],
    )
}

fn snapshot_rename(c: &mut Ctx) -> Check {
    chain(
        c,
        "rename",
        &[
            vec![
                dir("/dir1", 0o700),
                file("/dir1/inner", "inner", 0o644),
                dir("/somefiles", 0o700),
                file("/somefiles/f1", "was here first!", 0o644),
                file("/somefiles/f2", "nothing interesting", 0o644),
            ],
            vec![
                ops::rename("/dir1", "/dir2"),
                file("/somefiles/f1-overwrite", "new content 1", 0o644),
                ops::rename("/somefiles/f1-overwrite", "/somefiles/f1"),
                ops::rename("/somefiles/f2", "/somefiles/f3"),
            ],
        ],
    )
}

fn remove_intermediate(c: &mut Ctx) -> Check {
    c.create("base", None)?;
    c.write("base", &[file("/base", "base", 0o644)])?;
    c.create("intermediate", Some("base"))?;
    c.write("intermediate", &[file("/inter", "inter", 0o644)])?;
    c.create("top", Some("intermediate"))?;
    if c.try_remove("intermediate").is_ok() {
        return fail("removing an intermediate layer with a child succeeded");
    }
    c.remove("top")?;
    c.remove("intermediate")?;
    c.remove("base")
}

/// containerd's `check128LayersMount`: 128 layers, each compared with the plain directory
/// before and after it is written, then a view of the top.
fn layers_128_mount(c: &mut Ctx) -> Check {
    let flat = c.flat()?;
    let first = vec![
        file("/bottom", "way at the bottom\n", 0o777),
        file("/overwriteme", "FIRST!\n", 0o777),
        dir("/addhere", 0o755),
        dir("/onlyme", 0o755),
        file("/onlyme/bottom", "bye!\n", 0o777),
    ];
    c.create("layer-0", None)?;
    c.write("layer-0", &first)?;
    ops::apply(&flat, &first)?;
    let mut parent = "layer-0".to_string();
    for i in 1..128 {
        let id = format!("layer-{i}");
        c.create(&id, Some(&parent))?;
        let m = c.mount(&id)?;
        same_tree(&flat, &m).map_err(|e| format!("layer {i} before writing: {e}"))?;
        let ops = vec![
            file("/overwriteme", format!("{i} WAS HERE!\n"), 0o777),
            file(&format!("/addhere/file-{i}"), "same-content", 0o755),
            remove_all("/onlyme"),
            dir("/onlyme", 0o755),
            file(&format!("/onlyme/file-{i}"), "only me!\n", 0o777),
        ];
        ops::apply(&m, &ops)?;
        ops::apply(&flat, &ops)?;
        same_tree(&flat, &m).map_err(|e| format!("layer {i} after writing: {e}"))?;
        c.unmount(&id)?;
        parent = id;
    }
    c.expect_view(&parent, &flat)
}
