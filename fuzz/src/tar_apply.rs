//! `tar_apply`: a layer tar applied through the real apply (`apply_layer_tar`) onto a
//! destination directory that already holds a small tree.
//!
//! Input: one byte choosing the whiteout format (delete, overlay trusted, overlay user), then
//! the tar. Checks after each input, besides "no panic":
//! - nothing outside the destination changed: its parent holds only the destination and a
//!   sibling directory `outside/` with one file, whose content, mode, owner and link count
//!   (a hardlink to it from inside would raise that) are as they were;
//! - all or nothing: when apply fails and says it undid its work (`Undone`), the destination
//!   is exactly as before (names, kinds, modes, owners, sizes, link targets, contents); it
//!   never says it could not undo (`NotUndone`) here, where every undo can succeed.
//!
//! Seeds include tars that try to leave the destination: `..` names, absolute names,
//! symlinks to `../outside` and to `outside`'s absolute path followed by entries beneath
//! them, hardlinks to the outside file, whiteouts through symlinks.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::Digest as _;
use strata_core::archive::{ArchiveError, WhiteoutFormat, apply_layer_tar};
use strata_sys::Dir;
use strata_tests::targen::{Entry, tar_of};

const SENTINEL: &[u8] = b"outside the destination: never written\n";

struct Scratch {
    parent: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
    /// The destination's tree after [`fixture`].
    before: Tree,
    outside_before: Tree,
}

/// What a tree holds, path by path: kind, mode, owner, size, link target, content digest.
type Tree = BTreeMap<PathBuf, String>;

fn snapshot(root: &Path) -> Tree {
    let mut out = Tree::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut Tree) {
    let path = root.join(rel);
    let md = std::fs::symlink_metadata(&path)
        .unwrap_or_else(|e| panic!("fuzz harness: lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let mut desc = format!(
        "{:o} {}:{} nlink {}",
        md.mode(),
        md.uid(),
        md.gid(),
        if ft.is_dir() { 0 } else { md.nlink() }
    );
    if ft.is_symlink() {
        let target = std::fs::read_link(&path).expect("readlink");
        desc.push_str(&format!(" -> {}", target.display()));
    } else if ft.is_file() {
        let bytes = std::fs::read(&path).expect("reading a file");
        desc.push_str(&format!(
            " {} bytes {}",
            bytes.len(),
            hex::encode(sha2::Sha256::digest(&bytes))
        ));
    } else if !ft.is_dir() {
        desc.push_str(&format!(" rdev {}", md.rdev()));
    }
    out.insert(rel.to_path_buf(), desc);
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .expect("read_dir")
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), out);
        }
    }
}

/// The destination's tree before each input.
fn fixture(dest: &Path) {
    std::fs::create_dir_all(dest.join("d/e")).expect("fixture");
    std::fs::write(dest.join("d/f"), b"fixture file").expect("fixture");
    std::fs::write(dest.join("top"), b"top").expect("fixture");
    std::os::unix::fs::symlink("d", dest.join("l")).expect("fixture");
    std::os::unix::fs::symlink("../outside", dest.join("out")).expect("fixture");
}

fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        let parent = crate::scratch("tar_apply");
        crate::remove_tree(&parent);
        let dest = parent.join("dest");
        let outside = parent.join("outside");
        std::fs::create_dir_all(&outside).expect("scratch");
        std::fs::write(outside.join("sentinel"), SENTINEL).expect("scratch");
        std::fs::create_dir_all(&dest).expect("scratch");
        fixture(&dest);
        Scratch {
            before: snapshot(&dest),
            outside_before: snapshot(&outside),
            parent,
            dest,
            outside,
        }
    })
}

pub fn run(data: &[u8]) {
    let Some((&format, tar)) = data.split_first() else {
        return;
    };
    let format = match format % 3 {
        0 => WhiteoutFormat::Delete,
        1 => WhiteoutFormat::OverlayTrusted,
        _ => WhiteoutFormat::OverlayUser,
    };
    let s = scratch();
    crate::remove_tree(&s.dest);
    std::fs::create_dir(&s.dest).expect("scratch");
    fixture(&s.dest);
    let dir = Dir::open_ambient(&s.dest).expect("opening the destination");
    let result = apply_layer_tar(tar, &dir, format);
    drop(dir);

    let mut names: Vec<_> = std::fs::read_dir(&s.parent)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["dest", "outside"],
        "apply made something beside its destination: {result:?}"
    );
    assert_eq!(
        snapshot(&s.outside),
        s.outside_before,
        "apply changed a directory outside its destination: {result:?}"
    );
    match &result {
        Ok(_) => {}
        Err(ArchiveError::Undone(_)) => {
            let after = snapshot(&s.dest);
            if after != s.before {
                let changed: Vec<_> = s
                    .before
                    .iter()
                    .filter(|(k, v)| after.get(*k) != Some(v))
                    .map(|(k, v)| format!("{}: was {v}, now {:?}", k.display(), after.get(k)))
                    .chain(
                        after
                            .iter()
                            .filter(|(k, _)| !s.before.contains_key(*k))
                            .map(|(k, v)| format!("{}: new {v}", k.display())),
                    )
                    .collect();
                panic!(
                    "apply failed, said it undid everything, but the destination differs: \
                     {changed:#?}\n({result:?})"
                );
            }
        }
        Err(e @ ArchiveError::NotUndone { .. }) => {
            panic!("apply could not undo itself: {e}")
        }
        Err(e) => panic!("apply failed without saying whether it undid its work: {e}"),
    }
    if let Err(e) = &result {
        let _ = e.to_string();
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let outside = scratch().outside.to_string_lossy().into_owned();
    let mut tars = crate::tars::layers();
    tars.extend([
        tar_of(&[Entry::file("../escape", 0o644, b"x")]),
        tar_of(&[Entry::file("/abs", 0o644, b"x")]),
        tar_of(&[Entry::file("out/new", 0o644, b"through a symlink")]),
        tar_of(&[
            Entry::symlink("esc", "../outside"),
            Entry::file("esc/sentinel", 0o644, b"overwritten"),
        ]),
        tar_of(&[
            Entry::symlink("abs", &outside),
            Entry::file("abs/sentinel", 0o644, b"overwritten"),
            Entry::dir("abs/newdir", 0o755),
        ]),
        tar_of(&[Entry::hardlink("hl", "../outside/sentinel")]),
        tar_of(&[Entry::hardlink("hl", &format!("{outside}/sentinel"))]),
        tar_of(&[Entry::hardlink("hl", "out/sentinel")]),
        tar_of(&[Entry::whiteout("out/sentinel")]),
        tar_of(&[Entry::opaque("out")]),
        tar_of(&[Entry::opaque("l")]),
        // Changes, then a refused entry: all undone.
        tar_of(&[
            Entry::file("d/f", 0o600, b"replaced"),
            Entry::whiteout("top"),
            Entry::dir("d", 0o700).owner(7, 7),
            Entry::opaque("d"),
            Entry::symlink("l", "elsewhere"),
            Entry::file("new/deep/file", 0o644, b"new"),
            Entry::file("../refused", 0o644, b""),
        ]),
        tar_of(&[
            Entry::dir(".", 0o700),
            Entry::file("d/e", 0o644, b"a file where a directory was"),
            Entry::hardlink("x", "missing"),
        ]),
    ]);
    tars.into_iter()
        .flat_map(|t| {
            (0u8..3).map(move |f| {
                let mut v = vec![f];
                v.extend_from_slice(&t);
                v
            })
        })
        .collect()
}
