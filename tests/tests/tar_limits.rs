//! Metadata entries of a tar are checked against their limits from their header's size
//! field, before a byte of them is buffered: a GNU long name of 256 MiB and a PAX record
//! entry of 512 MiB (each a few KiB of zstd) are refused with an error naming the tar limit
//! (`MAX_PATH_LEN`, `MAX_PAX_EXTENSION_SIZE`), and the `strata` process applying them never
//! grows by more than a few MiB over applying a one-entry layer.
//!
//! Before, the `tar` crate's reader buffered the whole entry first: the long name took the
//! host to 1.17 GB, the PAX entry to 787 MB.

use std::io::Write;
use std::path::Path;

use strata_tests::applymem::{mib, repeated_dir, run_measured, write_layer, zstd};
use strata_tests::{TempStore, root_or_skip, strata_bin, strata_env};
use tar::{EntryType, Header};

/// What a run may differ from the baseline by: allocator and page cache noise, the
/// decoder's buffers.
const SLACK: u64 = 16 << 20;

/// Bytes of filler written per step, so the test never holds the big entry either.
const STEP: usize = 1 << 20;

/// A zstd tar: one metadata entry of type `kind` and `size` bytes (`prefix` then filler),
/// then a small file it would describe.
fn metadata_bomb(kind: EntryType, size: u64, prefix: &[u8]) -> Vec<u8> {
    let mut z = zstd::stream::Encoder::new(Vec::new(), 19).expect("zstd");
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    {
        let name = b"././@LongLink";
        h.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name);
    }
    h.set_cksum();
    z.write_all(h.as_bytes()).unwrap();
    z.write_all(prefix).unwrap();
    let mut left = size - prefix.len() as u64 - 1;
    let filler = vec![b'a'; STEP];
    while left > 0 {
        let n = left.min(STEP as u64) as usize;
        z.write_all(&filler[..n]).unwrap();
        left -= n as u64;
    }
    z.write_all(b"\n").unwrap();
    let pad = (512 - size % 512) % 512;
    z.write_all(&vec![0u8; pad as usize]).unwrap();
    let mut f = Header::new_gnu();
    f.set_entry_type(EntryType::Regular);
    f.set_size(0);
    f.set_mode(0o644);
    f.as_gnu_mut().expect("gnu").name[..1].copy_from_slice(b"f");
    f.set_cksum();
    z.write_all(f.as_bytes()).unwrap();
    z.write_all(&[0u8; 1024]).unwrap();
    z.finish().expect("zstd")
}

/// `strata --driver vfs layer apply ID LAYER` measured: success, stderr, peak RSS.
fn measured_apply(t: &TempStore, id: &str, layer: &Path) -> (bool, String, u64) {
    let (ok, _, err) = t.cli(&["--driver", "vfs", "layer", "create", "--id", id]);
    assert!(ok, "creating {id}: {err}");
    let (root, run) = (t.root(), t.dir.path().join("run"));
    let args: Vec<&std::ffi::OsStr> = vec![
        "--root".as_ref(),
        root.as_os_str(),
        "--run-root".as_ref(),
        run.as_os_str(),
        "--driver".as_ref(),
        "vfs".as_ref(),
        "layer".as_ref(),
        "apply".as_ref(),
        id.as_ref(),
        layer.as_os_str(),
    ];
    run_measured(
        Path::new(env!("CARGO_BIN_EXE_strata-peak-rss")),
        &strata_bin(),
        &args,
        &strata_env(),
    )
}

