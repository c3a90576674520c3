//! Images and containers in the layer store.
//!
//! An image is a chain of layers named by chain ID plus its manifest and config; a container
//! is a read-write layer on an image's top layer. Both are rows next to the layers, in the
//! same database, so that recording an image and marking its new layers complete is one
//! transaction: a crash before it leaves incomplete layers (removed at the next open) and no
//! image; a crash after it leaves a whole image.

use rusqlite::{OptionalExtension, params};

use super::{LayerStore, StoreError, now, validate_id};

pub(super) const SCHEMA_V3: &str = "BEGIN IMMEDIATE;
     CREATE TABLE IF NOT EXISTS images (
        id TEXT PRIMARY KEY,
        top_layer TEXT REFERENCES layers(id),
        manifest_digest TEXT NOT NULL,
        manifest BLOB NOT NULL,
        config BLOB NOT NULL,
        size INTEGER NOT NULL,
        created INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS image_names (
        name TEXT PRIMARY KEY,
        image TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
     );
     CREATE TABLE IF NOT EXISTS image_layers (
        image TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        layer TEXT NOT NULL REFERENCES layers(id),
        PRIMARY KEY (image, position)
     );
     CREATE INDEX IF NOT EXISTS image_layers_layer ON image_layers(layer);
     CREATE TABLE IF NOT EXISTS containers (
        id TEXT PRIMARY KEY,
        image TEXT NOT NULL REFERENCES images(id),
        layer TEXT NOT NULL REFERENCES layers(id),
        created INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS containers_image ON containers(image);
     CREATE INDEX IF NOT EXISTS containers_layer ON containers(layer);
     CREATE TABLE IF NOT EXISTS container_names (
        name TEXT PRIMARY KEY,
        container TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE
     );
     PRAGMA user_version = 3;
     COMMIT;";

/// An image record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Image {
    /// The hex of the config digest.
    pub id: String,
    pub names: Vec<String>,
    /// Layer ids (chain IDs, hex), bottom first.
    pub layers: Vec<String>,
    pub top_layer: Option<String>,
    pub manifest_digest: String,
    /// Bytes of the layers' uncompressed tars.
    pub size: u64,
    /// Unix seconds.
    pub created: i64,
}

/// What recording an image needs.
#[derive(Clone, Debug)]
pub struct NewImage {
    pub id: String,
    pub names: Vec<String>,
    pub layers: Vec<String>,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub size: u64,
}

/// A container record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Container {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    /// Its read-write layer.
    pub layer: String,
    pub created: i64,
}

/// What recording a container needs.
#[derive(Clone, Debug)]
pub struct NewContainer {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    pub layer: String,
}

