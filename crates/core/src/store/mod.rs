//! The layer store: one SQLite database per root, driver-agnostic.
//!
//! Why SQLite (WAL): several `strata` processes may use one store at once, and a crash at any
//! point must leave something that opens cleanly. Every change is a transaction; a layer is
//! written *incomplete* before its driver work starts and marked complete after, so opening
//! the store can remove the leftovers of a crash. Mutations that involve slow driver work
//! hold an exclusive `flock` on `<root>/store.lock`, which the kernel releases if the process
//! dies; recovery takes the same lock, so it never mistakes a live operation for a crashed
//! one. Mount counts are stored with the boot id: after a reboot no mount survives, so the
//! counts are reset.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

mod images;

pub use images::{Container, Image, NewContainer, NewImage, validate_image_name};

/// containerd's snapshot records (their rules: the `strata-containerd` crate).
const SCHEMA_V4: &str = "BEGIN IMMEDIATE;
     CREATE TABLE IF NOT EXISTS snapshots (
        key TEXT PRIMARY KEY,
        id INTEGER NOT NULL UNIQUE,
        kind INTEGER NOT NULL,
        parent TEXT REFERENCES snapshots(key),
        labels TEXT NOT NULL DEFAULT '{}',
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        inodes INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
     PRAGMA user_version = 4;
     COMMIT;";

/// Longest layer id or name.
pub const MAX_ID_LEN: usize = 128;
/// Deepest parent chain followed.
pub const MAX_CHAIN_DEPTH: usize = 1024;
/// How long a writer waits for another process's transaction.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Schema version this code writes.
pub const SCHEMA_VERSION: i64 = 7;
/// Longest reason recorded for a layer set aside as damaged (a driver's error text).
pub const MAX_DAMAGE_REASON: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("layer {0} not found")]
    NotFound(String),
    #[error("layer {0} already exists")]
    AlreadyExists(String),
    #[error("name {0} is already used by another layer")]
    NameTaken(String),
    #[error("layer {id} has children ({}); remove them first", children.join(", "))]
    HasChildren { id: String, children: Vec<String> },
    #[error("parent layer {0} not found")]
    ParentNotFound(String),
    #[error("parent layer {0} is incomplete")]
    ParentIncomplete(String),
    #[error("layer {0} is mounted; unmount it first")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("layer {layer} is a layer of image {}; remove the image instead", images.join(", "))]
    InImage { layer: String, images: Vec<String> },
    #[error("layer {layer} is the layer of container {container}; remove the container instead")]
    InContainer { layer: String, container: String },
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("image {image} is used by container {}; remove the container first", containers.join(", "))]
    ImageInUse {
        image: String,
        containers: Vec<String>,
    },
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container name {0} is already used")]
    ContainerNameTaken(String),
    #[error("layer store {path}: {context}: {cause}")]
    Db {
        path: PathBuf,
        context: &'static str,
        cause: rusqlite::Error,
    },
    #[error("layer store {path}: {context}: {cause}")]
    Io {
        path: PathBuf,
        context: &'static str,
        cause: std::io::Error,
    },
}

/// A layer record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Layer {
    pub id: String,
    pub parent: Option<String>,
    pub names: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub driver: String,
    pub read_write: bool,
    pub compressed_digest: Option<String>,
    pub compressed_size: Option<u64>,
    pub uncompressed_digest: Option<String>,
    pub uncompressed_size: Option<u64>,
    pub incomplete: bool,
    pub mount_count: u32,
    pub mount_point: Option<String>,
    /// The id of the mount the host made at `mount_point` (`statx` mount id): an unmount
    /// acts only on that mount.
    pub mount_id: Option<u64>,
    /// The layer this one was created from as a copy (`layer create --template`). The driver
    /// may build on the template's data, so the template cannot be removed before this layer.
    pub template: Option<String>,
    /// Why the layer is set aside: recovery could not finish it (its data could not be
    /// removed, or an owner keeps it). It stays incomplete, each open retries, and the rest of
    /// the store works; removing the layer (or its owner) clears it.
    pub damaged: Option<String>,
    /// An apply onto the layer's content was in progress (`layer apply`): recovery rolls it
    /// back from its undo journal (`archive::journal`) instead of removing the layer.
    pub applying: bool,
}

/// What `begin_create` needs.
#[derive(Clone, Debug, Default)]
pub struct NewLayer {
    pub id: Option<String>,
    pub parent: Option<String>,
    pub names: Vec<String>,
    pub driver: String,
    pub read_write: bool,
    pub template: Option<String>,
    /// Image import builds a chain of layers that all stay incomplete until the image is
    /// recorded, so that a crash removes the whole chain: it may name an incomplete parent.
    pub parent_may_be_incomplete: bool,
}