fn refused_within_memory(what: &str, bomb: Vec<u8>, names_the_limit: &str) {
    let t = TempStore::new();
    let one = write_layer(
        t.dir.path(),
        "one.tar.zst",
        &zstd(&repeated_dir(1), 3, false),
    );
    let (ok, err, baseline) = measured_apply(&t, "baseline", &one);
    assert!(ok, "the one-entry layer applies: {err}");
    let compressed = bomb.len();
    let hostile = write_layer(t.dir.path(), "hostile.tar.zst", &bomb);
    let (ok, err, peak) = measured_apply(&t, "hostile", &hostile);
    eprintln!(
        "{what} ({} KiB zstd): peak {:.1} MiB, baseline {:.1} MiB",
        compressed / 1024,
        mib(peak),
        mib(baseline)
    );
    assert!(!ok, "{what} is refused");
    assert!(
        err.contains(names_the_limit),
        "{what}: the error names the tar limit ({names_the_limit}): {err}"
    );
    assert!(
        peak <= baseline + SLACK,
        "{what}: the host grew to {:.1} MiB, over {:.1} MiB (baseline) + {} MiB",
        mib(peak),
        mib(baseline),
        SLACK >> 20
    );
    let (ok, out, err) = t.cli(&["--driver", "vfs", "layer", "ls"]);
    assert!(ok, "the store works after: {err}");
    assert!(out.contains("baseline"), "{out}");
}

#[test]
fn a_256_mib_gnu_long_name_is_refused_before_it_is_read() {
    if !root_or_skip(
        "a_256_mib_gnu_long_name_is_refused_before_it_is_read",
        "applying root-owned entries",
    ) {
        return;
    }
    refused_within_memory(
        "a 256 MiB GNU long name",
        metadata_bomb(EntryType::GNULongName, 256 << 20, b""),
        "GNU long name of 268435456 bytes: names are at most 4096 bytes (MAX_PATH_LEN)",
    );
}

#[test]
fn a_512_mib_pax_record_is_refused_before_it_is_read() {
    if !root_or_skip(
        "a_512_mib_pax_record_is_refused_before_it_is_read",
        "applying root-owned entries",
    ) {
        return;
    }
    let size: u64 = 512 << 20;
    refused_within_memory(
        "a 512 MiB PAX record",
        metadata_bomb(
            EntryType::XHeader,
            size,
            format!("{size} comment=").as_bytes(),
        ),
        "PAX records of 536870912 bytes: at most 1048576 (MAX_PAX_EXTENSION_SIZE)",
    );
}

#[test]
fn a_sparse_map_of_more_than_max_sparse_entries_is_refused() {
    if !root_or_skip(
        "a_sparse_map_of_more_than_max_sparse_entries_is_refused",
        "applying root-owned entries",
    ) {
        return;
    }
    // An old GNU sparse entry whose extension blocks go on and on: 21 regions of 512 bytes
    // each, a map any reader without a limit takes in.
    let max = strata_core::archive::MAX_SPARSE_ENTRIES;
    let blocks = max / 21 + 2;
    let regions = blocks * 21;
    let mut z = zstd::stream::Encoder::new(Vec::new(), 19).expect("zstd");
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(regions as u64 * 512);
    h.as_gnu_mut().expect("gnu").name[..6].copy_from_slice(b"sparse");
    h.as_gnu_mut()
        .unwrap()
        .set_real_size((regions as u64 - 1) * 1024 + 512);
    h.as_gnu_mut().unwrap().set_is_extended(true);
    h.set_cksum();
    z.write_all(h.as_bytes()).unwrap();
    for b in 0..blocks {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (i, s) in ext.sparse_mut().iter_mut().enumerate() {
            s.set_offset(((b * 21 + i) * 1024) as u64);
            s.set_length(512);
        }
        ext.set_is_extended(b + 1 < blocks);
        z.write_all(ext.as_bytes()).unwrap();
    }
    let data = vec![b'x'; 512];
    for _ in 0..regions {
        z.write_all(&data).unwrap();
    }
    z.write_all(&[0u8; 1024]).unwrap();
    refused_within_memory(
        "a sparse map of too many regions",
        z.finish().unwrap(),
        &format!("sparse map of more than {max} regions (MAX_SPARSE_ENTRIES)"),
    );
}
