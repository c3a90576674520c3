//! `strata-mkimage DIR`: writes the demo image as an OCI image layout at DIR, so that
//! `cargo xtask demo` imports an image the project builds itself and downloads nothing.
//!
//! Three gzip layers: a tiny root filesystem; an application layer; and a top layer that
//! changes a file, deletes one with a whiteout and replaces a directory's contents with an
//! opaque marker. Prints the image id.

use strata_tests::oci::{self, Compression};
use strata_tests::targen::{Entry, tar_of};

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: strata-mkimage DIR");
        std::process::exit(2);
    };
    let base = tar_of(&[
        Entry::dir("etc", 0o755),
        Entry::file("etc/hostname", 0o644, b"strata-demo\n"),
        Entry::file("etc/motd", 0o644, b"layers all the way down\n"),
        Entry::dir("usr", 0o755),
        Entry::dir("usr/bin", 0o755),
        Entry::file(
            "usr/bin/hello",
            0o755,
            b"#!/bin/sh\necho hello from a layer\n",
        ),
        Entry::symlink("bin", "usr/bin"),
        Entry::dir("var", 0o755),
        Entry::dir("var/cache", 0o755),
        Entry::file("var/cache/old-1", 0o644, b"stale\n"),
        Entry::file("var/cache/old-2", 0o644, b"stale\n"),
    ]);
    let app = tar_of(&[
        Entry::dir("srv", 0o755),
        Entry::file("srv/index.html", 0o644, b"<h1>served from an image</h1>\n"),
        Entry::file("usr/bin/world", 0o755, b"#!/bin/sh\necho world\n"),
    ]);
    let top = tar_of(&[
        Entry::file("etc/hostname", 0o644, b"strata-image\n"),
        Entry::whiteout("etc/motd"),
        Entry::dir("var/cache", 0o755),
        Entry::opaque("var/cache"),
        Entry::file("var/cache/fresh", 0o644, b"new\n"),
    ]);
    let image = oci::build(&[base, app, top], Compression::Gzip, "strata-demo:latest");
    oci::write_layout(&image, std::path::Path::new(&dir));
    println!("{}", image.image_id());
}
