//! `tar_reader`: the layer tar reader apply uses (headers, GNU long names and links, PAX
//! records, the four sparse formats), on the bytes as given and, when they start with gzip's
//! or zstd's magic, through the decompression apply puts in front of it.
//!
//! Checks, besides "no panic": every sparse map the reader returns is what apply may trust
//! (regions ascending, apart, non-empty, within the file, at most `MAX_SPARSE_ENTRIES`), and
//! the content it hands out for a sparse entry is exactly the regions' data.

use std::io::Cursor;

use strata_core::archive::{ArchiveError, MAX_SPARSE_ENTRIES, decompressed};
use strata_core::fuzzing::{ReadEntry, read_tar};

pub fn run(data: &[u8]) {
    check(read_tar(data));
    let compressed = data.starts_with(&[0x1f, 0x8b]) || data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if compressed && let Ok(r) = decompressed(Box::new(Cursor::new(data.to_vec()))) {
        check(read_tar(r));
    }
}

fn check(result: Result<Vec<ReadEntry>, ArchiveError>) {
    let entries = match result {
        Ok(entries) => entries,
        Err(e) => {
            // Messages are made for every refusal: they must not panic either.
            let _ = e.to_string();
            return;
        }
    };
    for e in entries {
        let Some(map) = &e.sparse else { continue };
        assert!(map.regions.len() <= MAX_SPARSE_ENTRIES, "{e:?}");
        let mut end = 0u64;
        let mut data = 0u64;
        for &(offset, len) in &map.regions {
            assert!(len > 0, "empty region in {e:?}");
            assert!(offset >= end, "regions out of order in {e:?}");
            end = offset.checked_add(len).expect("region end overflows");
            data += len;
        }
        assert!(end <= map.real_size, "region beyond the file in {e:?}");
        assert_eq!(data, e.content, "sparse content is not the regions' data");
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = crate::tars::layers();
    out.extend(crate::tars::compressed());
    out
}
