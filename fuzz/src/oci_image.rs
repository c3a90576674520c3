//! `oci_image`: the documents of an image — an OCI layout's `oci-layout`, `index.json`,
//! nested indexes, manifests and config, or a `docker save` archive's `manifest.json` and
//! config — read by import's `resolve`, from a layout directory or from an archive.
//!
//! Input: a mode byte, then documents separated by a line `@@`. Mode bit 0: an archive (a tar
//! of the files) instead of a layout directory; bit 1: `docker save` (the first document is
//! `manifest.json`) instead of OCI (`index.json`); bit 2 (OCI): the last document is
//! `oci-layout`; bit 3: the rest of the input is an archive as it is, not documents. Every
//! other document is a blob, stored under its own digest. So that the
//! fuzzer can point a document at another despite digests, a document may name a later one,
//! `N` its position: `#N` becomes its digest (`sha256:…`), `$N` its size and `%N` its blob
//! path (`blobs/sha256/…`); documents are finished from the last one up.
//!
//! Checks, besides "no panic": an image that resolves has as many layers as diff IDs, at
//! most `MAX_IMAGE_LAYERS`, each layer's chain ID as the spec computes it, and its id is its
//! config's digest; a refusal's message can be made (it carries the image's own text raw:
//! the CLI escapes every error it prints, `text::escape`).

use std::io::Write;

use sha2::Digest as _;
use strata_core::image::source::ImageSource;
use strata_core::image::spec::{Digest, chain_ids};
use strata_core::image::{MAX_IMAGE_LAYERS, resolve};

/// Documents one input may hold.
const MAX_DOCUMENTS: usize = 9;
const SEPARATOR: &[u8] = b"\n@@\n";

