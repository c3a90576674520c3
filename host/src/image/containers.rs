//! Containers on images, and removing images: `Strata` operations that tie image, container
//! and layer records together.

use std::io::Read;

use super::ImageError;
use crate::layers::{HashingReader, LayerError, PendingLayers, Strata};
use crate::store::{Container, Image, Layer, NewContainer, NewLayer};

/// What `container create` takes besides the image.
#[derive(Clone, Debug, Default)]
pub struct ContainerOptions {
    pub names: Vec<String>,
    /// Options for the driver's `create` (e.g. `size=10G`).
    pub driver_options: Vec<(String, String)>,
}

/// What removing an image did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RemovedImage {
    pub id: String,
    /// Layers removed with it, top first.
    pub removed_layers: Vec<String>,
    /// Layers kept because another image, a container or a layer still needs them.
    pub kept_layers: Vec<String>,
}

/// A container's changes, committed as a layer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommittedLayer {
    pub layer: Layer,
    /// Bytes of file content written.
    pub size: u64,
}

impl Strata {
    pub fn images(&self) -> Result<Vec<Image>, ImageError> {
        Ok(self.store().images()?)
    }

    pub fn image(&self, id_or_name: &str) -> Result<Image, ImageError> {
        Ok(self.store().image(id_or_name)?)
    }

    /// The manifest and config an image was imported with.
    pub fn image_documents(&self, id: &str) -> Result<(Vec<u8>, Vec<u8>), ImageError> {
        Ok(self.store().image_documents(id)?)
    }

    /// Removes an image and the layers no other image, container or layer needs.
    pub fn remove_image(&self, id_or_name: &str) -> Result<RemovedImage, ImageError> {
        let store = self.store();
        let _lock = store.lock_exclusive()?;
        let image = store.image(id_or_name)?;
        let freed = store.delete_image(&image.id)?;
        for id in &freed {
            self.discard(id)?;
        }
        Ok(RemovedImage {
            kept_layers: image
                .layers
                .iter()
                .filter(|l| !freed.contains(l))
                .cloned()
                .collect(),
            id: image.id,
            removed_layers: freed,
        })
    }

    pub fn containers(&self) -> Result<Vec<Container>, ImageError> {
        Ok(self.store().containers()?)
    }

    pub fn container(&self, id_or_name: &str) -> Result<Container, ImageError> {
        Ok(self.store().container(id_or_name)?)
    }

    /// Makes a container: a read-write layer on the image's top layer.
    pub fn create_container(
        &self,
        image: &str,
        options: &ContainerOptions,
    ) -> Result<Container, ImageError> {
        let store = self.store();
        let _lock = store.lock_exclusive()?;
        let image = store.image(image)?;
        store.check_container_names(&options.names)?;
        let mut pending = PendingLayers::new(self)?;
        let layer = pending.create(
            NewLayer {
                parent: image.top_layer.clone(),
                read_write: true,
                ..Default::default()
            },
            image.top_layer.as_deref(),
            &options.driver_options,
        )?;
        let container = store.commit_container(&NewContainer {
            id: layer.clone(),
            names: options.names.clone(),
            image: image.id.clone(),
            layer,
        })?;
        pending.keep();
        Ok(container)
    }

    /// Removes a container and its layer; a mounted one only with `force` (unmounted first).
    pub fn remove_container(&self, id_or_name: &str, force: bool) -> Result<(), ImageError> {
        let c = self.store().container(id_or_name)?;
        let layer = self.store().get(&c.layer)?;
        if layer.mount_count > 0 {
            if !force {
                return Err(ImageError::Unsupported(format!(
                    "container {} is mounted; unmount it first (or remove with --force)",
                    c.id
                )));
            }
            self.unmount(&c.layer, true)?;
        }
        let store = self.store();
        let _lock = store.lock_exclusive()?;
        let layer = store.get(&c.layer)?;
        if layer.mount_count > 0 {
            return Err(ImageError::Unsupported(format!(
                "container {} was mounted again meanwhile",
                c.id
            )));
        }
        store.delete_container(&c.id)?;
        self.discard(&c.layer)?;
        Ok(())
    }

    /// Commits a container's changes (its diff against the image) as a new read-only layer
    /// on the image's top layer. The diff streams from the container's layer straight into
    /// the new one through a pipe; nothing is spooled.
    pub fn commit_container(
        &self,
        id_or_name: &str,
        names: &[String],
    ) -> Result<CommittedLayer, ImageError> {
        let store = self.store();
        let _lock = store.lock_exclusive()?;
        let c = store.container(id_or_name)?;
        let image = store.image(&c.image)?;
        let top = image.top_layer.clone();
        let diff = self
            .driver()
            .diff(&c.layer, top.as_deref())
            .map_err(LayerError::from)?;
        let mut pending = PendingLayers::new(self)?;
        let layer = pending.create(
            NewLayer {
                parent: top.clone(),
                names: names.to_vec(),
                ..Default::default()
            },
            top.as_deref(),
            &[],
        )?;
        let result = (|| -> Result<u64, ImageError> {
            let (pipe_reader, mut pipe_writer) =
                std::io::pipe().map_err(|cause| ImageError::Io {
                    what: "making a pipe".into(),
                    cause,
                })?;
            let writer = std::thread::spawn(move || {
                let r = diff.write_tar(&mut pipe_writer);
                drop(pipe_writer);
                r
            });
            let input = HashingReader::new(Box::new(pipe_reader) as Box<dyn Read + Send>);
            let tally = input.tally();
            let applied = self
                .driver()
                .apply_diff(&layer, top.as_deref(), Box::new(input));
            let written = writer.join().unwrap_or_else(|_| {
                Err(crate::archive::ArchiveError::invalid(
                    "the diff writer panicked",
                ))
            });
            let size = applied.map_err(LayerError::from)?;
            written.map_err(|cause| LayerError::Archive {
                id: c.layer.clone(),
                what: "writing its diff",
                cause: Box::new(cause),
            })?;
            let digest = tally.digest();
            store.set_sizes(&layer, None, None, Some(&digest), Some(tally.bytes()))?;
            store.finish_create(&layer)?;
            Ok(size)
        })();
        let size = result?;
        pending.keep();
        Ok(CommittedLayer {
            layer: store.get(&layer)?,
            size,
        })
    }
}
