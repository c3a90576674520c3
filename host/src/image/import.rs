//! `Strata::import_image`: an image's new layers applied in chain order, all or nothing.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::source::ImageSource;
use super::stream::{self, BlobStream, Expected};
use super::{ImageError, LayerBlob, ResolvedImage, resolve};
use crate::layers::{LayerError, PendingLayers, Strata};
use crate::store::{Image, NewImage, NewLayer, StoreError};

/// What the caller asks of an import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Names for the image; when empty, the names the image carries.
    pub names: Vec<String>,
}

/// Counters a progress display reads while an import runs.
#[derive(Debug, Default)]
pub struct ImportProgress {
    /// Bytes of the new layers' blobs, and how many have been read.
    pub bytes_total: AtomicU64,
    pub bytes_read: Arc<AtomicU64>,
    pub layers_total: AtomicUsize,
    pub layers_done: AtomicUsize,
    /// Layers found in the store already.
    pub layers_reused: AtomicUsize,
}

/// One layer of an imported image.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportedLayer {
    /// The layer id: the chain ID's hex.
    pub id: String,
    pub diff_id: String,
    pub blob: String,
    /// Already in the store: not read, not applied.
    pub reused: bool,
    /// Bytes of the blob as stored in the image, and of the uncompressed tar (new layers).
    pub compressed_size: Option<u64>,
    pub uncompressed_size: Option<u64>,
}

/// What an import did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportReport {
    pub image: Image,
    /// False when the image was in the store already (only names may have been added).
    pub new_image: bool,
    pub layers: Vec<ImportedLayer>,
    /// Names taken over from other images: (name, image it was on).
    pub moved_names: Vec<(String, String)>,
    /// Blob bytes read.
    pub bytes_read: u64,
}

impl Strata {
    /// Refuses, before anything is written, an image deeper than the driver can mount a
    /// container on ([`crate::mount::max_image_depth`]; a driver without a limit passes).
    fn check_image_depth(&self, image: &ResolvedImage) -> Result<(), ImageError> {
        // The host's identity of the driver, not the name it reports of itself.
        let driver = self.driver().name();
        match crate::mount::max_image_depth(driver) {
            Some(max) if image.layers.len() > max => Err(ImageError::Unsupported(format!(
                "the image has {} layers; the {driver} driver mounts a container on an image \
                 of at most {max} layers; nothing was imported",
                image.layers.len()
            ))),
            _ => Ok(()),
        }
    }
}

/// Blobs read at once: the one being applied and those decompressed ahead.
fn streams_in_flight() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

impl Strata {
    /// Imports the image at `path` (an OCI layout directory, an OCI archive or a `docker
    /// save` archive). Layers already in the store are reused; the rest are applied in
    /// chain order. On failure the store is left as it was.
    pub fn import_image(
        &self,
        path: &Path,
        options: &ImportOptions,
        progress: &ImportProgress,
    ) -> Result<ImportReport, ImageError> {
        let source = ImageSource::open(path)?;
        let image = resolve(&source)?;
        let names = if options.names.is_empty() {
            image.names.clone()
        } else {
            options.names.clone()
        };
        for n in &names {
            crate::store::validate_image_name(n)?;
        }
        self.check_image_depth(&image)?;
        let store = self.store();
        let _lock = store.lock_exclusive()?;
        let mut all = self.reusable_layers(&image)?;
        let reused = all.len();
        // Every new blob is there and has its size before anything is written.
        let mut total = 0u64;
        for blob in &image.layers[reused..] {
            let f = source.open_file(&blob.file)?;
            total += f.size;
        }
        progress.bytes_total.store(total, Ordering::Relaxed);
        progress
            .layers_total
            .store(image.layers.len(), Ordering::Relaxed);
        progress.layers_reused.store(reused, Ordering::Relaxed);
        progress.layers_done.store(reused, Ordering::Relaxed);
        // The new layers stay incomplete until the image is recorded; on any failure the
        // guard removes them, top first.
        let mut created = PendingLayers::new(self)?;
        let layers = self.apply_new_layers(&source, &image, reused, progress, &mut created)?;
        all.extend(layers);
        let size = all.iter().filter_map(|l| l.uncompressed_size).sum::<u64>();
        let new_image = store.image(image.id.hex()).is_err();
        let record = NewImage {
            id: image.id.hex().to_string(),
            names,
            layers: image
                .layers
                .iter()
                .map(|l| l.chain_id.hex().to_string())
                .collect(),
            manifest_digest: image.manifest_digest.to_string(),
            manifest: image.manifest.clone(),
            config: image.config.clone(),
            size,
        };
        let moved_names = store.commit_image(&record, created.ids())?;
        created.keep();
        Ok(ImportReport {
            image: store.image(image.id.hex())?,
            new_image,
            layers: all,
            moved_names,
            bytes_read: progress.bytes_read.load(Ordering::Relaxed),
        })
    }

