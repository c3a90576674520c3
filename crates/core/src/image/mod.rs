//! Container images: `strata image import` and the containers made on images.
//!
//! Import reads an OCI image layout directory, an OCI archive or a `docker save` archive in
//! place ([`source`]), follows index → manifest → config ([`resolve`]), and names each layer
//! by its chain ID, so a layer already in the store — from an earlier import or from another
//! image with the same base — is reused, not unpacked again. New layers stream from the
//! image through a thread per blob that hashes, decompresses and hashes again ([`stream`]);
//! they are applied in chain order while the blobs above are decompressed ahead.
//!
//! All layers an import makes stay *incomplete* until the image is recorded in the same
//! transaction that completes them. A failed import removes them; a crashed one leaves
//! incomplete layers that the next open of the store removes. Either way the store is as it
//! was before the import.

mod containers;
mod import;
pub mod source;
pub mod spec;
pub mod stream;

use std::path::PathBuf;

pub use containers::{CommittedLayer, ContainerOptions, RemovedImage};
pub use import::{ImportOptions, ImportProgress, ImportReport, ImportedLayer};

use crate::layers::LayerError;
use crate::store::StoreError;
use source::ImageSource;
use spec::{
    Descriptor, Digest, DockerEntry, ImageConfig, Index, MAX_DOCUMENT_SIZE, MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Manifest, REF_NAME_ANNOTATION,
};

/// Layers one image may have.
pub const MAX_IMAGE_LAYERS: usize = 1000;
/// Indexes followed from `index.json` to a manifest (an index may point at an index).
pub const MAX_INDEX_DEPTH: usize = 4;

/// A path for a message: quoted when it holds anything unusual (as `ls` quotes), so that a
/// name with a newline cannot forge a line of its own.
fn shown(path: &std::path::Path) -> String {
    crate::text::quote_path(&path.to_string_lossy()).into_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("{}: {reason}", shown(path))]
    Format { path: PathBuf, reason: String },
    #[error("{}: {name} is missing (truncated or incomplete image?)", shown(image))]
    Missing { image: PathBuf, name: String },
    /// A file of the image that cannot be opened: a FIFO or a device, a symlink, a name
    /// through a symlinked directory.
    #[error("{}: {name}: {reason}", shown(image))]
    Open {
        image: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{name}: at least {size} bytes, more than the {cap} a document may have")]
    TooLarge { name: String, size: u64, cap: u64 },
    #[error("{name}: bad JSON: {cause}")]
    Json {
        name: String,
        cause: serde_json::Error,
    },
    #[error("{name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("layer {index} of the image: {reason}; nothing was imported")]
    Blob { index: usize, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// One layer of an image, as import needs it.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// The file holding the blob, in the layout or archive.
    pub file: String,
    /// The blob's digest and size, when the image says (a `docker save` archive does not).
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

/// An image read from its source, every document checked against its digest.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The config's digest: the image id.
    pub id: Digest,
    /// Names the image carries (the layout's ref name, `docker save`'s tags).
    pub names: Vec<String>,
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layers: Vec<LayerBlob>,
}

fn parse<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|cause| ImageError::Json {
        name: name.to_string(),
        cause,
    })
}