pub struct LayerStore {
    root: PathBuf,
    db_path: PathBuf,
    conn: Connection,
    lock_file: File,
    /// Guards of the exclusive lock alive on this handle: the lock is re-entrant, so an
    /// operation made of several locked steps holds it from its first step to its last.
    lock_depth: std::cell::Cell<u32>,
}

/// Holds the store's exclusive lock until dropped (the last guard of a handle unlocks).
pub struct StoreLock<'a> {
    store: &'a LayerStore,
}

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        let depth = self.store.lock_depth.get().saturating_sub(1);
        self.store.lock_depth.set(depth);
        if depth == 0 {
            let _ = rustix::fs::flock(&self.store.lock_file, rustix::fs::FlockOperation::Unlock);
        }
    }
}

/// Checks a layer id or name: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_ID_LEN`] bytes.
pub fn validate_id(what: &str, id: &str) -> Result<(), StoreError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id.len() <= MAX_ID_LEN;
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid {what} `{id}`: use letters, digits, `_`, `.`, `-` (starting with a letter or digit), at most {MAX_ID_LEN} bytes"
        )))
    }
}

fn random_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// This boot's id: mounts and probe results do not outlive it.
pub fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

const COLUMNS: &str = "id, parent, names, created, driver, read_write, compressed_digest, \
     compressed_size, uncompressed_digest, uncompressed_size, incomplete, mount_count, mount_point, template, mount_id, damaged, applying";

fn row_to_layer(row: &rusqlite::Row<'_>) -> rusqlite::Result<Layer> {
    let names: String = row.get(2)?;
    Ok(Layer {
        id: row.get(0)?,
        parent: row.get(1)?,
        names: serde_json::from_str(&names).unwrap_or_default(),
        created: row.get(3)?,
        driver: row.get(4)?,
        read_write: row.get(5)?,
        compressed_digest: row.get(6)?,
        compressed_size: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        uncompressed_digest: row.get(8)?,
        uncompressed_size: row.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        incomplete: row.get(10)?,
        mount_count: row.get(11)?,
        mount_point: row.get(12)?,
        template: row.get(13)?,
        mount_id: row.get::<_, Option<i64>>(14)?.map(|v| v as u64),
        damaged: row.get(15)?,
        applying: row.get(16)?,
    })
}

impl LayerStore {
    /// Opens (creating) the store in `root`.
    pub fn open(root: &Path) -> Result<LayerStore, StoreError> {
        Self::open_with_boot_id(root, &current_boot_id())
    }