    /// The image's layers, from the bottom, that are in the store already. A layer with the
    /// chain ID's name must be complete, on the expected parent and (when it recorded one)
    /// of the same diff ID; anything else is refused rather than reused.
    fn reusable_layers(&self, image: &ResolvedImage) -> Result<Vec<ImportedLayer>, ImageError> {
        let mut parent: Option<String> = None;
        let mut reused = Vec::new();
        for (i, blob) in image.layers.iter().enumerate() {
            let id = blob.chain_id.hex();
            let layer = match self.store().get(id) {
                Ok(l) => l,
                Err(StoreError::NotFound(_)) => return Ok(reused),
                Err(e) => return Err(e.into()),
            };
            let conflict = |why: String| {
                ImageError::Unsupported(format!(
                    "layer {id} (chain ID of layer {i}) is in the store but {why}; remove it \
                     with `strata layer rm {id}` to import this image"
                ))
            };
            if layer.id != id {
                return Err(conflict(format!("as a name of layer {}", layer.id)));
            }
            if layer.incomplete {
                return Err(conflict("incomplete (left by a crash)".into()));
            }
            if layer.parent != parent {
                return Err(conflict(format!(
                    "its parent is {}",
                    layer.parent.as_deref().unwrap_or("none")
                )));
            }
            if let Some(d) = &layer.uncompressed_digest
                && d != blob.diff_id.as_str()
            {
                return Err(conflict(format!("its diff ID is {d}")));
            }
            parent = Some(layer.id.clone());
            reused.push(ImportedLayer {
                id: layer.id,
                diff_id: blob.diff_id.to_string(),
                blob: blob.file.clone(),
                reused: true,
                compressed_size: layer.compressed_size,
                uncompressed_size: layer.uncompressed_size,
            });
        }
        Ok(reused)
    }

    fn apply_new_layers(
        &self,
        source: &ImageSource,
        image: &ResolvedImage,
        first: usize,
        progress: &ImportProgress,
        created: &mut PendingLayers<'_>,
    ) -> Result<Vec<ImportedLayer>, ImageError> {
        let pending: Vec<(usize, &LayerBlob)> =
            image.layers.iter().enumerate().skip(first).collect();
        let mut next = 0;
        let mut streams: VecDeque<BlobStream> = VecDeque::new();
        let mut out = Vec::new();
        let result = (|| {
            for (at, &(index, blob)) in pending.iter().enumerate() {
                while next < pending.len() && (streams.len() < streams_in_flight() || next <= at) {
                    let (i, b) = pending[next];
                    let file = source.open_file(&b.file)?;
                    let expected = Expected {
                        name: format!("{} ({})", b.file, i),
                        digest: b.digest.clone(),
                        size: b.size,
                        diff_id: b.diff_id.clone(),
                    };
                    streams.push_back(stream::spawn(file, expected, progress.bytes_read.clone()));
                    next += 1;
                }
                let blob_stream = streams.pop_front().expect("a stream per pending layer");
                // The parent is the layer below, reused or made by this import.
                let parent = index
                    .checked_sub(1)
                    .map(|below| image.layers[below].chain_id.hex().to_string());
                out.push(self.apply_one(index, blob, parent, blob_stream, created)?);
                progress.layers_done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })();
        // Dropping the readers stops the threads still running; wait for them.
        for s in streams {
            drop(s.reader);
            let _ = s.thread.join();
        }
        result.map(|()| out)
    }

    fn apply_one(
        &self,
        index: usize,
        blob: &LayerBlob,
        parent: Option<String>,
        stream: BlobStream,
        created: &mut PendingLayers<'_>,
    ) -> Result<ImportedLayer, ImageError> {
        let id = created.create(
            NewLayer {
                id: Some(blob.chain_id.hex().to_string()),
                parent: parent.clone(),
                parent_may_be_incomplete: true,
                ..Default::default()
            },
            parent.as_deref(),
            &[],
        )?;
        let BlobStream { reader, thread } = stream;
        let applied = self
            .driver()
            .apply_diff(&id, parent.as_deref(), Box::new(reader));
        let digests = thread
            .join()
            .unwrap_or_else(|_| Err("the blob's reader panicked".into()));
        let digests = match (applied, digests) {
            (_, Err(reason)) => return Err(ImageError::Blob { index, reason }),
            (Err(e), Ok(_)) => {
                return Err(LayerError::ApplyFailed {
                    id,
                    cause: Box::new(e.into()),
                }
                .into());
            }
            (Ok(_), Ok(d)) => d,
        };
        self.store().set_sizes(
            &id,
            Some(digests.compressed.as_str()),
            Some(digests.compressed_size),
            Some(digests.uncompressed.as_str()),
            Some(digests.uncompressed_size),
        )?;
        Ok(ImportedLayer {
            id,
            diff_id: blob.diff_id.to_string(),
            blob: blob.file.clone(),
            reused: false,
            compressed_size: Some(digests.compressed_size),
            uncompressed_size: Some(digests.uncompressed_size),
        })
    }
}
