//! Seed tars: every entry type a layer holds, long names, PAX records, and the four sparse
//! formats, made with the tests' tar builder (`strata_tests::targen`) and by hand where it
//! has no helper.

use strata_tests::oci::Compression;
use strata_tests::targen::{Entry, tar_of};
use tar::{EntryType, Header};

/// Ordinary layers: one of each kind of entry, owners, modes, xattrs, long names.
pub fn layers() -> Vec<Vec<u8>> {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    vec![
        tar_of(&[
            Entry::dir("etc", 0o755),
            Entry::file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n"),
            Entry::file("bin/sh", 0o4755, b"\x7fELF").owner(0, 0),
            Entry::symlink("bin/ash", "sh"),
            Entry::hardlink("bin/busybox", "bin/sh"),
            Entry::fifo("run/fifo", 0o600),
            Entry::char_device("dev/null", 0o666, 1, 3),
            Entry::block_device("dev/loop0", 0o660, 7, 0),
        ]),
        tar_of(&[
            Entry::dir("data", 0o700).owner(1000, 1000).mtime(1),
            Entry::file("data/x", 0o600, b"x")
                .xattr("user.comment", b"hello")
                .xattr("security.capability", b"\x01\x00\x00\x02"),
            Entry::dir("data/sub", 0o755).xattr("trusted.overlay.opaque", b"y"),
        ]),
        tar_of(&[
            Entry::file(&long, 0o644, b"a long name"),
            Entry::symlink("s", &"t".repeat(200)),
        ]),
        tar_of(&[
            Entry::whiteout("etc/passwd"),
            Entry::opaque("data"),
            Entry::file(".wh..wh.plnk/1", 0o644, b""),
            Entry::dir(".", 0o755),
        ]),
        pax_tar(),
        gnu_sparse(),
        pax_sparse("0.0"),
        pax_sparse("0.1"),
        pax_sparse("1.0"),
    ]
}

/// A tar whose entry carries PAX `path`, `linkpath`, `size`, `uid`, `gid` and `mtime`.
fn pax_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("path", b"pax/named/by/record".as_slice()),
        ("uid", b"4242"),
        ("gid", b"4343"),
        ("mtime", b"1600000000.123456789"),
        ("SCHILY.xattr.user.k", b"v"),
    ])
    .expect("pax");
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(5);
    h.set_path("short").expect("path");
    h.set_cksum();
    b.append(&h, b"hello".as_slice()).expect("entry");
    b.append_pax_extensions([("linkpath", b"pax/named/by/record".as_slice())])
        .expect("pax");
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_path("link").expect("path");
    h.set_cksum();
    b.append(&h, std::io::empty()).expect("entry");
    b.into_inner().expect("tar")
}

fn finish(mut tar: Vec<u8>) -> Vec<u8> {
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// An old GNU sparse entry (`S`): two regions in the header, a third in an extension block.
fn gnu_sparse() -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(3 * 512);
    let gnu = h.as_gnu_mut().expect("gnu");
    gnu.name[..6].copy_from_slice(b"sparse");
    gnu.set_real_size(1 << 20);
    gnu.sparse[0].set_offset(0);
    gnu.sparse[0].set_length(512);
    gnu.sparse[1].set_offset(8192);
    gnu.sparse[1].set_length(512);
    gnu.isextended[0] = 1;
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.sparse[0].set_offset(65536);
    ext.sparse[0].set_length(512);
    tar.extend_from_slice(ext.as_bytes());
    tar.extend(std::iter::repeat_n(b'z', 3 * 512));
    finish(tar)
}

/// A PAX sparse entry of format `version` (0.0, 0.1 or 1.0), as GNU tar writes them.
fn pax_sparse(version: &str) -> Vec<u8> {
    let regions = [(0u64, 100u64), (4096, 100), (10000, 0)];
    let data: u64 = regions.iter().map(|r| r.1).sum();
    let mut records: Vec<(String, String)> = Vec::new();
    let mut body = Vec::new();
    match version {
        "0.0" => {
            records.push(("GNU.sparse.size".into(), "10000".into()));
            for (o, l) in regions {
                records.push(("GNU.sparse.offset".into(), o.to_string()));
                records.push(("GNU.sparse.numbytes".into(), l.to_string()));
            }
        }
        "0.1" => {
            records.push(("GNU.sparse.size".into(), "10000".into()));
            let map: Vec<String> = regions
                .iter()
                .flat_map(|(o, l)| [o.to_string(), l.to_string()])
                .collect();
            records.push(("GNU.sparse.map".into(), map.join(",")));
            records.push(("GNU.sparse.name".into(), "sparse-0.1".into()));
        }
        _ => {
            records.push(("GNU.sparse.major".into(), "1".into()));
            records.push(("GNU.sparse.minor".into(), "0".into()));
            records.push(("GNU.sparse.realsize".into(), "10000".into()));
            records.push(("GNU.sparse.name".into(), "sparse-1.0".into()));
            let mut map = format!("{}\n", regions.len());
            for (o, l) in regions {
                map.push_str(&format!("{o}\n{l}\n"));
            }
            body.extend_from_slice(map.as_bytes());
            body.resize(body.len().div_ceil(512) * 512, 0);
        }
    }
    body.extend(std::iter::repeat_n(b'q', data as usize));
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
        .expect("pax");
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(body.len() as u64);
    h.set_path("GNUSparseFile.0/sparse").expect("path");
    h.set_cksum();
    b.append(&h, body.as_slice()).expect("entry");
    b.into_inner().expect("tar")
}

/// The first layer, compressed both ways apply reads.
pub fn compressed() -> Vec<Vec<u8>> {
    let tar = layers().remove(0);
    vec![
        Compression::Gzip.compress(&tar),
        Compression::Zstd.compress(&tar),
    ]
}
