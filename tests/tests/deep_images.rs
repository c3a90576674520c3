//! Images as deep as overlayfs stacks: a container on a 500-layer image runs on the overlay
//! driver (its upper over 500 lowers, as containerd's overlayfs snapshotter mounts it), its
//! commit (a read-only layer over 500) mounts, and a 501-layer image is refused before
//! anything is written.

use std::path::PathBuf;

use strata_tests::oci::{self, BuiltImage, Compression};
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, tree};

/// An image of `count` layers, layer `i` adding `layers/<i>`.
fn deep_image(count: usize, reference: &str) -> BuiltImage {
    let layers: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut entries = Vec::new();
            if i == 0 {
                entries.push(Entry::dir("layers", 0o755));
            }
            entries.push(Entry::file(
                &format!("layers/{i}"),
                0o644,
                format!("layer {i}\n").as_bytes(),
            ));
            tar_of(&entries)
        })
        .collect();
    oci::build(&layers, Compression::None, reference)
}

fn ok(t: &TempStore, args: &[&str]) -> String {
    let (success, out, err) = t.cli(args);
    assert!(success, "strata {args:?} failed: {err}");
    out
}

#[test]
fn a_container_on_a_500_layer_image_runs_on_overlay() {
    if !strata_tests::root_or_skip("a_container_on_a_500_layer_image_runs_on_overlay", "mounts") {
        return;
    }
    let t = TempStore::new();
    let layout = t.dir.path().join("deep");
    let img = deep_image(500, "deep:500");
    oci::write_layout(&img, &layout);
    ok(&t, &["image", "import", layout.to_str().unwrap()]);

    let id = ok(&t, &["container", "create", "deep:500", "--name", "c"])
        .trim()
        .to_string();
    let mnt = PathBuf::from(ok(&t, &["container", "mount", "c"]).trim());
    for i in [0, 1, 250, 498, 499] {
        assert_eq!(
            std::fs::read(mnt.join(format!("layers/{i}"))).unwrap(),
            format!("layer {i}\n").as_bytes(),
            "layers/{i} through the container's mount"
        );
    }
    std::fs::write(mnt.join("written"), b"by the container").unwrap();
    std::fs::remove_file(mnt.join("layers/7")).unwrap();
    ok(&t, &["container", "unmount", "c"]);
    let changes = ok(&t, &["layer", "changes", &id]);
    assert!(changes.contains("Add /written"), "{changes}");
    assert!(changes.contains("Delete /layers/7"), "{changes}");

    // The commit is a read-only layer over 500: its own diff and 500 lowers are one more
    // than overlayfs stacks, and it still mounts, read-only.
    ok(&t, &["container", "commit", "c", "--name", "snap"]);
    let ro = PathBuf::from(ok(&t, &["layer", "mount", "snap"]).trim());
    assert_eq!(
        std::fs::read(ro.join("written")).unwrap(),
        b"by the container"
    );
    assert_eq!(std::fs::read(ro.join("layers/0")).unwrap(), b"layer 0\n");
    assert!(
        !ro.join("layers/7").exists(),
        "the deletion is in the commit"
    );
    let err = std::fs::write(ro.join("more"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(30),
        "EROFS writing a read-only layer: {err}"
    );
    ok(&t, &["layer", "unmount", "snap"]);

    // Against a layer other than its parent the host compares merged views: the commit's
    // view is 501 directories, one over a view of 500.
    let base = img.layer_id(0);
    let changes = ok(&t, &["layer", "changes", "snap", "--parent", &base]);
    let lines: Vec<&str> = changes.lines().collect();
    assert!(lines.contains(&"Add /written"), "{changes}");
    assert!(lines.contains(&"Add /layers/499"), "{changes}");
    assert!(!lines.iter().any(|l| l.ends_with("/layers/7")), "{changes}");
    assert!(!lines.contains(&"Add /layers/0"), "{changes}");
    assert_eq!(
        lines.len(),
        1 + 1 + 498,
        "Modify /layers, Add /written, Add 1..=499 but 7: {changes}"
    );
    ok(&t, &["container", "rm", "c"]);
}

#[test]
fn a_501_layer_image_is_refused_before_anything_is_written() {
    if !strata_tests::root_or_skip(
        "a_501_layer_image_is_refused_before_anything_is_written",
        "the overlay driver probes overlayfs with a mount",
    ) {
        return;
    }
    let t = TempStore::new();
    // The store exists (with its driver home) before the import.
    let small = t.dir.path().join("small");
    oci::write_layout(&deep_image(2, "small:2"), &small);
    ok(&t, &["image", "import", small.to_str().unwrap()]);
    let home = t.home("overlay");
    let before = (tree(&home), ok(&t, &["layer", "ls"]));

    let layout = t.dir.path().join("deeper");
    oci::write_layout(&deep_image(501, "deeper:501"), &layout);
    let (success, _, err) = t.cli(&["image", "import", layout.to_str().unwrap()]);
    assert!(!success, "a 501-layer image must be refused on overlay");
    assert!(
        err.contains("501 layers") && err.contains("at most 500"),
        "the error names the depth and the limit: {err}"
    );
    assert!(err.contains("nothing was imported"), "{err}");
    assert_eq!(
        (tree(&home), ok(&t, &["layer", "ls"])),
        before,
        "nothing written: {err}"
    );
    let images = ok(&t, &["image", "ls"]);
    assert_eq!(images.lines().count(), 1, "{images}");
}
