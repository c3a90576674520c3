//! Holes stay holes. A GNU sparse tar entry is applied by writing its data only and setting
//! the length (a 1,536-byte tar with a 1 GiB hole costs no disk); a vfs child layer's copy
//! keeps its parent's holes (`SEEK_DATA`/`SEEK_HOLE`); a container's sparse files are
//! exported as sparse tar entries (old GNU format, which GNU tar reads), so its diff and its
//! commit carry data, not gigabytes of zeros — on vfs and on overlay.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use strata_tests::TempStore;
use strata_tests::oci::{self, Compression};
use strata_tests::targen::{Entry, tar_of};
use tar::{EntryType, Header};

const GIB: u64 = 1 << 30;
/// Disk a file with a hole may take: its few blocks of data and filesystem metadata.
const SMALL: u64 = 1 << 20;

fn run(t: &TempStore, d: &[&str], args: &[&str]) -> String {
    let all: Vec<&str> = d.iter().chain(args).copied().collect();
    let (success, out, err) = t.cli(&all);
    assert!(success, "strata {all:?} failed: {err}");
    out
}

/// A tar of one old GNU sparse entry `name` of `real_size` bytes whose data is `regions`
/// (at most four, in the header) filled with `fill`.
fn gnu_sparse_tar(name: &str, real_size: u64, regions: &[(u64, u64)], fill: u8) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    let data: u64 = regions.iter().map(|r| r.1).sum();
    h.set_size(data);
    let gnu = h.as_gnu_mut().expect("gnu");
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    gnu.set_real_size(real_size);
    for (slot, &(o, l)) in gnu.sparse.iter_mut().zip(regions) {
        slot.set_offset(o);
        slot.set_length(l);
    }
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend(std::iter::repeat_n(fill, data as usize));
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// `path` is a `size`-byte file holding `data` at the given offsets and zeros elsewhere
/// (checked at `zero_at`), on a few blocks of disk.
fn assert_sparse(path: &Path, size: u64, data: &[(u64, &[u8])], zero_at: u64) {
    let md = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(md.len(), size, "{}: length", path.display());
    assert!(
        md.blocks() * 512 <= SMALL,
        "{}: {} bytes of disk for a sparse file: its holes were written",
        path.display(),
        md.blocks() * 512
    );
    let f = File::open(path).unwrap();
    for (offset, bytes) in data {
        let mut got = vec![0u8; bytes.len()];
        f.read_exact_at(&mut got, *offset).unwrap();
        assert_eq!(&got, bytes, "{}: data at {offset}", path.display());
    }
    let mut hole = [1u8; 4096];
    f.read_exact_at(&mut hole, zero_at).unwrap();
    assert!(
        hole.iter().all(|b| *b == 0),
        "{}: zeros in the hole",
        path.display()
    );
}

fn mounted(t: &TempStore, d: &[&str], id: &str) -> PathBuf {
    PathBuf::from(run(t, d, &["layer", "mount", id]).trim())
}

fn apply(t: &TempStore, d: &[&str], id: &str, name: &str, tar: &[u8]) {
    let p = t.dir.path().join(name);
    std::fs::write(&p, tar).unwrap();
    run(t, d, &["layer", "create", "--id", id]);
    run(t, d, &["layer", "apply", id, p.to_str().unwrap()]);
}

