//! Layer tars that cost an apply memory if it keeps anything per entry, and a way to measure
//! the peak memory of the `strata` process applying one (`tests/sandbox_apply_memory.rs`,
//! `cargo xtask bench apply-memory`).
//!
//! Each entry carries a path close to the 4 KiB limit (GNU long-name records), so a host that
//! kept a path per entry would grow by about 4 KiB an entry, while the tar compresses to
//! almost nothing: 50,000 repeats are a 1.2 MB gzip.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use tar::{Builder, EntryType, Header};

/// A path of `len` bytes (components of 250 bytes) ending in `leaf`.
pub fn long_path(len: usize, leaf: &str) -> String {
    let mut p = String::new();
    while p.len() + 251 + leaf.len() < len {
        p.push_str(&"d".repeat(250));
        p.push('/');
    }
    p.push_str(leaf);
    p
}

fn dir_header() -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(1_600_000_000);
    h
}

/// Writes the same directory entry (a ~4 KiB path) `n` times as a tar to `out`.
pub fn write_repeated_dir<W: Write>(out: W, n: usize) -> std::io::Result<W> {
    let path = long_path(4000, "leaf");
    let mut b = Builder::new(out);
    for _ in 0..n {
        b.append_data(&mut dir_header(), &path, std::io::empty())?;
    }
    b.into_inner()
}

/// Writes `n` distinct directories, each with a ~4 KiB path (siblings under one deep
/// parent), as a tar to `out`.
pub fn write_distinct_dirs<W: Write>(out: W, n: usize) -> std::io::Result<W> {
    let mut b = Builder::new(out);
    for i in 0..n {
        let path = long_path(4000, &format!("{i:09}"));
        b.append_data(&mut dir_header(), &path, std::io::empty())?;
    }
    b.into_inner()
}

/// Writes a legitimate big layer: `n` small files with short paths, 1,000 to a directory
/// (a distro's shape, many times over), as a tar to `out`.
pub fn write_many_files<W: Write>(out: W, n: usize) -> std::io::Result<W> {
    let mut b = Builder::new(out);
    for i in 0..n {
        if i % 1000 == 0 {
            b.append_data(
                &mut dir_header(),
                format!("usr/d{:06}", i / 1000),
                std::io::empty(),
            )?;
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(8);
        h.set_mtime(1_600_000_000);
        let body = format!("{i:08}");
        b.append_data(
            &mut h,
            format!("usr/d{:06}/file-{i}", i / 1000),
            body.as_bytes(),
        )?;
    }
    b.into_inner()
}

/// The same directory entry (a ~4 KiB path) `n` times.
pub fn repeated_dir(n: usize) -> Vec<u8> {
    write_repeated_dir(Vec::new(), n).expect("writing a tar")
}

/// `n` distinct directories, each with a ~4 KiB path.
pub fn distinct_dirs(n: usize) -> Vec<u8> {
    write_distinct_dirs(Vec::new(), n).expect("writing a tar")
}

/// A layer file's compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip -9.
    Gzip,
    /// zstd -19 --long (long-distance matching, a 128 MiB window).
    ZstdLong,
    /// zstd -3.
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip -9",
            Compression::ZstdLong => "zstd -19 --long",
            Compression::Zstd => "zstd -3",
        }
    }
}

/// Writes the tar that `write` produces into file `path`, compressed; returns its size.
pub fn write_compressed(
    path: &Path,
    compression: Compression,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    match compression {
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
            write(&mut gz)?;
            gz.finish()?.into_inner().map_err(|e| e.into_error())?;
        }
        Compression::Zstd | Compression::ZstdLong => {
            let long = compression == Compression::ZstdLong;
            let mut e = zstd::stream::Encoder::new(file, if long { 19 } else { 3 })?;
            if long {
                e.long_distance_matching(true)?;
                e.window_log(27)?;
            }
            write(&mut e)?;
            e.finish()?.into_inner().map_err(|e| e.into_error())?;
        }
    }
    Ok(std::fs::metadata(path)?.len())
}

/// zstd at `level`; `long` as `zstd --long` (long-distance matching, a 128 MiB window).
pub fn zstd(tar: &[u8], level: i32, long: bool) -> Vec<u8> {
    let mut e = zstd::stream::Encoder::new(Vec::new(), level).expect("zstd");
    if long {
        e.long_distance_matching(true).expect("zstd --long");
        e.window_log(27).expect("zstd --long");
    }
    e.write_all(tar).expect("zstd");
    e.finish().expect("zstd")
}

/// Runs `program` with `args` to its end through `peak_rss_tool` (the `strata-peak-rss`
/// binary): whether it succeeded, its stderr, and its peak resident set in bytes.
pub fn run_measured(
    peak_rss_tool: &Path,
    program: &Path,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, std::path::PathBuf)],
) -> (bool, String, u64) {
    let out = Command::new(peak_rss_tool)
        .arg(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v)))
        .output()
        .expect("running strata-peak-rss");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let peak = stdout.trim().parse().unwrap_or(0);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        peak,
    )
}

/// The store an apply is measured on: its roots and the driver to open it with.
pub struct MeasuredStore<'a> {
    pub root: &'a Path,
    pub run_root: &'a Path,
    pub driver: &'a str,
}

/// `strata layer apply ID LAYER` (the binary `strata`) on `store`, measured by
/// [`run_measured`]; fails the caller when the apply fails. The peak resident set in bytes.
pub fn apply_peak(
    peak_rss_tool: &Path,
    strata: &Path,
    store: &MeasuredStore<'_>,
    id: &str,
    layer: &Path,
) -> u64 {
    let args: Vec<&std::ffi::OsStr> = vec![
        "--root".as_ref(),
        store.root.as_os_str(),
        "--run-root".as_ref(),
        store.run_root.as_os_str(),
        "--driver".as_ref(),
        store.driver.as_ref(),
        "layer".as_ref(),
        "apply".as_ref(),
        id.as_ref(),
        layer.as_os_str(),
    ];
    let (ok, err, peak) = run_measured(peak_rss_tool, strata, &args, &crate::strata_env());
    assert!(
        ok,
        "applying {} onto {id} ({}): {err}",
        layer.display(),
        store.driver
    );
    peak
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write_layer(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("writing a layer file");
    p
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}