    /// As [`open`](Self::open), with the boot id given (tests simulate reboots with it).
    pub fn open_with_boot_id(root: &Path, boot_id: &str) -> Result<LayerStore, StoreError> {
        let io = |context| {
            move |cause| StoreError::Io {
                path: root.to_path_buf(),
                context,
                cause,
            }
        };
        std::fs::create_dir_all(root).map_err(io("creating the root"))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("setting the root's mode"))?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("store.lock"))
            .map_err(io("opening store.lock"))?;
        let db_path = root.join("layers.db");
        let conn = Connection::open(&db_path).map_err(|cause| StoreError::Db {
            path: db_path.clone(),
            context: "opening",
            cause,
        })?;
        let store = LayerStore {
            root: root.to_path_buf(),
            db_path,
            conn,
            lock_file,
            lock_depth: std::cell::Cell::new(0),
        };
        store.init_schema(boot_id)?;
        Ok(store)
    }

    /// The store's database, for a front end's own records in it (containerd's snapshots:
    /// its table is part of this store's schema, its rules live with the front end).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The store's error for a failed statement of a front end's own records.
    pub fn db_error(
        &self,
        context: &'static str,
    ) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        self.db(context)
    }

    fn db(&self, context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |cause| StoreError::Db {
            path: self.db_path.clone(),
            context,
            cause,
        }
    }

    /// A write transaction that takes the database's write lock at once. Every transaction
    /// that reads before it writes starts this way: a deferred one that read first fails at
    /// once with "database is locked" when another handle committed in between (the busy
    /// timeout does not apply to that upgrade), so no request fails because another ran.
    pub fn immediate_transaction(&self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(self.db("starting a transaction"))
    }

    fn init_schema(&self, boot_id: &str) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(self.db("setting busy timeout"))?;
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(self.db("enabling WAL"))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(self.db("enabling foreign keys"))?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(self.db("setting synchronous"))?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.db("reading the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "layer store {} has schema version {version}, newer than this strata ({SCHEMA_VERSION})",
                self.db_path.display()
            )));
        }
        if version < 1 {
            self.conn
                .execute_batch(
                    "BEGIN IMMEDIATE;
                     CREATE TABLE IF NOT EXISTS layers (
                        id TEXT PRIMARY KEY,
                        parent TEXT REFERENCES layers(id),
                        names TEXT NOT NULL DEFAULT '[]',
                        created INTEGER NOT NULL,
                        driver TEXT NOT NULL,
                        read_write INTEGER NOT NULL,
                        compressed_digest TEXT,
                        compressed_size INTEGER,
                        uncompressed_digest TEXT,
                        uncompressed_size INTEGER,
                        incomplete INTEGER NOT NULL,
                        mount_count INTEGER NOT NULL DEFAULT 0,
                        mount_point TEXT
                     );
                     CREATE INDEX IF NOT EXISTS layers_parent ON layers(parent);
                     CREATE TABLE IF NOT EXISTS names (
                        name TEXT PRIMARY KEY,
                        id TEXT NOT NULL REFERENCES layers(id) ON DELETE CASCADE
                     );
                     CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                     PRAGMA user_version = 1;
                     COMMIT;",
                )
                .map_err(self.db("creating the schema"))?;
        }
        if version < 2 {
            self.conn
                .execute_batch(
                    "BEGIN IMMEDIATE;
                     ALTER TABLE layers ADD COLUMN template TEXT REFERENCES layers(id);
                     PRAGMA user_version = 2;
                     COMMIT;",
                )
                .map_err(self.db("adding layer templates to the schema"))?;
        }
        if version < 3 {
            self.conn
                .execute_batch(images::SCHEMA_V3)
                .map_err(self.db("adding images and containers to the schema"))?;
        }
        if version < 4 {
            self.conn
                .execute_batch(SCHEMA_V4)
                .map_err(self.db("adding containerd snapshots to the schema"))?;
        }
        if version < 5 {
            self.conn
                .execute_batch(
                    "BEGIN IMMEDIATE;
                     ALTER TABLE layers ADD COLUMN mount_id INTEGER;
                     PRAGMA user_version = 5;
                     COMMIT;",
                )
                .map_err(self.db("adding mount ids to the schema"))?;
        }
        if version < 6 {
            self.conn
                .execute_batch(
                    "BEGIN IMMEDIATE;
                     ALTER TABLE layers ADD COLUMN damaged TEXT;
                     PRAGMA user_version = 6;
                     COMMIT;",
                )
                .map_err(self.db("adding damaged layers to the schema"))?;
        }
        if version < 7 {
            self.conn
                .execute_batch(
                    "BEGIN IMMEDIATE;
                     ALTER TABLE layers ADD COLUMN applying INTEGER NOT NULL DEFAULT 0;
                     PRAGMA user_version = 7;
                     COMMIT;",
                )
                .map_err(self.db("adding applies in progress to the schema"))?;
        }
        let stored: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.db("reading the boot id"))?;
        if stored.as_deref() != Some(boot_id) {
            let tx = self.immediate_transaction()?;
            tx.execute(
                "UPDATE layers SET mount_count = 0, mount_point = NULL, mount_id = NULL",
                [],
            )
            .map_err(self.db("resetting mount counts after a reboot"))?;
            tx.execute(
                "INSERT INTO meta(key, value) VALUES('boot_id', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![boot_id],
            )
            .map_err(self.db("storing the boot id"))?;
            tx.commit().map_err(self.db("committing"))?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A guard of the lock this handle holds already, or `None`.
    fn relock(&self) -> Option<StoreLock<'_>> {
        let depth = self.lock_depth.get();
        (depth > 0).then(|| {
            self.lock_depth.set(depth + 1);
            StoreLock { store: self }
        })
    }

    fn locked(&self) -> StoreLock<'_> {
        self.lock_depth.set(1);
        StoreLock { store: self }
    }

    /// Takes the store's exclusive lock, waiting for other handles and processes to release
    /// it. Re-entrant: a handle that holds it gets another guard at once, and the lock is
    /// released when its last guard goes.
    pub fn lock_exclusive(&self) -> Result<StoreLock<'_>, StoreError> {
        if let Some(guard) = self.relock() {
            return Ok(guard);
        }
        rustix::fs::flock(&self.lock_file, rustix::fs::FlockOperation::LockExclusive).map_err(
            |e| StoreError::Io {
                path: self.root.join("store.lock"),
                context: "locking",
                cause: e.into(),
            },
        )?;
        Ok(self.locked())
    }

    /// Takes the exclusive lock if no other handle or process holds it.
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock<'_>>, StoreError> {
        if let Some(guard) = self.relock() {
            return Ok(Some(guard));
        }
        match rustix::fs::flock(
            &self.lock_file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => Ok(Some(self.locked())),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(StoreError::Io {
                path: self.root.join("store.lock"),
                context: "locking",
                cause: e.into(),
            }),
        }
    }

    fn exists(&self, id: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM layers WHERE id = ?1",
                params![id],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(self.db("looking up a layer"))
    }

    /// Records a new layer as incomplete. The caller runs the driver, then
    /// [`finish_create`](Self::finish_create).
    pub fn begin_create(&self, new: NewLayer) -> Result<Layer, StoreError> {
        let id = match new.id {
            Some(id) => {
                validate_id("layer id", &id)?;
                id
            }
            None => random_id().map_err(|cause| StoreError::Io {
                path: "/dev/urandom".into(),
                context: "generating a layer id",
                cause,
            })?,
        };
        for n in &new.names {
            validate_id("layer name", n)?;
        }
        // Reads before it writes: see `immediate_transaction`.
        let tx = self.immediate_transaction()?;
        if self.exists(&id)? {
            return Err(StoreError::AlreadyExists(id));
        }
        for p in new.parent.iter().chain(&new.template) {
            let parent = self
                .get_exact(p)?
                .ok_or_else(|| StoreError::ParentNotFound(p.clone()))?;
            if parent.incomplete && !new.parent_may_be_incomplete {
                return Err(StoreError::ParentIncomplete(p.clone()));
            }
        }
        for n in &new.names {
            let taken: Option<String> = tx
                .query_row("SELECT id FROM names WHERE name = ?1", params![n], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(self.db("looking up a name"))?;
            if taken.is_some() || self.exists(n)? {
                return Err(StoreError::NameTaken(n.clone()));
            }
        }
        tx.execute(
            "INSERT INTO layers(id, parent, names, created, driver, read_write, incomplete, template)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
            params![
                id,
                new.parent,
                serde_json::to_string(&new.names).unwrap_or_else(|_| "[]".into()),
                now(),
                new.driver,
                new.read_write,
                new.template
            ],
        )
        .map_err(self.db("inserting a layer"))?;
        for n in &new.names {
            tx.execute("INSERT INTO names(name, id) VALUES(?1, ?2)", params![n, id])
                .map_err(self.db("inserting a name"))?;
        }
        tx.commit().map_err(self.db("committing a new layer"))?;
        self.get(&id)
    }

    fn set_incomplete(&self, id: &str, incomplete: bool) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE layers SET incomplete = ?2 WHERE id = ?1",
                params![id, incomplete],
            )
            .map_err(self.db("updating a layer"))?;
        if n == 0 {
            return Err(StoreError::NotFound(id.into()));
        }
        Ok(())
    }

    /// Marks a layer complete.
    pub fn finish_create(&self, id: &str) -> Result<(), StoreError> {
        self.set_incomplete(id, false)
    }

    /// Marks a layer incomplete before driver work that may leave it half done.
    pub fn mark_incomplete(&self, id: &str) -> Result<(), StoreError> {
        self.set_incomplete(id, true)
    }

    /// Marks layer `id` incomplete with an apply in progress, whose undo journal recovery
    /// replays.
    pub fn begin_apply(&self, id: &str) -> Result<(), StoreError> {
        self.update_one(
            id,
            "UPDATE layers SET incomplete = 1, applying = 1 WHERE id = ?1",
        )
    }

    /// The apply onto layer `id` is over and the layer is whole (as after it, or as before
    /// it when it was undone): complete, no apply in progress, not set aside.
    pub fn end_apply(&self, id: &str) -> Result<(), StoreError> {
        self.update_one(
            id,
            "UPDATE layers SET incomplete = 0, applying = 0, damaged = NULL WHERE id = ?1",
        )
    }

    fn update_one(&self, id: &str, sql: &str) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(sql, params![id])
            .map_err(self.db("updating a layer"))?;
        if n == 0 {
            return Err(StoreError::NotFound(id.into()));
        }
        Ok(())
    }

    /// Records what an apply onto layer `id` gave and ends it ([`LayerStore::end_apply`]),
    /// in one statement: a crash leaves either the apply in progress or all of it recorded.
    pub fn finish_apply(
        &self,
        id: &str,
        compressed_digest: &str,
        compressed_size: u64,
        uncompressed_digest: &str,
        uncompressed_size: u64,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE layers SET compressed_digest = ?2, compressed_size = ?3,
                   uncompressed_digest = ?4, uncompressed_size = ?5,
                   incomplete = 0, applying = 0, damaged = NULL WHERE id = ?1",
                params![
                    id,
                    compressed_digest,
                    compressed_size as i64,
                    uncompressed_digest,
                    uncompressed_size as i64
                ],
            )
            .map_err(self.db("recording an apply"))?;
        if n == 0 {
            return Err(StoreError::NotFound(id.into()));
        }
        Ok(())
    }

    /// Layers with an apply in progress (a crash interrupted it), oldest first.
    pub fn applying_layers(&self) -> Result<Vec<Layer>, StoreError> {
        self.query(
            &format!("SELECT {COLUMNS} FROM layers WHERE applying = 1 ORDER BY created, rowid"),
            None,
        )
    }

    /// Records what applying a tar gave.
    pub fn set_sizes(
        &self,
        id: &str,
        compressed_digest: Option<&str>,
        compressed_size: Option<u64>,
        uncompressed_digest: Option<&str>,
        uncompressed_size: Option<u64>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE layers SET compressed_digest = ?2, compressed_size = ?3,
                   uncompressed_digest = ?4, uncompressed_size = ?5 WHERE id = ?1",
                params![
                    id,
                    compressed_digest,
                    compressed_size.map(|v| v as i64),
                    uncompressed_digest,
                    uncompressed_size.map(|v| v as i64)
                ],
            )
            .map_err(self.db("recording sizes"))?;
        Ok(())
    }

    /// Deletes a layer's record (and names). Refuses while it has children or an image or
    /// a container owns it (their records name it: the database would refuse the delete
    /// with a bare "FOREIGN KEY constraint failed").
    pub fn delete_record(&self, id: &str) -> Result<(), StoreError> {
        self.check_unowned(id)?;
        let children = self.children(id)?;
        if !children.is_empty() {
            return Err(StoreError::HasChildren {
                id: id.into(),
                children: children.into_iter().map(|l| l.id).collect(),
            });
        }
        self.conn
            .execute("DELETE FROM layers WHERE id = ?1", params![id])
            .map_err(self.db("deleting a layer"))?;
        Ok(())
    }

    /// Whether layer `id` may be removed now.
    pub fn check_removable(&self, id: &str) -> Result<(), StoreError> {
        let layer = self
            .get_exact(id)?
            .ok_or_else(|| StoreError::NotFound(id.into()))?;
        // An image's or a container's layer goes with its owner: say so first.
        self.check_unowned(id)?;
        let children = self.children(id)?;
        if !children.is_empty() {
            return Err(StoreError::HasChildren {
                id: id.into(),
                children: children.into_iter().map(|l| l.id).collect(),
            });
        }
        if layer.mount_count > 0 {
            return Err(StoreError::Busy(id.into()));
        }
        Ok(())
    }

    /// Layer `id` by its id alone (no name lookup), if there is one.
    pub fn get_exact(&self, id: &str) -> Result<Option<Layer>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM layers WHERE id = ?1"),
                params![id],
                row_to_layer,
            )
            .optional()
            .map_err(self.db("reading a layer"))
    }

    /// A layer by id or name.
    pub fn get(&self, id_or_name: &str) -> Result<Layer, StoreError> {
        if let Some(l) = self.get_exact(id_or_name)? {
            return Ok(l);
        }
        let id: Option<String> = self
            .conn
            .query_row(
                "SELECT id FROM names WHERE name = ?1",
                params![id_or_name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db("looking up a name"))?;
        match id {
            Some(id) => self
                .get_exact(&id)?
                .ok_or_else(|| StoreError::NotFound(id_or_name.into())),
            None => Err(StoreError::NotFound(id_or_name.into())),
        }
    }

    fn query(&self, sql: &str, arg: Option<&str>) -> Result<Vec<Layer>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(sql)
            .map_err(self.db("preparing a query"))?;
        let rows = match arg {
            Some(a) => stmt.query_map(params![a], row_to_layer),
            None => stmt.query_map([], row_to_layer),
        }
        .map_err(self.db("listing layers"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.db("listing layers"))
    }

    /// Drivers other than `driver` that layers of this store were made with (a few at most).
    /// Every driver that has layers in this store.
    pub fn recorded_drivers(&self) -> Result<Vec<String>, StoreError> {
        let ctx = "listing the drivers of layers";
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT driver FROM layers ORDER BY driver")
            .map_err(self.db(ctx))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.db(ctx))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db(ctx))
    }

    /// A value the host keeps about the store itself (e.g. its layout version).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.db("reading store metadata"))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES(?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(self.db("writing store metadata"))
    }

    pub fn other_drivers(&self, driver: &str) -> Result<Vec<String>, StoreError> {
        let ctx = "listing the drivers of layers";
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT driver FROM layers WHERE driver != ?1 LIMIT 8")
            .map_err(self.db(ctx))?;
        let rows = stmt
            .query_map([driver], |r| r.get::<_, String>(0))
            .map_err(self.db(ctx))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db(ctx))
    }

    /// Every layer, oldest first.
    pub fn list(&self) -> Result<Vec<Layer>, StoreError> {
        self.query(
            &format!("SELECT {COLUMNS} FROM layers ORDER BY created, rowid"),
            None,
        )
    }

    /// Layers that depend on `id`: its children, and layers created from it as a template.
    pub fn children(&self, id: &str) -> Result<Vec<Layer>, StoreError> {
        self.query(
            &format!("SELECT {COLUMNS} FROM layers WHERE parent = ?1 OR template = ?1 ORDER BY created, rowid"),
            Some(id),
        )
    }

    pub fn incomplete_layers(&self) -> Result<Vec<Layer>, StoreError> {
        self.query(
            &format!("SELECT {COLUMNS} FROM layers WHERE incomplete = 1 ORDER BY created, rowid"),
            None,
        )
    }

    /// Layer `id` and its ancestors, nearest first.
    pub fn chain(&self, id: &str) -> Result<Vec<Layer>, StoreError> {
        let mut out = vec![self.get(id)?];
        while let Some(p) = out.last().and_then(|l| l.parent.clone()) {
            if out.len() >= MAX_CHAIN_DEPTH || out.iter().any(|l| l.id == p) {
                return Err(StoreError::Invalid(format!(
                    "layer {id}: parent chain is longer than {MAX_CHAIN_DEPTH} or loops"
                )));
            }
            out.push(self.get_exact(&p)?.ok_or(StoreError::ParentNotFound(p))?);
        }
        Ok(out)
    }

    /// Removes layers left incomplete by a crash, children first: `remove_data` removes the
    /// driver's data, then the record goes. A layer recovery cannot finish never stops it:
    /// one whose data cannot be removed, whose record an image or a container still owns, or
    /// that keeps children, is set aside ([`Layer::damaged`], still incomplete, so the next
    /// recovery tries again) and the rest goes on. Fails only when the database itself does.
    pub fn recover<E: std::fmt::Display>(
        &self,
        mut remove_data: impl FnMut(&Layer) -> Result<(), E>,
    ) -> Result<Recovered, StoreError> {
        let _lock = self.lock_exclusive()?;
        let mut done = Recovered::default();
        let mut stuck = std::collections::HashSet::new();
        loop {
            let mut progressed = false;
            for layer in self.incomplete_layers()? {
                // Leaves first: an incomplete layer whose children are gone (or never existed).
                // An apply in progress is rolled back from its journal, never removed here.
                if layer.applying
                    || stuck.contains(&layer.id)
                    || !self.children(&layer.id)?.is_empty()
                {
                    continue;
                }
                // An image's or a container's layer cannot go without its owner (its record
                // is referenced): a crash (or a failed apply) left it changed half-way.
                // (A reason recorded when it was set aside stays.)
                let reason = if let Err(owned) = self.check_unowned(&layer.id) {
                    Some(layer.damaged.clone().unwrap_or_else(|| {
                        format!(
                            "an operation on it did not finish, so it may hold part of that \
                             change; {owned}"
                        )
                    }))
                } else if let Err(e) = remove_data(&layer) {
                    Some(format!("removing its data failed: {e}"))
                } else if let Err(e) = self.delete_record(&layer.id) {
                    Some(format!("removing its record failed: {e}"))
                } else {
                    None
                };
                match reason {
                    Some(reason) => {
                        self.set_damaged(&layer.id, &reason)?;
                        stuck.insert(layer.id.clone());
                        done.set_aside.push((layer.id, reason));
                    }
                    None => {
                        done.removed.push(layer.id);
                        progressed = true;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        // Incomplete layers that keep children (above one set aside) wait for them.
        for layer in self.incomplete_layers()? {
            if layer.applying || stuck.contains(&layer.id) {
                continue;
            }
            let children: Vec<String> = self
                .children(&layer.id)?
                .into_iter()
                .map(|c| c.id)
                .collect();
            let reason = format!(
                "it is to be removed once the layers on it are ({})",
                children.join(", ")
            );
            self.set_damaged(&layer.id, &reason)?;
            done.set_aside.push((layer.id, reason));
        }
        Ok(done)
    }

    /// Sets layer `id` aside as damaged, for `reason` (kept to [`MAX_DAMAGE_REASON`] bytes),
    /// and incomplete: no layer is made on it, and recovery tries it again.
    pub fn set_damaged(&self, id: &str, reason: &str) -> Result<(), StoreError> {
        let mut end = reason.len().min(MAX_DAMAGE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.conn
            .execute(
                "UPDATE layers SET damaged = ?2, incomplete = 1 WHERE id = ?1",
                params![id, &reason[..end]],
            )
            .map_err(self.db("setting a layer aside"))?;
        Ok(())
    }

    /// Layers set aside as damaged, oldest first.
    pub fn damaged_layers(&self) -> Result<Vec<Layer>, StoreError> {
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM layers WHERE damaged IS NOT NULL ORDER BY created, rowid"
            ),
            None,
        )
    }

    /// One more user of layer `id`'s mount at `mount_point`; returns the new count.
    pub fn increment_mount(&self, id: &str, mount_point: &str) -> Result<u32, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE layers SET mount_count = mount_count + 1, mount_point = ?2 WHERE id = ?1",
                params![id, mount_point],
            )
            .map_err(self.db("counting a mount"))?;
        if n == 0 {
            return Err(StoreError::NotFound(id.into()));
        }
        Ok(self.get_exact(id)?.map(|l| l.mount_count).unwrap_or(0))
    }

    /// Layer `id`'s first user: the host mounted it at `mount_point` as mount `mount_id`.
    pub fn record_mount(
        &self,
        id: &str,
        mount_point: &str,
        mount_id: u64,
    ) -> Result<u32, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE layers SET mount_count = 1, mount_point = ?2, mount_id = ?3 WHERE id = ?1",
                params![id, mount_point, mount_id as i64],
            )
            .map_err(self.db("recording a mount"))?;
        if n == 0 {
            return Err(StoreError::NotFound(id.into()));
        }
        Ok(1)
    }

    /// One user fewer (`force`: none); returns the count left.
    pub fn decrement_mount(&self, id: &str, force: bool) -> Result<u32, StoreError> {
        let sql = if force {
            "UPDATE layers SET mount_count = 0, mount_point = NULL, mount_id = NULL WHERE id = ?1"
        } else {
            "UPDATE layers SET mount_count = MAX(mount_count - 1, 0),
               mount_point = CASE WHEN mount_count <= 1 THEN NULL ELSE mount_point END,
               mount_id = CASE WHEN mount_count <= 1 THEN NULL ELSE mount_id END
             WHERE id = ?1"
        };
        let n = self
            .conn
            .execute(sql, params![id])
            .map_err(self.db("counting an unmount"))?;
        if n == 0 {
            return Err(StoreError::NotFound(id.into()));
        }
        Ok(self.get_exact(id)?.map(|l| l.mount_count).unwrap_or(0))
    }
}