fn gnu_sparse_entries_apply_sparse(d: &[&str]) {
    let t = TempStore::new();
    // The tar: one entry, a 1 GiB hole.
    let hole = gnu_sparse_tar("hole", GIB, &[(GIB, 0)], 0);
    assert_eq!(hole.len(), 1536);
    apply(&t, d, "hole", "hole.tar", &hole);
    let tail = gnu_sparse_tar("tail", GIB + 512, &[(4096, 512), (GIB, 512)], b'x');
    apply(&t, d, "tail", "tail.tar", &tail);

    let m = mounted(&t, d, "hole");
    assert_sparse(&m.join("hole"), GIB, &[], GIB / 2);
    let m = mounted(&t, d, "tail");
    let x = [b'x'; 512];
    assert_sparse(
        &m.join("tail"),
        GIB + 512,
        &[(4096, &x), (GIB, &x)],
        GIB / 2,
    );

    // A copy (a vfs child starts as one) keeps the holes.
    run(
        &t,
        d,
        &["layer", "create", "--id", "child", "--parent", "tail"],
    );
    let m = mounted(&t, d, "child");
    assert_sparse(
        &m.join("tail"),
        GIB + 512,
        &[(4096, &x), (GIB, &x)],
        GIB / 2,
    );
    for id in ["child", "tail", "hole"] {
        run(&t, d, &["layer", "unmount", id]);
    }
}

#[test]
fn gnu_sparse_entries_apply_and_copy_sparse_on_vfs() {
    if !strata_tests::root_or_skip("gnu_sparse_entries_apply_and_copy_sparse_on_vfs", "mounts") {
        return;
    }
    gnu_sparse_entries_apply_sparse(&["--driver", "vfs"]);
}

#[test]
fn gnu_sparse_entries_apply_sparse_on_overlay() {
    if !strata_tests::root_or_skip("gnu_sparse_entries_apply_sparse_on_overlay", "mounts") {
        return;
    }
    gnu_sparse_entries_apply_sparse(&["--driver", "overlay"]);
}

/// Runs GNU tar; its stdout.
fn gnu_tar(args: &[&str]) -> String {
    strata_tests::run_tool(std::process::Command::new("tar").args(args))
}

fn container_sparse_files_export_sparse(d: &[&str]) {
    let t = TempStore::new();
    let layout = t.dir.path().join("base");
    let img = oci::build(
        &[tar_of(&[Entry::file("base", 0o644, b"base\n")])],
        Compression::None,
        "base:1",
    );
    oci::write_layout(&img, &layout);
    run(&t, d, &["image", "import", layout.to_str().unwrap()]);
    let id = run(&t, d, &["container", "create", "base:1", "--name", "c"])
        .trim()
        .to_string();
    let mnt = PathBuf::from(run(&t, d, &["container", "mount", "c"]).trim());
    // A 2 GiB file with data at both ends, and `truncate -s 1G`.
    let big = File::create(mnt.join("big")).unwrap();
    big.write_all_at(b"head", 0).unwrap();
    big.set_len(2 * GIB).unwrap();
    big.write_all_at(b"tail", 2 * GIB - 4).unwrap();
    drop(big);
    File::create(mnt.join("truncated"))
        .unwrap()
        .set_len(GIB)
        .unwrap();
    // And a plain file, exported as it always was.
    std::fs::write(mnt.join("plain"), b"plain\n").unwrap();
    run(&t, d, &["container", "unmount", "c"]);

    let diff = t.dir.path().join("diff.tar");
    run(&t, d, &["layer", "diff", &id, "-o", diff.to_str().unwrap()]);
    let len = std::fs::metadata(&diff).unwrap().len();
    eprintln!("{d:?}: the diff of 3 GiB of sparse files is {len} bytes");
    assert!(
        len <= SMALL,
        "the diff is {len} bytes: the holes were written out"
    );

    // GNU tar reads it: lists the real sizes and extracts the holes as holes.
    let listing = gnu_tar(&["-tvf", diff.to_str().unwrap()]);
    assert!(
        listing
            .lines()
            .any(|l| l.contains("2147483648") && l.ends_with("big")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.contains("1073741824") && l.ends_with("truncated")),
        "{listing}"
    );
    let out = t.dir.path().join("extracted");
    std::fs::create_dir(&out).unwrap();
    gnu_tar(&["-xf", diff.to_str().unwrap(), "-C", out.to_str().unwrap()]);
    let ends: [(u64, &[u8]); 2] = [(0, b"head"), (2 * GIB - 4, b"tail")];
    assert_sparse(&out.join("big"), 2 * GIB, &ends, GIB);
    assert_sparse(&out.join("truncated"), GIB, &[], GIB / 2);
    assert_eq!(std::fs::read(out.join("plain")).unwrap(), b"plain\n");

    // Our own apply takes it back, holes and all.
    let diff_bytes = std::fs::read(&diff).unwrap();
    apply(&t, d, "back", "back.tar", &diff_bytes);
    let m = mounted(&t, d, "back");
    assert_sparse(&m.join("big"), 2 * GIB, &ends, GIB);
    assert_sparse(&m.join("truncated"), GIB, &[], GIB / 2);
    assert_eq!(std::fs::read(m.join("plain")).unwrap(), b"plain\n");
    run(&t, d, &["layer", "unmount", "back"]);

    // A commit carries data, not zeros.
    run(&t, d, &["container", "commit", "c", "--name", "snap"]);
    let m = mounted(&t, d, "snap");
    assert_sparse(&m.join("big"), 2 * GIB, &ends, GIB);
    assert_eq!(std::fs::read(m.join("plain")).unwrap(), b"plain\n");
    run(&t, d, &["layer", "unmount", "snap"]);
    run(&t, d, &["container", "rm", "--force", "c"]);
}