impl LayerStore {
    fn strings(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<String>, StoreError> {
        let ctx = "reading images and containers";
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.db(ctx))?;
        let rows = stmt
            .query_map(args, |r| r.get::<_, String>(0))
            .map_err(self.db(ctx))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db(ctx))
    }

    /// Fails when `layer` belongs to an image or is a container's layer: those go with
    /// their image or container.
    pub fn check_unowned(&self, layer: &str) -> Result<(), StoreError> {
        let images = self.strings(
            "SELECT DISTINCT image FROM image_layers WHERE layer = ?1 ORDER BY image",
            params![layer],
        )?;
        if !images.is_empty() {
            return Err(StoreError::InImage {
                layer: layer.into(),
                images,
            });
        }
        if let Some(container) = self
            .strings("SELECT id FROM containers WHERE layer = ?1", params![layer])?
            .into_iter()
            .next()
        {
            return Err(StoreError::InContainer {
                layer: layer.into(),
                container,
            });
        }
        Ok(())
    }

    fn image_row(&self, id: &str) -> Result<Option<Image>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, top_layer, manifest_digest, size, created FROM images WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Image {
                        id: r.get(0)?,
                        names: vec![],
                        layers: vec![],
                        top_layer: r.get(1)?,
                        manifest_digest: r.get(2)?,
                        size: r.get::<_, i64>(3)? as u64,
                        created: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(self.db("reading an image"))?;
        let Some(mut image) = row else {
            return Ok(None);
        };
        image.names = self.strings(
            "SELECT name FROM image_names WHERE image = ?1 ORDER BY name",
            params![id],
        )?;
        image.layers = self.strings(
            "SELECT layer FROM image_layers WHERE image = ?1 ORDER BY position",
            params![id],
        )?;
        Ok(Some(image))
    }

    /// An image by id, name, or a unique id prefix of at least 12 characters.
    pub fn image(&self, id_or_name: &str) -> Result<Image, StoreError> {
        if let Some(image) = self.image_row(id_or_name)? {
            return Ok(image);
        }
        let by_name = self.strings(
            "SELECT image FROM image_names WHERE name = ?1",
            params![id_or_name],
        )?;
        if let Some(id) = by_name.first() {
            return self
                .image_row(id)?
                .ok_or_else(|| StoreError::ImageNotFound(id_or_name.into()));
        }
        let hex = id_or_name.strip_prefix("sha256:").unwrap_or(id_or_name);
        if hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let matches = self.strings(
                "SELECT id FROM images WHERE substr(id, 1, length(?1)) = ?1 LIMIT 2",
                params![hex],
            )?;
            if let [one] = matches.as_slice() {
                return self
                    .image_row(one)?
                    .ok_or_else(|| StoreError::ImageNotFound(id_or_name.into()));
            }
        }
        Err(StoreError::ImageNotFound(id_or_name.into()))
    }

    /// Every image, oldest first.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        let ids = self.strings("SELECT id FROM images ORDER BY created, rowid", [])?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.image_row(&id)?);
        }
        Ok(out)
    }

    /// The manifest and config an image was imported with.
    pub fn image_documents(&self, id: &str) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        self.conn
            .query_row(
                "SELECT manifest, config FROM images WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db("reading an image's manifest"))?
            .ok_or_else(|| StoreError::ImageNotFound(id.into()))
    }

    /// Records an image and marks `new_layers` (layers this import made, still incomplete)
    /// complete, in one transaction. An image already recorded gets the names added. A name
    /// held by another image moves to this one, as a tag does. Returns the names moved.
    pub fn commit_image(
        &self,
        image: &NewImage,
        new_layers: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        for n in &image.names {
            validate_image_name(n)?;
        }
        let tx = self.immediate_transaction()?;
        let exists = self.image_row(&image.id)?.is_some();
        if !exists {
            tx.execute(
                "INSERT INTO images(id, top_layer, manifest_digest, manifest, config, size, created)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    image.id,
                    image.layers.last(),
                    image.manifest_digest,
                    image.manifest,
                    image.config,
                    image.size as i64,
                    now()
                ],
            )
            .map_err(self.db("inserting an image"))?;
            for (position, layer) in image.layers.iter().enumerate() {
                tx.execute(
                    "INSERT INTO image_layers(image, position, layer) VALUES(?1, ?2, ?3)",
                    params![image.id, position as i64, layer],
                )
                .map_err(self.db("inserting an image's layer"))?;
            }
        }
        let mut moved = Vec::new();
        for n in &image.names {
            let holder: Option<String> = tx
                .query_row(
                    "SELECT image FROM image_names WHERE name = ?1",
                    params![n],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.db("looking up an image name"))?;
            match holder {
                Some(h) if h == image.id => continue,
                Some(h) => moved.push((n.clone(), h)),
                None => {}
            }
            tx.execute(
                "INSERT INTO image_names(name, image) VALUES(?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET image = excluded.image",
                params![n, image.id],
            )
            .map_err(self.db("naming an image"))?;
        }
        for layer in new_layers {
            tx.execute(
                "UPDATE layers SET incomplete = 0 WHERE id = ?1",
                params![layer],
            )
            .map_err(self.db("completing an image's layer"))?;
        }
        tx.commit().map_err(self.db("committing an image"))?;
        Ok(moved)
    }

    /// Deletes an image record and marks incomplete, in the same transaction, the image's
    /// layers that nothing else needs (no other image, no container, no child that stays,
    /// not mounted). Returns those layers, top first: the caller removes their data and
    /// records next, and a crash in between leaves layers that recovery removes. Refused
    /// while a container uses the image.
    pub fn delete_image(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let image = self
            .image_row(id)?
            .ok_or_else(|| StoreError::ImageNotFound(id.into()))?;
        let containers = self.strings(
            "SELECT id FROM containers WHERE image = ?1 ORDER BY id",
            params![image.id],
        )?;
        if !containers.is_empty() {
            return Err(StoreError::ImageInUse {
                image: image.id,
                containers,
            });
        }
        let tx = self.immediate_transaction()?;
        tx.execute("DELETE FROM images WHERE id = ?1", params![image.id])
            .map_err(self.db("deleting an image"))?;
        let mut freed: Vec<String> = Vec::new();
        for layer in image.layers.iter().rev() {
            let Some(record) = self.get_exact(layer)? else {
                break;
            };
            let children = self.children(layer)?;
            let needed = record.mount_count > 0
                || children.iter().any(|c| !freed.contains(&c.id))
                || self.check_unowned(layer).is_err();
            if needed {
                // Everything below is a parent of this layer: it stays too.
                break;
            }
            tx.execute(
                "UPDATE layers SET incomplete = 1 WHERE id = ?1",
                params![layer],
            )
            .map_err(self.db("marking an image's layer for removal"))?;
            freed.push(layer.clone());
        }
        tx.commit().map_err(self.db("committing"))?;
        Ok(freed)
    }

    /// Checks that a container's names are free.
    pub fn check_container_names(&self, names: &[String]) -> Result<(), StoreError> {
        for n in names {
            validate_id("container name", n)?;
            let taken = !self
                .strings(
                    "SELECT container FROM container_names WHERE name = ?1",
                    params![n],
                )?
                .is_empty()
                || self.container_row(n)?.is_some();
            if taken {
                return Err(StoreError::ContainerNameTaken(n.clone()));
            }
        }
        Ok(())
    }

    /// Records a container and marks its layer (made incomplete) complete, in one transaction.
    pub fn commit_container(&self, c: &NewContainer) -> Result<Container, StoreError> {
        self.check_container_names(&c.names)?;
        let tx = self.immediate_transaction()?;
        tx.execute(
            "INSERT INTO containers(id, image, layer, created) VALUES(?1, ?2, ?3, ?4)",
            params![c.id, c.image, c.layer, now()],
        )
        .map_err(self.db("inserting a container"))?;
        for n in &c.names {
            tx.execute(
                "INSERT INTO container_names(name, container) VALUES(?1, ?2)",
                params![n, c.id],
            )
            .map_err(self.db("naming a container"))?;
        }
        tx.execute(
            "UPDATE layers SET incomplete = 0 WHERE id = ?1",
            params![c.layer],
        )
        .map_err(self.db("completing a container's layer"))?;
        tx.commit().map_err(self.db("committing a container"))?;
        self.container(&c.id)
    }

    fn container_row(&self, id: &str) -> Result<Option<Container>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, image, layer, created FROM containers WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Container {
                        id: r.get(0)?,
                        names: vec![],
                        image: r.get(1)?,
                        layer: r.get(2)?,
                        created: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(self.db("reading a container"))?;
        let Some(mut c) = row else {
            return Ok(None);
        };
        c.names = self.strings(
            "SELECT name FROM container_names WHERE container = ?1 ORDER BY name",
            params![id],
        )?;
        Ok(Some(c))
    }

    /// A container by id or name.
    pub fn container(&self, id_or_name: &str) -> Result<Container, StoreError> {
        if let Some(c) = self.container_row(id_or_name)? {
            return Ok(c);
        }
        let by_name = self.strings(
            "SELECT container FROM container_names WHERE name = ?1",
            params![id_or_name],
        )?;
        match by_name.first() {
            Some(id) => self
                .container_row(id)?
                .ok_or_else(|| StoreError::ContainerNotFound(id_or_name.into())),
            None => Err(StoreError::ContainerNotFound(id_or_name.into())),
        }
    }

    /// Every container, oldest first.
    pub fn containers(&self) -> Result<Vec<Container>, StoreError> {
        let ids = self.strings("SELECT id FROM containers ORDER BY created, rowid", [])?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.container_row(&id)?);
        }
        Ok(out)
    }

    /// Deletes a container's record and marks its layer incomplete, in one transaction: the
    /// caller removes the layer next, and a crash in between leaves a layer that recovery
    /// removes.
    pub fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        let c = self
            .container_row(id)?
            .ok_or_else(|| StoreError::ContainerNotFound(id.into()))?;
        let tx = self.immediate_transaction()?;
        tx.execute("DELETE FROM containers WHERE id = ?1", params![c.id])
            .map_err(self.db("deleting a container"))?;
        tx.execute(
            "UPDATE layers SET incomplete = 1 WHERE id = ?1",
            params![c.layer],
        )
        .map_err(self.db("marking a container's layer for removal"))?;
        tx.commit().map_err(self.db("committing"))?;
        Ok(())
    }
}