/// What crash recovery did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Incomplete layers removed, children first.
    pub removed: Vec<String>,
    /// Layers set aside as damaged by this recovery, and why.
    pub set_aside: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str, parent: Option<&str>) -> NewLayer {
        NewLayer {
            id: Some(id.into()),
            parent: parent.map(str::to_string),
            names: vec![],
            driver: "vfs".into(),
            read_write: false,
            template: None,
            parent_may_be_incomplete: false,
        }
    }

    #[test]
    fn a_template_cannot_be_removed_while_a_copy_of_it_exists() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        s.begin_create(new("base", None)).unwrap();
        s.finish_create("base").unwrap();
        s.begin_create(new("tpl", Some("base"))).unwrap();
        s.finish_create("tpl").unwrap();
        let copy = s
            .begin_create(NewLayer {
                template: Some("tpl".into()),
                ..new("copy", Some("base"))
            })
            .unwrap();
        s.finish_create("copy").unwrap();
        assert_eq!(copy.template.as_deref(), Some("tpl"));
        assert_eq!(copy.parent.as_deref(), Some("base"));
        let err = s.check_removable("tpl").unwrap_err();
        assert!(
            matches!(err, StoreError::HasChildren { ref children, .. } if children == &["copy"])
        );
        s.delete_record("copy").unwrap();
        s.check_removable("tpl").unwrap();
    }

    #[test]
    fn a_version_1_store_is_upgraded_in_place() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = store(d.path());
            s.begin_create(new("old", None)).unwrap();
            s.finish_create("old").unwrap();
        }
        // Turn it back into what the first schema wrote.
        let conn = Connection::open(d.path().join("layers.db")).unwrap();
        conn.execute_batch(
            "ALTER TABLE layers DROP COLUMN template; ALTER TABLE layers DROP COLUMN mount_id;
             ALTER TABLE layers DROP COLUMN damaged; ALTER TABLE layers DROP COLUMN applying;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let s = store(d.path());
        let old = s.get("old").unwrap();
        assert_eq!(old.template, None);
        assert!(!old.applying);
        let v: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    fn store(dir: &Path) -> LayerStore {
        LayerStore::open_with_boot_id(dir, "boot-1").unwrap()
    }

    #[test]
    fn create_finish_list_and_rules() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let a = s.begin_create(new("a", None)).unwrap();
        assert!(a.incomplete);
        s.finish_create("a").unwrap();
        let mut b = new("b", Some("a"));
        b.names = vec!["web".into()];
        s.begin_create(b).unwrap();
        s.finish_create("b").unwrap();
        assert_eq!(s.get("web").unwrap().id, "b");
        assert!(matches!(
            s.begin_create(new("a", None)),
            Err(StoreError::AlreadyExists(_))
        ));
        let mut c = new("c", None);
        c.names = vec!["web".into()];
        assert!(matches!(s.begin_create(c), Err(StoreError::NameTaken(_))));
        assert!(matches!(
            s.begin_create(new("x", Some("nope"))),
            Err(StoreError::ParentNotFound(_))
        ));
        assert!(matches!(
            s.begin_create(new("../x", None)),
            Err(StoreError::Invalid(_))
        ));
        let random = s
            .begin_create(NewLayer {
                id: None,
                ..new("", None)
            })
            .unwrap();
        assert_eq!(random.id.len(), 64);
        s.delete_record(&random.id).unwrap();
        match s.check_removable("a") {
            Err(StoreError::HasChildren { children, .. }) => assert_eq!(children, vec!["b"]),
            other => panic!("{other:?}"),
        }
        assert!(s.delete_record("a").is_err());
        let ids: Vec<String> = s.list().unwrap().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, vec!["a", "b"]);
        assert_eq!(s.chain("b").unwrap().len(), 2);
    }

    #[test]
    fn recovery_removes_incomplete_layers_children_first() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        s.begin_create(new("a", None)).unwrap();
        s.finish_create("a").unwrap();
        s.begin_create(new("b", Some("a"))).unwrap();
        s.finish_create("b").unwrap();
        s.begin_create(new("c", Some("b"))).unwrap(); // crashed mid-create
        s.mark_incomplete("b").unwrap(); // crashed mid-apply
        let mut seen = Vec::new();
        let removed = s
            .recover(|l| {
                seen.push(l.id.clone());
                Ok::<(), String>(())
            })
            .unwrap();
        assert_eq!(removed.removed, vec!["c", "b"]);
        assert_eq!(seen, vec!["c", "b"]);
        let ids: Vec<String> = s.list().unwrap().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, vec!["a"]);
        // A failing driver keeps the record, set aside; the rest is recovered.
        s.begin_create(new("d", None)).unwrap();
        s.begin_create(new("e", None)).unwrap();
        let done = s
            .recover(|l| {
                if l.id == "d" {
                    Err("disk on fire")
                } else {
                    Ok(())
                }
            })
            .unwrap();
        assert_eq!(done.removed, vec!["e"]);
        assert_eq!(done.set_aside[0].0, "d");
        let d = s.get("d").unwrap();
        assert!(d.incomplete);
        assert!(d.damaged.unwrap().contains("disk on fire"));
        // The next recovery tries again.
        assert_eq!(
            s.recover(|_| Ok::<(), String>(())).unwrap().removed,
            vec!["d"]
        );
    }

    #[test]
    fn mount_counts_reset_after_reboot() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = store(d.path());
            s.begin_create(new("a", None)).unwrap();
            assert_eq!(s.increment_mount("a", "/m").unwrap(), 1);
            assert_eq!(s.increment_mount("a", "/m").unwrap(), 2);
            assert!(matches!(s.check_removable("a"), Err(StoreError::Busy(_))));
            assert_eq!(s.decrement_mount("a", false).unwrap(), 1);
            assert_eq!(s.get("a").unwrap().mount_point.as_deref(), Some("/m"));
        }
        let same_boot = store(d.path());
        assert_eq!(same_boot.get("a").unwrap().mount_count, 1);
        let rebooted = LayerStore::open_with_boot_id(d.path(), "boot-2").unwrap();
        let a = rebooted.get("a").unwrap();
        assert_eq!((a.mount_count, a.mount_point), (0, None));
    }

    #[test]
    fn two_handles_share_state_and_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let s1 = store(d.path());
        let s2 = store(d.path());
        s1.begin_create(new("a", None)).unwrap();
        assert_eq!(s2.get("a").unwrap().id, "a");
        let held = s1.lock_exclusive().unwrap();
        assert!(
            s2.try_lock_exclusive().unwrap().is_none(),
            "second locker must wait"
        );
        drop(held);
        assert!(s2.try_lock_exclusive().unwrap().is_some());
    }

    /// An operation made of locked steps holds the lock from its first to its last: a
    /// step's own guard going does not let another handle in.
    #[test]
    fn the_lock_is_reentrant_per_handle() {
        let d = tempfile::tempdir().unwrap();
        let s1 = store(d.path());
        let s2 = store(d.path());
        let outer = s1.lock_exclusive().unwrap();
        let step = s1.lock_exclusive().unwrap();
        let tried = s1.try_lock_exclusive().unwrap();
        assert!(tried.is_some(), "the holder gets another guard at once");
        drop(tried);
        drop(step);
        assert!(
            s2.try_lock_exclusive().unwrap().is_none(),
            "held while the outer guard lives"
        );
        drop(outer);
        assert!(s2.try_lock_exclusive().unwrap().is_some());
    }

    #[test]
    fn deep_chains() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let mut parent: Option<String> = None;
        for i in 0..200 {
            let id = format!("l{i}");
            s.begin_create(new(&id, parent.as_deref())).unwrap();
            s.finish_create(&id).unwrap();
            parent = Some(id);
        }
        let chain = s.chain("l199").unwrap();
        assert_eq!(chain.len(), 200);
        assert_eq!(chain[0].id, "l199");
        assert_eq!(chain[199].id, "l0");
    }
}

#[cfg(test)]
mod id_tests;