fn blob_file(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Reads the document a descriptor points at, checking its size and digest.
fn read_blob(src: &ImageSource, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let name = blob_file(&d.digest);
    if d.size > MAX_DOCUMENT_SIZE {
        return Err(ImageError::TooLarge {
            name,
            size: d.size,
            cap: MAX_DOCUMENT_SIZE,
        });
    }
    let bytes = src.read_document(&name, MAX_DOCUMENT_SIZE)?;
    if bytes.len() as u64 != d.size {
        return Err(ImageError::Invalid {
            name,
            reason: format!(
                "{} bytes, but the descriptor says {} (truncated or replaced)",
                bytes.len(),
                d.size
            ),
        });
    }
    let actual = Digest::of(&bytes);
    if actual != d.digest {
        return Err(ImageError::Invalid {
            name,
            reason: format!("digest mismatch: expected {}, found {actual}", d.digest),
        });
    }
    Ok(bytes)
}

/// Reads an image from its source: the format is told by its files (`index.json`: OCI;
/// `manifest.json` alone: `docker save`).
pub fn resolve(src: &ImageSource) -> Result<ResolvedImage, ImageError> {
    if src.exists("index.json") {
        resolve_oci(src)
    } else if src.exists("manifest.json") {
        resolve_docker(src)
    } else {
        Err(ImageError::Format {
            path: src.path().to_path_buf(),
            reason: "not an image: no index.json (OCI layout) or manifest.json (docker save)"
                .into(),
        })
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// Picks the manifest to import from an index: the only one, or the one for this host's
/// platform.
fn pick<'a>(index: &'a Index, name: &str) -> Result<&'a Descriptor, ImageError> {
    let images: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.media_type.is_empty()
                || is_index(&d.media_type)
                || d.media_type == MEDIA_OCI_MANIFEST
                || d.media_type == MEDIA_DOCKER_MANIFEST
        })
        .collect();
    if let [one] = images.as_slice() {
        return Ok(one);
    }
    if images.is_empty() {
        return Err(ImageError::Invalid {
            name: name.into(),
            reason: "lists no image manifest".into(),
        });
    }
    let (os, arch) = spec::host_platform();
    let for_host: Vec<&&Descriptor> = images
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .collect();
    match for_host.first() {
        Some(d) => Ok(d),
        None => {
            let listed: Vec<String> = images
                .iter()
                .map(
                    |d| match (&d.platform, d.annotations.get(REF_NAME_ANNOTATION)) {
                        (Some(p), _) => format!("{}/{}", p.os, p.architecture),
                        (None, Some(r)) => r.clone(),
                        (None, None) => d.digest.to_string(),
                    },
                )
                .collect();
            Err(ImageError::Unsupported(format!(
                "{name} lists {} images and none is for {os}/{arch}: {}; Strata imports one \
                 image per layout",
                images.len(),
                listed.join(", ")
            )))
        }
    }
}

fn resolve_oci(src: &ImageSource) -> Result<ResolvedImage, ImageError> {
    if src.exists("oci-layout") {
        #[derive(serde::Deserialize)]
        struct Layout {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let layout: Layout = parse(
            "oci-layout",
            &src.read_document("oci-layout", MAX_DOCUMENT_SIZE)?,
        )?;
        if !layout.version.starts_with("1.") {
            return Err(ImageError::Unsupported(format!(
                "OCI layout version {} (Strata reads 1.x)",
                layout.version
            )));
        }
    }
    let mut index: Index = parse(
        "index.json",
        &src.read_document("index.json", MAX_DOCUMENT_SIZE)?,
    )?;
    let mut index_name = "index.json".to_string();
    let mut names = Vec::new();
    let mut depth = 0;
    let (manifest_digest, manifest_bytes) = loop {
        let d = pick(&index, &index_name)?.clone();
        // A ref name is often only a tag (`latest`, `12`): as an image name it would say
        // nothing and collide between images, so only full references (`debian:12`,
        // `registry.example/app@sha256:…`) name the image.
        if depth == 0
            && let Some(r) = d.annotations.get(REF_NAME_ANNOTATION)
            && r.contains([':', '/', '@'])
        {
            names.push(r.clone());
        }
        let bytes = read_blob(src, &d)?;
        if !is_index(&d.media_type) {
            break (d.digest, bytes);
        }
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            return Err(ImageError::Unsupported(format!(
                "indexes nested deeper than {MAX_INDEX_DEPTH}"
            )));
        }
        index_name = blob_file(&d.digest);
        index = parse(&index_name, &bytes)?;
    };
    let manifest_name = blob_file(&manifest_digest);
    let manifest: Manifest = parse(&manifest_name, &manifest_bytes)?;
    if manifest.schema_version != 2 {
        return Err(ImageError::Unsupported(format!(
            "{manifest_name}: manifest schema version {} (Strata reads 2)",
            manifest.schema_version
        )));
    }
    let config = read_blob(src, &manifest.config)?;
    let config_name = blob_file(&manifest.config.digest);
    let parsed: ImageConfig = parse(&config_name, &config)?;
    check_config(&config_name, &parsed, manifest.layers.len())?;
    let chain = spec::chain_ids(&parsed.rootfs.diff_ids);
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, d) in manifest.layers.iter().enumerate() {
        if !spec::layer_media_type_ok(&d.media_type) {
            return Err(ImageError::Unsupported(format!(
                "layer {i} ({}) has media type `{}`, which is not a layer tar Strata can apply",
                d.digest, d.media_type
            )));
        }
        layers.push(LayerBlob {
            file: blob_file(&d.digest),
            digest: Some(d.digest.clone()),
            size: Some(d.size),
            diff_id: parsed.rootfs.diff_ids[i].clone(),
            chain_id: chain[i].clone(),
        });
    }
    Ok(ResolvedImage {
        id: manifest.config.digest.clone(),
        names,
        manifest_digest,
        manifest: manifest_bytes,
        config,
        layers,
    })
}

