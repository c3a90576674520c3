//! containerd's snapshotter testsuite cases, ported to Rust and run against `strata serve`
//! over its gRPC socket (overlay driver): each case gets a fresh daemon and store, mounts what
//! the server returns the way containerd would (`mount(8)` with the returned type, source and
//! options) and checks the trees, the infos and the gRPC status codes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_containerd::api::snapshots as pb;
use strata_containerd::api::snapshots::snapshots_client::SnapshotsClient;
use strata_containerd::api::types::Mount;
use strata_tests::{root_or_skip, strata_bin};
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    dir: tempfile::TempDir,
    child: Child,
    client: SnapshotsClient<Channel>,
    rt: tokio::runtime::Runtime,
    mounts: Vec<PathBuf>,
}

type Res<T> = Result<T, tonic::Status>;

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("strata-suite-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let socket = dir.path().join("strata.sock");
        let child = strata_tests::strata_command(strata_bin())
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--run-root")
            .arg(dir.path().join("run"))
            .arg("serve")
            .arg("--containerd-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting strata serve");
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(60), "no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(strata_tests::serveload::connect(&socket));
        Server {
            dir,
            child,
            client,
            rt,
            mounts: Vec::new(),
        }
    }

    fn labels() -> HashMap<String, String> {
        HashMap::from([("containerd.io/gc.root".into(), "now".into())])
    }

    fn prepare(&mut self, key: &str, parent: &str) -> Res<Vec<Mount>> {
        let r = pb::PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: Self::labels(),
        };
        Ok(self
            .rt
            .block_on(self.client.prepare(r))?
            .into_inner()
            .mounts)
    }

    fn view(&mut self, key: &str, parent: &str) -> Res<Vec<Mount>> {
        let r = pb::ViewSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: Self::labels(),
        };
        Ok(self.rt.block_on(self.client.view(r))?.into_inner().mounts)
    }

    fn mounts(&mut self, key: &str) -> Res<Vec<Mount>> {
        let r = pb::MountsRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        Ok(self.rt.block_on(self.client.mounts(r))?.into_inner().mounts)
    }

    fn commit(&mut self, name: &str, key: &str) -> Res<()> {
        let r = pb::CommitSnapshotRequest {
            snapshotter: "strata".into(),
            name: name.into(),
            key: key.into(),
            labels: Self::labels(),
            parent: String::new(),
        };
        self.rt.block_on(self.client.commit(r))?;
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Res<()> {
        let r = pb::RemoveSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        self.rt.block_on(self.client.remove(r))?;
        Ok(())
    }

    fn stat(&mut self, key: &str) -> Res<pb::Info> {
        let r = pb::StatSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        Ok(self
            .rt
            .block_on(self.client.stat(r))?
            .into_inner()
            .info
            .unwrap())
    }

    fn update(&mut self, info: pb::Info, paths: &[&str]) -> Res<pb::Info> {
        let r = pb::UpdateSnapshotRequest {
            snapshotter: "strata".into(),
            info: Some(info),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        Ok(self
            .rt
            .block_on(self.client.update(r))?
            .into_inner()
            .info
            .unwrap())
    }

    fn list(&mut self, filters: &[&str]) -> Vec<pb::Info> {
        let r = pb::ListSnapshotsRequest {
            snapshotter: "strata".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        self.rt.block_on(async {
            let mut stream = self.client.list(r).await.unwrap().into_inner();
            let mut out = Vec::new();
            while let Some(batch) = stream.message().await.unwrap() {
                out.extend(batch.info);
            }
            out
        })
    }

    /// Mounts `mounts` at a new directory, as containerd's `mount.All` would.
    fn mount(&mut self, mounts: &[Mount]) -> PathBuf {
        let target = self.dir.path().join(format!("mnt-{}", self.mounts.len()));
        std::fs::create_dir_all(&target).unwrap();
        for m in mounts {
            let opts = m.options.join(",");
            let status = if m.r#type == "bind" {
                Command::new("mount")
                    .args(["-o", &opts, &m.source])
                    .arg(&target)
                    .status()
            } else if opts.len() < PAGE_SIZE - 512 {
                Command::new("mount")
                    .args(["-t", &m.r#type, "-o", &opts, &m.source])
                    .arg(&target)
                    .status()
            } else {
                // containerd's way with long lower lists: lower directories relative to
                // the directory above their common prefix, mounted from there.
                let (dir, opts) = compact_lowerdirs(&m.options);
                Command::new("mount")
                    .current_dir(dir)
                    .args(["-t", &m.r#type, "-o", &opts, &m.source])
                    .arg(&target)
                    .status()
            };
            assert!(status.unwrap().success(), "mounting {m:?}");
        }
        self.mounts.push(target.clone());
        target
    }

    fn unmount(&mut self, target: &Path) {
        let status = Command::new("umount").arg("-R").arg(target).status();
        assert!(status.unwrap().success());
        self.mounts.retain(|m| m != target);
    }

    /// Prepare, write with `apply`, commit as `name` on `parent`.
    fn layer(&mut self, name: &str, parent: &str, apply: impl FnOnce(&Path)) {
        let key = format!("{name}-prepare");
        let m = self.prepare(&key, parent).unwrap();
        let mnt = self.mount(&m);
        apply(&mnt);
        self.unmount(&mnt);
        self.commit(name, &key).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for m in std::mem::take(&mut self.mounts) {
            let _ = Command::new("umount").arg("-R").arg(&m).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        strata_sys::mount::detach_all_beneath(self.dir.path());
    }
}

const PAGE_SIZE: usize = 4096;

/// The common directory of the `lowerdir=` entries and the options with those entries made
/// relative to it, as containerd does before mounting a long overlay.
fn compact_lowerdirs(options: &[String]) -> (PathBuf, String) {
    let lowers: Vec<&str> = options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .expect("an overlay with lowerdir=")
        .split(':')
        .collect();
    // The longest common prefix of the strings, cut back to a directory (Go's path.Dir).
    let mut prefix = lowers[0].to_string();
    for l in &lowers[1..] {
        let n = prefix
            .bytes()
            .zip(l.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        prefix.truncate(n);
    }
    let common = match prefix.strip_suffix('/') {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&prefix).parent().unwrap().to_path_buf(),
    };
    let relative: Vec<String> = lowers
        .iter()
        .map(|l| {
            Path::new(l)
                .strip_prefix(&common)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let opts: Vec<String> = options
        .iter()
        .map(|o| {
            if o.starts_with("lowerdir=") {
                format!("lowerdir={}", relative.join(":"))
            } else {
                o.clone()
            }
        })
        .collect();
    (common, opts.join(","))
}

fn code<T: std::fmt::Debug>(r: Res<T>) -> Code {
    r.expect_err("the call must fail").code()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn suite_or_skip(case: &str) -> bool {
    root_or_skip(case, "real mounts of what the snapshotter returns")
}

const ACTIVE: i32 = pb::Kind::Active as i32;
const COMMITTED: i32 = pb::Kind::Committed as i32;

#[test]
fn basic() {
    if !suite_or_skip("basic") {
        return;
    }
    let mut s = Server::start();
    let m = s.prepare("/work/preparing", "").unwrap();
    assert!(!m.is_empty());
    let mnt = s.mount(&m);
    std::fs::write(mnt.join("foo"), "foo\n").unwrap();
    std::fs::create_dir_all(mnt.join("a/b/c")).unwrap();
    s.unmount(&mnt);
    s.commit("/work/committed", "/work/preparing").unwrap();
    let c = s.stat("/work/committed").unwrap();
    assert_eq!((c.parent.as_str(), c.kind), ("", COMMITTED));
    assert_eq!(code(s.stat("/work/preparing")), Code::NotFound);

    let m = s.prepare("/work/nextlayer", "/work/committed").unwrap();
    let mnt = s.mount(&m);
    assert_eq!(read(&mnt.join("foo")), "foo\n");
    std::fs::write(mnt.join("bar"), "bar\n").unwrap();
    std::fs::write(mnt.join("foo"), "bar\n").unwrap();
    std::fs::remove_dir_all(mnt.join("a/b")).unwrap();
    s.unmount(&mnt);
    let n = s.stat("/work/nextlayer").unwrap();
    assert_eq!((n.parent.as_str(), n.kind), ("/work/committed", ACTIVE));
    s.commit("/work/committed-next", "/work/nextlayer").unwrap();
    let cn = s.stat("/work/committed-next").unwrap();
    assert_eq!(
        (cn.parent.as_str(), cn.kind),
        ("/work/committed", COMMITTED)
    );
    assert_eq!(code(s.stat("/work/nextlayer")), Code::NotFound);
    // Walk returns what Stat returns, times included.
    let listed = s.list(&[]);
    let c = s.stat("/work/committed").unwrap();
    assert!(listed.contains(&c) && listed.contains(&cn), "{listed:?}");

    let m = s
        .view("/work/nextnextlayer", "/work/committed-next")
        .unwrap();
    let mnt = s.mount(&m);
    assert_eq!(read(&mnt.join("foo")), "bar\n");
    assert_eq!(read(&mnt.join("bar")), "bar\n");
    assert!(mnt.join("a").is_dir() && !mnt.join("a/b").exists());
    s.unmount(&mnt);
    s.remove("/work/nextnextlayer").unwrap();
    let e = s.remove("/work/committed").unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("remove"), "{}", e.message());
    s.remove("/work/committed-next").unwrap();
    s.remove("/work/committed").unwrap();
}

#[test]
fn stat_active_committed_and_transitivity() {
    if !suite_or_skip("stat_active_committed_and_transitivity") {
        return;
    }
    let mut s = Server::start();
    let m = s.prepare("preparing", "").unwrap();
    let mnt = s.mount(&m);
    s.unmount(&mnt);
    let a = s.stat("preparing").unwrap();
    assert_eq!(
        (a.name.as_str(), a.kind, a.parent.as_str()),
        ("preparing", ACTIVE, "")
    );
    s.commit("committed", "preparing").unwrap();
    let c = s.stat("committed").unwrap();
    assert_eq!(
        (c.name.as_str(), c.kind, c.parent.as_str()),
        ("committed", COMMITTED, "")
    );
    s.layer("snapA", "", |m| {
        std::fs::write(m.join("foo"), "foo").unwrap()
    });
    s.layer("snapB", "snapA", |m| {
        std::fs::write(m.join("foo"), "foo bar").unwrap()
    });
    assert_eq!(s.stat("snapA").unwrap().parent, "");
    let b = s.stat("snapB").unwrap();
    assert_eq!(b.parent, "snapA");
    assert_eq!(s.stat(&b.parent).unwrap().parent, "");
}

#[test]
fn prepare_and_view_keys_collide() {
    if !suite_or_skip("prepare_and_view_keys_collide") {
        return;
    }
    let mut s = Server::start();
    s.layer("snapA", "", |_| {});
    s.prepare("newlayer", "snapA").unwrap();
    assert_eq!(code(s.view("newlayer", "snapA")), Code::AlreadyExists);
    s.prepare("prepLayer", "").unwrap();
    assert_eq!(code(s.prepare("prepLayer", "")), Code::AlreadyExists);
    s.view("viewLayer", "snapA").unwrap();
    assert_eq!(code(s.view("viewLayer", "snapA")), Code::AlreadyExists);
    // A parent that is not committed, or missing.
    assert_eq!(code(s.prepare("x", "newlayer")), Code::InvalidArgument);
    assert_eq!(code(s.prepare("x", "missing")), Code::NotFound);
    // Only active snapshots commit; committed ones have no mounts.
    assert_eq!(code(s.commit("v", "viewLayer")), Code::FailedPrecondition);
    assert_eq!(code(s.mounts("snapA")), Code::FailedPrecondition);
    assert_eq!(code(s.mounts("missing")), Code::NotFound);
    assert!(!s.mounts("newlayer").unwrap().is_empty());
}

#[test]
fn update_labels() {
    if !suite_or_skip("update_labels") {
        return;
    }
    let mut s = Server::start();
    s.layer("c1", "", |_| {});
    let before = s.stat("c1").unwrap();
    assert_eq!(before.created_at, before.updated_at);
    let mut info = before.clone();
    info.parent = "doesnotexist".into();
    info.labels = HashMap::from([
        ("l1".into(), "v1".into()),
        ("l2".into(), "v2".into()),
        ("l3".into(), "v3".into()),
        ("containerd.io/gc.root".into(), "now".into()),
    ]);
    let u = s.update(info.clone(), &[]).unwrap();
    assert_eq!(u.created_at, before.created_at);
    assert_ne!(u.updated_at, before.updated_at);
    assert_eq!(u.parent, "", "the parent does not change");
    assert_eq!(u.labels.len(), 4);
    info.labels = HashMap::from([("l1".into(), "updated".into()), ("l4".into(), "v4".into())]);
    let u = s.update(info.clone(), &["labels.l1", "labels.l2"]).unwrap();
    let mut keys: Vec<&String> = u.labels.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["containerd.io/gc.root", "l1", "l3"]);
    assert_eq!(u.labels["l1"], "updated");
    assert_eq!(code(s.update(info, &["parent"])), Code::InvalidArgument);
}

#[test]
fn remove_frees_keys_and_intermediates_wait_for_children() {
    if !suite_or_skip("remove_frees_keys_and_intermediates_wait_for_children") {
        return;
    }
    let mut s = Server::start();
    s.layer("committed-1", "", |_| {});
    s.prepare("reuse-1", "committed-1").unwrap();
    s.remove("reuse-1").unwrap();
    s.view("reuse-1", "committed-1").unwrap();
    s.remove("reuse-1").unwrap();
    s.prepare("reuse-1", "").unwrap();
    s.remove("committed-1").unwrap();
    s.commit("committed-1", "reuse-1").unwrap();

    s.layer("base", "", |m| std::fs::write(m.join("f"), "f").unwrap());
    s.layer("inter", "base", |_| {});
    s.prepare("top", "inter").unwrap();
    assert_eq!(code(s.remove("inter")), Code::FailedPrecondition);
    s.remove("top").unwrap();
    s.remove("inter").unwrap();
    s.remove("base").unwrap();
    assert_eq!(code(s.remove("base")), Code::NotFound);
}

#[test]
fn whiteouts_opaque_dirs_owners_and_hardlinks() {
    if !suite_or_skip("whiteouts_opaque_dirs_owners_and_hardlinks") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut s = Server::start();
    s.layer("l1", "", |m| {
        std::fs::write(m.join("foo"), "foo").unwrap();
        std::fs::write(m.join("foobar"), "foobar").unwrap();
        std::fs::create_dir(m.join("lib")).unwrap();
        std::fs::write(m.join("lib/hidden"), "h").unwrap();
        std::fs::create_dir(m.join("dir2")).unwrap();
        std::fs::write(m.join("dir2/f2"), "hello").unwrap();
    });
    s.layer("l2", "l1", |m| {
        std::fs::remove_file(m.join("foobar")).unwrap();
        std::fs::remove_dir_all(m.join("lib")).unwrap();
        std::fs::create_dir(m.join("lib")).unwrap();
        std::fs::set_permissions(m.join("lib"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(m.join("lib/not-hidden"), "n").unwrap();
        std::fs::create_dir(m.join("dir3")).unwrap();
        std::fs::hard_link(m.join("dir2/f2"), m.join("dir3/f2")).unwrap();
        std::fs::remove_file(m.join("dir2/f2")).unwrap();
        std::os::unix::fs::chown(m.join("foo"), Some(1), Some(1)).unwrap();
    });
    s.layer("l3", "l2", |m| {
        std::fs::write(m.join("lib/newfile"), "x").unwrap()
    });
    let v = s.view("v", "l3").unwrap();
    let mnt = s.mount(&v);
    assert!(!mnt.join("foobar").exists(), "whiteout");
    assert!(!mnt.join("lib/hidden").exists(), "opaque directory");
    assert!(mnt.join("lib/not-hidden").exists() && mnt.join("lib/newfile").exists());
    assert_eq!(
        std::fs::metadata(mnt.join("lib")).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(read(&mnt.join("dir3/f2")), "hello");
    assert!(!mnt.join("dir2/f2").exists());
    let foo = std::fs::metadata(mnt.join("foo")).unwrap();
    assert_eq!((foo.uid(), foo.gid()), (1, 1));
    s.unmount(&mnt);
}

#[test]
fn views_are_read_only_and_roots_are_0755() {
    if !suite_or_skip("views_are_read_only_and_roots_are_0755") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let mut s = Server::start();
    let m = s.prepare("p", "").unwrap();
    let mnt = s.mount(&m);
    assert_eq!(std::fs::metadata(&mnt).unwrap().mode() & 0o777, 0o755);
    s.unmount(&mnt);
    s.commit("committed", "p").unwrap();
    let v = s.view("view", "committed").unwrap();
    let mnt = s.mount(&v);
    assert!(
        std::fs::write(mnt.join("testfile"), "x").is_err(),
        "a view must be read-only"
    );
    s.unmount(&mnt);
    s.remove("view").unwrap();
    s.remove("committed").unwrap();
}

#[test]
fn walk_filters_and_stat_in_walk() {
    if !suite_or_skip("walk_filters_and_stat_in_walk") {
        return;
    }
    let mut s = Server::start();
    s.layer("c1", "", |_| {});
    s.layer("c2", "c1", |_| {});
    s.prepare("a1", "c2").unwrap();
    s.view("v1", "c2").unwrap();
    let all = s.list(&[]);
    assert_eq!(all.len(), 4);
    for info in &all {
        assert_eq!(*info, s.stat(&info.name).unwrap(), "walk and stat agree");
    }
    let names = |infos: Vec<pb::Info>| {
        let mut n: Vec<String> = infos.into_iter().map(|i| i.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(s.list(&["kind==committed"])), vec!["c1", "c2"]);
    assert_eq!(names(s.list(&["parent==c2"])), vec!["a1", "v1"]);
    assert_eq!(names(s.list(&["name==a1", "name==c1"])), vec!["a1", "c1"]);
    assert_eq!(
        names(s.list(&[r#"labels."containerd.io/gc.root"==now,kind==view"#])),
        vec!["v1"]
    );
}

#[test]
fn a_128_layer_chain_mounts() {
    if !suite_or_skip("a_128_layer_chain_mounts") {
        return;
    }
    let mut s = Server::start();
    let mut parent = String::new();
    for i in 0..128 {
        let name = format!("committed-{i}");
        s.layer(&name, &parent, |m| {
            std::fs::write(m.join("overwriteme"), format!("{i} WAS HERE!")).unwrap();
            std::fs::create_dir_all(m.join("addhere")).unwrap();
            std::fs::write(m.join(format!("addhere/file-{i}")), "").unwrap();
        });
        parent = name;
    }
    let v = s.view("fullview", &parent).unwrap();
    let mnt = s.mount(&v);
    assert_eq!(read(&mnt.join("overwriteme")), "127 WAS HERE!");
    assert_eq!(std::fs::read_dir(mnt.join("addhere")).unwrap().count(), 128);
    s.unmount(&mnt);
}

/// containerd unpacks and runs many things at once: 32 requests in flight, on a chain and
/// beside it, leave consistent records (every commit there, every parent right).
#[test]
fn concurrent_requests_keep_the_records_consistent() {
    if !suite_or_skip("concurrent_requests_keep_the_records_consistent") {
        return;
    }
    let mut s = Server::start();
    s.layer("base", "", |m| std::fs::write(m.join("f"), "f").unwrap());
    let client = s.client.clone();
    s.rt.block_on(async move {
        let mut tasks = Vec::new();
        for i in 0..32 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("active-{i}");
                c.prepare(pb::PrepareSnapshotRequest {
                    snapshotter: "strata".into(),
                    key: key.clone(),
                    parent: "base".into(),
                    labels: HashMap::new(),
                })
                .await?;
                c.stat(pb::StatSnapshotRequest {
                    snapshotter: "strata".into(),
                    key: "base".into(),
                })
                .await?;
                c.commit(pb::CommitSnapshotRequest {
                    snapshotter: "strata".into(),
                    name: format!("committed-{i}"),
                    key,
                    labels: HashMap::new(),
                    parent: String::new(),
                })
                .await?;
                Ok::<(), tonic::Status>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    let all = s.list(&["parent==base"]);
    assert_eq!(all.len(), 32);
    assert!(
        all.iter()
            .all(|i| i.kind == COMMITTED && i.name.starts_with("committed-"))
    );
    // Removing the base waits for its 32 children.
    assert_eq!(code(s.remove("base")), Code::FailedPrecondition);
    for i in 0..32 {
        s.remove(&format!("committed-{i}")).unwrap();
    }
    s.remove("base").unwrap();
    assert!(s.list(&[]).is_empty());
}
