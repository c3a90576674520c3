//! `cargo xtask demo`: the main job, end to end, in a temporary root.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{build_all, is_root, tars};

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
    let base_tar = tmp.join("base.tar");
    let child_tar = tmp.join("child.tar");
    std::fs::write(&base_tar, tars::base_layer()?)?;
    std::fs::write(&child_tar, tars::child_layer()?)?;
    let s = |args: &[&str]| strata(bin, tmp, args);

    if is_root() {
        println!("$ strata status   (the default driver)");
        println!("{}", s(&["status"])?);
    }

    println!("$ strata layer create --id base");
    let base = s(&["layer", "create", "--id", "base"])?;
    println!("{base}");
    println!("$ strata layer apply base base.tar");
    println!(
        "{}",
        s(&["layer", "apply", "base", &base_tar.to_string_lossy()])?
    );
    println!("$ strata layer create --id child --parent base --rw");
    println!(
        "{}",
        s(&[
            "layer", "create", "--id", "child", "--parent", "base", "--rw"
        ])?
    );
    println!("$ strata layer apply child child.tar   (a whiteout and an opaque dir)");
    println!(
        "{}",
        s(&["layer", "apply", "child", &child_tar.to_string_lossy()])?
    );
    println!("$ strata layer changes child");
    println!("{}", s(&["layer", "changes", "child"])?);
    println!("$ strata layer ls");
    println!("{}", s(&["layer", "ls"])?);

    if is_root() {
        println!("$ strata layer mount child");
        let mp = s(&["layer", "mount", "child"])?;
        println!("{mp}");
        let mut listing = Vec::new();
        let listed = list_tree(Path::new(&mp), Path::new(""), &mut listing);
        println!("$ find {mp}");
        for line in &listing {
            println!("{line}");
        }
        println!("$ strata layer unmount child");
        s(&["layer", "unmount", "child"])?;
        listed?;
        for gone in ["/etc/motd", "/var/cache/old-1"] {
            if listing.iter().any(|l| l.starts_with(gone)) {
                bail!("{gone} should have been whited out");
            }
        }
    } else {
        println!("(skipping mount: mounting needs root)");
    }
    println!("$ strata layer rm child && strata layer rm base");
    s(&["layer", "rm", "child"])?;
    s(&["layer", "rm", "base"])?;
    let left = s(&["layer", "ls"])?;
    if !left.is_empty() {
        bail!("layers left after removal: {left}");
    }
    println!("demo finished: store empty again");
    Ok(())
}