fn check_config(name: &str, config: &ImageConfig, layers: usize) -> Result<(), ImageError> {
    let invalid = |reason: String| ImageError::Invalid {
        name: name.to_string(),
        reason,
    };
    if config.rootfs.kind != "layers" {
        return Err(invalid(format!(
            "rootfs type `{}` (expected `layers`)",
            config.rootfs.kind
        )));
    }
    if !config.os.is_empty() && config.os != "linux" {
        return Err(ImageError::Unsupported(format!(
            "{name}: the image is for {}, not linux",
            config.os
        )));
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(invalid(format!(
            "{} diff IDs for {layers} layers",
            config.rootfs.diff_ids.len()
        )));
    }
    if layers > MAX_IMAGE_LAYERS {
        return Err(invalid(format!(
            "{layers} layers; at most {MAX_IMAGE_LAYERS} are imported"
        )));
    }
    Ok(())
}

fn resolve_docker(src: &ImageSource) -> Result<ResolvedImage, ImageError> {
    let manifest = src.read_document("manifest.json", MAX_DOCUMENT_SIZE)?;
    let entries: Vec<DockerEntry> = parse("manifest.json", &manifest)?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => {
            return Err(ImageError::Invalid {
                name: "manifest.json".into(),
                reason: "lists no image".into(),
            });
        }
        many => {
            return Err(ImageError::Unsupported(format!(
                "manifest.json lists {} images; Strata imports one image per archive",
                many.len()
            )));
        }
    };
    let config = src.read_document(&entry.config, MAX_DOCUMENT_SIZE)?;
    let id = Digest::of(&config);
    // `docker save` names the config after its digest: a config that does not hash to its
    // name was damaged.
    let stem = entry
        .config
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".json");
    if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) && stem != id.hex() {
        return Err(ImageError::Invalid {
            name: entry.config.clone(),
            reason: format!("digest mismatch: named for sha256:{stem}, found {id}"),
        });
    }
    let parsed: ImageConfig = parse(&entry.config, &config)?;
    check_config(&entry.config, &parsed, entry.layers.len())?;
    let chain = spec::chain_ids(&parsed.rootfs.diff_ids);
    let layers = entry
        .layers
        .iter()
        .enumerate()
        .map(|(i, file)| {
            // Newer docker writes layers as `blobs/sha256/<hex>`: that name is a digest.
            let digest = file
                .strip_prefix("blobs/sha256/")
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok());
            LayerBlob {
                file: file.clone(),
                digest,
                size: None,
                diff_id: parsed.rootfs.diff_ids[i].clone(),
                chain_id: chain[i].clone(),
            }
        })
        .collect();
    let entry_json = serde_json::to_vec(&serde_json::json!({
        "Config": entry.config,
        "RepoTags": entry.repo_tags,
        "Layers": entry.layers,
    }))
    .map_err(|cause| ImageError::Json {
        name: "manifest.json".into(),
        cause,
    })?;
    Ok(ResolvedImage {
        id,
        names: entry.repo_tags.clone().unwrap_or_default(),
        manifest_digest: Digest::of(&entry_json),
        manifest: entry_json,
        config,
        layers,
    })
}