/// Checks an image name: a reference such as `registry.example/team/app:1.2` or
/// `app@sha256:…` — printable ASCII without spaces, at most 255 bytes.
pub fn validate_image_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_graphic())
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid image name `{name}`: use a reference such as `app:1.0` (printable ASCII, no spaces, at most 255 bytes)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::NewLayer;
    use super::*;

    fn layer(s: &LayerStore, id: &str, parent: Option<&str>, complete: bool) {
        s.begin_create(NewLayer {
            id: Some(id.into()),
            parent: parent.map(str::to_string),
            driver: "vfs".into(),
            parent_may_be_incomplete: true,
            ..Default::default()
        })
        .unwrap();
        if complete {
            s.finish_create(id).unwrap();
        }
    }

    fn image(id: &str, layers: &[&str], names: &[&str]) -> NewImage {
        NewImage {
            id: id.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            layers: layers.iter().map(|n| n.to_string()).collect(),
            manifest_digest: "sha256:00".into(),
            manifest: b"{}".to_vec(),
            config: b"{}".to_vec(),
            size: 10,
        }
    }

    #[test]
    fn an_image_commits_its_layers_and_owns_them() {
        let d = tempfile::tempdir().unwrap();
        let s = LayerStore::open_with_boot_id(d.path(), "b").unwrap();
        layer(&s, "l0", None, false);
        layer(&s, "l1", Some("l0"), false);
        let moved = s
            .commit_image(
                &image("img1", &["l0", "l1"], &["app:1"]),
                &["l0".into(), "l1".into()],
            )
            .unwrap();
        assert!(moved.is_empty());
        assert!(s.incomplete_layers().unwrap().is_empty());
        let img = s.image("app:1").unwrap();
        assert_eq!(img.layers, vec!["l0", "l1"]);
        assert_eq!(img.top_layer.as_deref(), Some("l1"));
        assert!(matches!(
            s.check_removable("l1"),
            Err(StoreError::InImage { .. })
        ));
        // A second image takes the name over.
        let moved = s
            .commit_image(&image("img2", &["l0"], &["app:1"]), &[])
            .unwrap();
        assert_eq!(moved, vec![("app:1".to_string(), "img1".to_string())]);
        assert_eq!(s.image("app:1").unwrap().id, "img2");
        assert!(s.image("img1").unwrap().names.is_empty());
        // A container pins its image.
        layer(&s, "c1", Some("l1"), false);
        s.commit_container(&NewContainer {
            id: "c1".into(),
            names: vec!["web".into()],
            image: "img1".into(),
            layer: "c1".into(),
        })
        .unwrap();
        assert_eq!(s.container("web").unwrap().layer, "c1");
        assert!(matches!(
            s.delete_image("img1"),
            Err(StoreError::ImageInUse { .. })
        ));
        assert!(matches!(
            s.check_container_names(&["web".into()]),
            Err(StoreError::ContainerNameTaken(_))
        ));
        s.delete_container("c1").unwrap();
        assert!(s.get("c1").unwrap().incomplete);
        s.delete_record("c1").unwrap();
        // l1 is only img1's; l0 is img2's too.
        assert_eq!(s.delete_image("img1").unwrap(), vec!["l1"]);
        assert!(s.get("l1").unwrap().incomplete);
        assert!(!s.get("l0").unwrap().incomplete);
        s.delete_record("l1").unwrap();
        assert!(matches!(
            s.check_removable("l0"),
            Err(StoreError::InImage { ref images, .. }) if images == &["img2"]
        ));
    }

    /// A container's layer left incomplete (a crash mid-apply) cannot be deleted under its
    /// container: recovery sets it aside instead of failing, deleting the record is refused
    /// by name (not with a bare foreign-key error), and removing the container frees it.
    #[test]
    fn recovery_sets_aside_a_layer_its_container_owns() {
        let d = tempfile::tempdir().unwrap();
        let s = LayerStore::open_with_boot_id(d.path(), "b").unwrap();
        layer(&s, "l0", None, false);
        s.commit_image(&image("img1", &["l0"], &[]), &["l0".into()])
            .unwrap();
        layer(&s, "c1", Some("l0"), false);
        s.commit_container(&NewContainer {
            id: "c1".into(),
            names: vec![],
            image: "img1".into(),
            layer: "c1".into(),
        })
        .unwrap();
        s.mark_incomplete("c1").unwrap();
        let mut removed_data = Vec::new();
        let done = s
            .recover(|l| {
                removed_data.push(l.id.clone());
                Ok::<(), String>(())
            })
            .unwrap();
        assert!(removed_data.is_empty(), "an owned layer's data stays");
        assert_eq!(done.set_aside.len(), 1);
        assert!(done.set_aside[0].1.contains("container c1"), "{done:?}");
        assert!(s.get("c1").unwrap().damaged.is_some());
        assert!(matches!(
            s.delete_record("c1"),
            Err(StoreError::InContainer { .. })
        ));
        s.delete_container("c1").unwrap();
        assert_eq!(
            s.recover(|_| Ok::<(), String>(())).unwrap().removed,
            vec!["c1"]
        );
    }

    /// Handles of one store (as `strata serve` pools them, or two processes) committing and
    /// deleting images and containers at once: every write transaction starts as a writer,
    /// so none fails with "database is locked" because another committed in between.
    #[test]
    fn concurrent_image_and_container_records_never_fail_as_locked() {
        const HANDLES: usize = 4;
        const ROUNDS: usize = 60;
        let d = tempfile::tempdir().unwrap();
        {
            let s = LayerStore::open_with_boot_id(d.path(), "b").unwrap();
            layer(&s, "base", None, true);
        }
        let threads: Vec<_> = (0..HANDLES)
            .map(|h| {
                let dir = d.path().to_path_buf();
                std::thread::spawn(move || {
                    let s = LayerStore::open_with_boot_id(&dir, "b").unwrap();
                    for r in 0..ROUNDS {
                        let img = format!("img-{h}-{r}");
                        let top = format!("l-{h}-{r}");
                        layer(&s, &top, Some("base"), false);
                        // The same name moves between handles' images: reads, then writes.
                        s.commit_image(
                            &image(&img, &["base", &top], &["shared:latest"]),
                            std::slice::from_ref(&top),
                        )?;
                        let c = format!("c-{h}-{r}");
                        layer(&s, &c, Some(&top), false);
                        s.commit_container(&NewContainer {
                            id: c.clone(),
                            names: vec![],
                            image: img.clone(),
                            layer: c.clone(),
                        })?;
                        s.delete_container(&c)?;
                        s.delete_record(&c)?;
                        s.delete_image(&img)?;
                    }
                    Ok::<(), StoreError>(())
                })
            })
            .collect();
        for t in threads {
            t.join()
                .unwrap()
                .expect("no request fails because another one ran");
        }
    }
}
