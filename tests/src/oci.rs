//! Writing container images from layer tars, in the three forms `strata image import` reads:
//! an OCI image layout directory, an OCI archive (that layout as a tar) and a `docker save`
//! archive. Tests, the demo and the import benchmark build their images with this, so that
//! no image has to be fetched.

use std::path::Path;

use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

/// How layer blobs are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                e.write_all(tar).expect("gzip");
                e.finish().expect("gzip")
            }
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
        }
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digests of an image as written, for tests to check what the store recorded.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// `sha256:…` of the config: the image id.
    pub config_digest: String,
    pub manifest_digest: String,
    /// Digests of the (uncompressed) layer tars, bottom first.
    pub diff_ids: Vec<String>,
    /// Digests of the layer blobs as stored (compressed or not).
    pub layer_digests: Vec<String>,
    /// Chain ids, bottom first: what Strata names the layers.
    pub chain_ids: Vec<String>,
    /// Every blob: digest and bytes.
    pub blobs: Vec<(String, Vec<u8>)>,
    pub index: Vec<u8>,
    pub reference: String,
}

impl BuiltImage {
    /// The hex of chain id `i` (a Strata layer id).
    pub fn layer_id(&self, i: usize) -> String {
        self.chain_ids[i].trim_start_matches("sha256:").to_string()
    }

    pub fn image_id(&self) -> String {
        self.config_digest.trim_start_matches("sha256:").to_string()
    }
}

/// Builds the blobs of an image of `layers` (uncompressed tars, bottom first).
pub fn build(layers: &[Vec<u8>], compression: Compression, reference: &str) -> BuiltImage {
    build_claiming(layers, compression, reference, None)
}

/// As [`build`], with a config that claims `diff_ids` instead of the layers' own (a damaged
/// image whose blobs all match the manifest).
pub fn build_claiming(
    layers: &[Vec<u8>],
    compression: Compression,
    reference: &str,
    claimed_diff_ids: Option<Vec<String>>,
) -> BuiltImage {
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    let mut layer_descriptors = Vec::new();
    for tar in layers {
        diff_ids.push(sha256(tar));
        let blob = compression.compress(tar);
        let digest = sha256(&blob);
        layer_descriptors.push(serde_json::json!({
            "mediaType": compression.media_type(),
            "digest": digest,
            "size": blob.len(),
        }));
        layer_digests.push(digest.clone());
        blobs.push((digest, blob));
    }
    if let Some(claimed) = claimed_diff_ids {
        diff_ids = claimed;
    }
    let mut chain_ids: Vec<String> = Vec::new();
    for d in &diff_ids {
        let next = match chain_ids.last() {
            None => d.clone(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        chain_ids.push(next);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "strata-tests"})).collect::<Vec<_>>(),
    }))
    .expect("config json");
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layer_descriptors,
    }))
    .expect("manifest json");
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": reference },
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    }))
    .expect("index json");
    blobs.push((config_digest.clone(), config));
    blobs.push((manifest_digest.clone(), manifest));
    BuiltImage {
        config_digest,
        manifest_digest,
        diff_ids,
        layer_digests,
        chain_ids,
        blobs,
        index,
        reference: reference.to_string(),
    }
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `image` as an OCI image layout directory at `dir` (created; blobs already there
/// are kept, so several images can share one layout's blobs).
pub fn write_layout(image: &BuiltImage, dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("creating the layout");
    std::fs::write(dir.join("oci-layout"), OCI_LAYOUT).expect("oci-layout");
    std::fs::write(dir.join("index.json"), &image.index).expect("index.json");
    for (digest, bytes) in &image.blobs {
        std::fs::write(dir.join(blob_path(digest)), bytes).expect("writing a blob");
    }
}

fn append(b: &mut Builder<std::fs::File>, path: &str, bytes: &[u8]) {
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(bytes.len() as u64);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, path, bytes)
        .expect("appending to the archive");
}

/// Writes `image` as an OCI archive: the layout as one tar.
pub fn write_oci_archive(image: &BuiltImage, path: &Path) {
    let mut b = Builder::new(std::fs::File::create(path).expect("creating the archive"));
    append(&mut b, "oci-layout", OCI_LAYOUT);
    append(&mut b, "index.json", &image.index);
    for (digest, bytes) in &image.blobs {
        append(&mut b, &blob_path(digest), bytes);
    }
    b.finish().expect("finishing the archive");
}

/// Writes `image` as a `docker save` archive (the classic layout: `manifest.json`, the
/// config as `<hex>.json`, each layer as `<hex>/layer.tar`; layers as they are in `image`,
/// which is what docker writes when they are uncompressed).
pub fn write_docker_archive(image: &BuiltImage, path: &Path) {
    let mut b = Builder::new(std::fs::File::create(path).expect("creating the archive"));
    let config_name = format!("{}.json", image.image_id());
    let blob = |d: &str| {
        &image
            .blobs
            .iter()
            .find(|(digest, _)| digest == d)
            .expect("a blob of the image")
            .1
    };
    append(&mut b, &config_name, blob(&image.config_digest));
    let mut layer_names = Vec::new();
    for d in &image.layer_digests {
        let name = format!("{}/layer.tar", d.trim_start_matches("sha256:"));
        append(&mut b, &name, blob(d));
        layer_names.push(name);
    }
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [image.reference],
        "Layers": layer_names,
    }]))
    .expect("manifest.json");
    append(&mut b, "manifest.json", &manifest);
    b.finish().expect("finishing the archive");
}