fn split(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < MAX_DOCUMENTS {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(i) => {
                out.push(rest[..i].to_vec());
                rest = &rest[i + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest.to_vec());
    out
}

fn hex_of(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Replaces `#N`, `$N` and `%N` (N a later document) in `doc`.
fn substitute(doc: &[u8], me: usize, done: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(doc.len());
    let mut i = 0;
    while i < doc.len() {
        let c = doc[i];
        if matches!(c, b'#' | b'$' | b'%') && i + 1 < doc.len() && doc[i + 1].is_ascii_digit() {
            let n = usize::from(doc[i + 1] - b'0');
            if n > me
                && let Some(Some(target)) = done.get(n)
            {
                match c {
                    b'#' => out.extend_from_slice(format!("sha256:{}", hex_of(target)).as_bytes()),
                    b'$' => out.extend_from_slice(target.len().to_string().as_bytes()),
                    _ => {
                        out.extend_from_slice(format!("blobs/sha256/{}", hex_of(target)).as_bytes())
                    }
                }
                i += 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The files of the image the input describes: `(name, bytes)`.
fn files(data: &[u8]) -> (u8, Vec<(String, Vec<u8>)>) {
    let Some((&mode, rest)) = data.split_first() else {
        return (0, Vec::new());
    };
    let docs = split(rest);
    let mut done: Vec<Option<Vec<u8>>> = vec![None; docs.len()];
    for i in (0..docs.len()).rev() {
        done[i] = Some(substitute(&docs[i], i, &done));
    }
    let done: Vec<Vec<u8>> = done.into_iter().map(Option::unwrap_or_default).collect();
    let docker = mode & 2 != 0;
    let layout_file = !docker && mode & 4 != 0 && done.len() > 1;
    let blobs_end = if layout_file {
        done.len() - 1
    } else {
        done.len()
    };
    let mut files = vec![(
        if docker {
            "manifest.json"
        } else {
            "index.json"
        }
        .to_string(),
        done[0].clone(),
    )];
    for d in &done[1..blobs_end] {
        files.push((format!("blobs/sha256/{}", hex_of(d)), d.clone()));
    }
    if layout_file {
        files.push(("oci-layout".into(), done[done.len() - 1].clone()));
    }
    (mode, files)
}

pub fn run(data: &[u8]) {
    let _ = resolved(data);
}

/// Writes the image the input describes and resolves it, checking the result; `None` for an
/// input that describes nothing, else whether it resolved.
pub(crate) fn resolved(data: &[u8]) -> Option<bool> {
    let (mode, files) = files(data);
    if files.is_empty() {
        return None;
    }
    let scratch = crate::scratch("oci_image");
    crate::remove_tree(&scratch);
    std::fs::create_dir_all(scratch.join("layout/blobs/sha256")).expect("scratch");
    let path = if mode & 8 != 0 {
        // The rest of the input is the archive itself, as a stranger hands it over.
        let path = scratch.join("raw.tar");
        std::fs::write(&path, &data[1..]).expect("scratch");
        path
    } else if mode & 1 != 0 {
        let path = scratch.join("image.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).expect("scratch"));
        for (name, bytes) in &files {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, name, bytes.as_slice())
                .expect("scratch");
        }
        b.into_inner().expect("scratch").flush().expect("scratch");
        path
    } else {
        let dir = scratch.join("layout");
        for (name, bytes) in &files {
            // Two documents alike are one blob.
            std::fs::write(dir.join(name), bytes).expect("scratch");
        }
        dir
    };
    let src = match ImageSource::open(&path) {
        Ok(src) => src,
        Err(e) => {
            check_message(&e.to_string());
            return Some(false);
        }
    };
    match resolve(&src) {
        Ok(image) => {
            // Read as the host reads it (other fields ignored, not validated).
            #[derive(serde::Deserialize)]
            struct Config {
                rootfs: RootFs,
            }
            #[derive(serde::Deserialize)]
            struct RootFs {
                diff_ids: Vec<Digest>,
            }
            let config: Config =
                serde_json::from_slice(&image.config).expect("a resolved config parses");
            let diff_ids = config.rootfs.diff_ids;
            assert_eq!(image.layers.len(), diff_ids.len());
            assert!(image.layers.len() <= MAX_IMAGE_LAYERS);
            let chain = chain_ids(&diff_ids);
            for (i, l) in image.layers.iter().enumerate() {
                assert_eq!(l.diff_id, diff_ids[i]);
                assert_eq!(l.chain_id, chain[i]);
            }
            assert_eq!(image.id, Digest::of(&image.config));
            Some(true)
        }
        Err(e) => {
            check_message(&e.to_string());
            Some(false)
        }
    }
}

fn check_message(message: &str) {
    assert!(!message.is_empty());
}

pub fn seeds() -> Vec<Vec<u8>> {
    let layer =
        strata_tests::targen::tar_of(&[strata_tests::targen::Entry::file("hello", 0o644, b"hi")]);
    let image = strata_tests::oci::build(
        &[layer.clone(), layer],
        strata_tests::oci::Compression::Gzip,
        "example.com/app:1",
    );
    let blob = |d: &str| {
        image
            .blobs
            .iter()
            .find(|(digest, _)| digest == d)
            .expect("a blob")
            .1
            .clone()
    };
    // The built image's documents, each reference to the next turned into tokens.
    let tokenize = |doc: Vec<u8>, target: &str, n: usize, size: usize| -> Vec<u8> {
        String::from_utf8(doc)
            .expect("json")
            .replace(target, &format!("#{n}"))
            .replace(&format!("\"size\":{size}"), &format!("\"size\":${n}"))
            .into_bytes()
    };
    let config = blob(&image.config_digest);
    let manifest_doc = blob(&image.manifest_digest);
    // The manifest pointing at document `n` as its config; the index at `n` as its manifest.
    let manifest = |n| tokenize(manifest_doc.clone(), &image.config_digest, n, config.len());
    let index = |n| {
        tokenize(
            image.index.clone(),
            &image.manifest_digest,
            n,
            manifest_doc.len(),
        )
    };
    let join = |mode: u8, docs: &[&[u8]]| -> Vec<u8> {
        let mut v = vec![mode];
        v.extend(docs.join(SEPARATOR));
        v
    };
    let layout_file: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let nested_index = br##"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"#1","size":$1}]}"##;
    let multi = br##"{"schemaVersion":2,"manifests":[
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"#1","size":$1,"platform":{"architecture":"arm64","os":"linux"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"#1","size":$1,"platform":{"architecture":"amd64","os":"linux","variant":"v2"},"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}"##;
    let docker_manifest =
        br#"[{"Config":"%1","RepoTags":["example.com/app:1"],"Layers":["blobs/sha256/0000000000000000000000000000000000000000000000000000000000000000","x/layer.tar"]}]"#;
    let mut out = Vec::new();
    for mode in [0u8, 1, 4, 5] {
        out.push(join(mode, &[&index(1), &manifest(2), &config, layout_file]));
    }
    out.push(join(0, &[nested_index, &index(2), &manifest(3), &config]));
    out.push(join(1, &[multi, &manifest(2), &config]));
    out.push(join(2, &[docker_manifest, &config]));
    out.push(join(3, &[docker_manifest, &config]));
    // Raw archives: the OCI and docker ones the tests write.
    let tmp = crate::scratch("oci_image_seeds");
    std::fs::create_dir_all(&tmp).expect("scratch");
    for (i, write) in [
        strata_tests::oci::write_oci_archive as fn(&_, &_),
        strata_tests::oci::write_docker_archive,
    ]
    .into_iter()
    .enumerate()
    {
        let path = tmp.join(format!("{i}.tar"));
        write(&image, &path);
        let mut v = vec![8u8];
        v.extend(std::fs::read(&path).expect("scratch"));
        out.push(v);
    }
    crate::remove_tree(&tmp);
    out
}
