//! `cargo xtask demo`: the main job, end to end, in a temporary root: import an image the
//! project builds itself, make a container on it, mount it, write, show the changes, commit.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{build_all, is_root};

/// Runs `strata ARGS` and returns its stdout, failing with its stderr.
fn strata(bin: &Path, root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .arg("--root")
        .arg(root.join("root"))
        .arg("--run-root")
        .arg(root.join("run"))
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "strata {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn list_tree(dir: &Path, prefix: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = prefix.join(e.file_name());
        let meta = std::fs::symlink_metadata(e.path())?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path())?;
            out.push(format!("/{} -> {}", rel.display(), target.display()));
        } else if meta.is_dir() {
            out.push(format!("/{}/", rel.display()));
            list_tree(&e.path(), &rel, out)?;
        } else {
            out.push(format!("/{} ({} bytes)", rel.display(), meta.len()));
        }
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let bin = build_all(true)?;
    let tmp = std::env::temp_dir().join(format!("strata-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = demo(&bin, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn demo(bin: &Path, tmp: &Path) -> Result<()> {
    // The image: an OCI layout the project writes itself (tests/src/bin/strata-mkimage.rs).
    crate::run(crate::cargo().args([
        "build",
        "--release",
        "-p",
        "strata-tests",
        "--bin",
        "strata-mkimage",
    ]))?;
    let layout = tmp.join("demo-image");
    let mkimage = crate::target_dir().join("release").join("strata-mkimage");
    let out = Command::new(&mkimage)
        .arg(&layout)
        .output()
        .with_context(|| format!("running {}", mkimage.display()))?;
    if !out.status.success() {
        bail!(
            "strata-mkimage failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = |args: &[&str]| strata(bin, tmp, args);
    let layout_arg = layout.to_string_lossy().into_owned();

    if is_root() {
        println!("$ strata status   (the default driver)");
        println!("{}", s(&["status"])?);
    }
    println!(
        "$ strata image import demo-image   (an OCI layout: 3 gzip layers, the top one with a whiteout and an opaque dir)"
    );
    println!("{}", s(&["image", "import", &layout_arg])?);
    println!("$ strata image import demo-image   (again: every layer is reused)");
    let again = s(&["--json", "image", "import", &layout_arg])?;
    if !again.contains("\"new_image\": false") {
        bail!("the second import made a new image: {again}");
    }
    println!("(reused: the image and its 3 layers were in the store already)");
    println!("$ strata image ls");
    println!("{}", s(&["image", "ls"])?);
    println!("$ strata container create strata-demo:latest --name demo");
    let container = s(&[
        "container",
        "create",
        "strata-demo:latest",
        "--name",
        "demo",
    ])?;
    println!("{container}");

    if is_root() {
        println!("$ strata container mount demo");
        let mp = s(&["container", "mount", "demo"])?;
        println!("{mp}");
        println!("$ echo 'written in the container' > {mp}/srv/note.txt");
        let written = std::fs::write(
            Path::new(&mp).join("srv/note.txt"),
            "written in the container\n",
        );
        let mut listing = Vec::new();
        let listed = list_tree(Path::new(&mp), Path::new(""), &mut listing);
        println!("$ find {mp}");
        for line in &listing {
            println!("{line}");
        }
        println!("$ strata layer changes {container}   (the container's layer)");
        let changes = s(&["layer", "changes", &container]);
        println!("$ strata container unmount demo");
        s(&["container", "unmount", "demo"])?;
        written?;
        listed?;
        let changes = changes?;
        println!("{changes}");
        for gone in ["/etc/motd", "/var/cache/old-1"] {
            if listing.iter().any(|l| l.starts_with(gone)) {
                bail!("{gone} should have been whited out");
            }
        }
        if !changes.contains("Add /srv/note.txt") {
            bail!("the container's change is missing: {changes}");
        }
        println!("$ strata container commit demo --name demo-changes");
        println!(
            "{}",
            s(&["container", "commit", "demo", "--name", "demo-changes"])?
        );
        println!("$ strata layer changes demo-changes");
        println!("{}", s(&["layer", "changes", "demo-changes"])?);
        s(&["layer", "rm", "demo-changes"])?;
    } else {
        println!("(skipping mount: mounting needs root)");
    }
    println!("$ strata container rm demo && strata image rm strata-demo:latest");
    s(&["container", "rm", "demo"])?;
    s(&["image", "rm", "strata-demo:latest"])?;
    let left = s(&["layer", "ls"])?;
    if !left.is_empty() {
        bail!("layers left after removal: {left}");
    }
    println!("demo finished: store empty again");
    Ok(())
}