#[test]
fn a_vfs_containers_sparse_files_export_and_commit_sparse() {
    if !strata_tests::root_or_skip(
        "a_vfs_containers_sparse_files_export_and_commit_sparse",
        "mounts",
    ) {
        return;
    }
    container_sparse_files_export_sparse(&["--driver", "vfs"]);
}

#[test]
fn an_overlay_containers_sparse_files_export_and_commit_sparse() {
    if !strata_tests::root_or_skip(
        "an_overlay_containers_sparse_files_export_and_commit_sparse",
        "mounts",
    ) {
        return;
    }
    container_sparse_files_export_sparse(&["--driver", "overlay"]);
}

/// GNU tar's sparse formats — old GNU (`S`) and PAX 0.0, 0.1 and 1.0 — all apply with their
/// holes kept and their names right (a PAX sparse entry's header name is a placeholder such
/// as `GNUSparseFile.0/vm.img`; the real one is a PAX record).
#[test]
fn every_sparse_format_gnu_tar_writes_applies_sparse() {
    if !strata_tests::root_or_skip(
        "every_sparse_format_gnu_tar_writes_applies_sparse",
        "mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    let d = ["--driver", "vfs"];
    let src = t.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let f = File::create(src.join("vm.img")).unwrap();
    f.write_all_at(b"boot", 0).unwrap();
    f.write_all_at(b"middle", GIB / 2).unwrap();
    f.write_all_at(b"end", GIB - 3).unwrap();
    drop(f);
    let ends: [(u64, &[u8]); 3] = [(0, b"boot"), (GIB / 2, b"middle"), (GIB - 3, b"end")];
    let formats: [(&str, &[&str]); 4] = [
        ("gnu", &["--format=gnu"]),
        ("pax-0.0", &["--format=posix", "--sparse-version=0.0"]),
        ("pax-0.1", &["--format=posix", "--sparse-version=0.1"]),
        ("pax-1.0", &["--format=posix", "--sparse-version=1.0"]),
    ];
    for (name, flags) in formats {
        let tar = t.dir.path().join(format!("{name}.tar"));
        let mut args = vec![
            "-S",
            "-C",
            src.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        args.push("vm.img");
        gnu_tar(&args);
        assert!(
            std::fs::metadata(&tar).unwrap().len() <= SMALL,
            "{name}: GNU tar wrote it sparse"
        );
        run(&t, &d, &["layer", "create", "--id", name]);
        run(&t, &d, &["layer", "apply", name, tar.to_str().unwrap()]);
        let m = mounted(&t, &d, name);
        assert_eq!(
            strata_tests::tree(&m),
            strata_tests::tree(&src),
            "{name}: the entry's real name"
        );
        assert_sparse(&m.join("vm.img"), GIB, &ends, GIB / 4);
        run(&t, &d, &["layer", "unmount", name]);
    }
}
