//! A private containerd (Debian's, with runc) with `strata serve --containerd-socket` as its
//! proxy snapshotter `strata`, for the containerd tests: started in a temporary directory
//! under `/var/tmp`, stopped (and every mount beneath it detached) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The containerd namespace the tests' `ctr` commands use.
pub const NAMESPACE: &str = "strata-test";

/// `ctr ARGS` against the containerd at `address`, in [`NAMESPACE`]: whether it succeeded,
/// its stdout and its stderr. For threads that share a containerd but not its [`Daemons`].
pub fn ctr_at(address: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(address)
        .args(["--namespace", NAMESPACE])
        .args(args)
        .output()
        .expect("running ctr");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether root and the tools a private containerd needs are here; [`crate::skip`]s `test`
/// when not.
pub fn tools_or_skip(test: &str) -> bool {
    if !crate::root_or_skip(test, "containerd and mounts") {
        return false;
    }
    for (tool, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            crate::skip(test, &format!("needs {tool} (Debian package {package})"));
            return false;
        }
    }
    true
}

/// A private containerd with Strata as the proxy snapshotter `strata`.
pub struct Daemons {
    pub dir: tempfile::TempDir,
    pub strata: Option<Child>,
    pub containerd: Child,
    /// The driver `strata` runs (`--driver`); `None`: the default (overlay).
    pub driver: Option<String>,
}

impl Daemons {
    pub fn start() -> Daemons {
        Daemons::start_with("", None)
    }

    /// [`Daemons::start`] with `extra` appended to containerd's config (TOML, e.g. a
    /// `[plugins."io.containerd.gc.v1.scheduler"]` section) and Strata on `driver`.
    /// containerd logs in UTC.
    pub fn start_with(extra: &str, driver: Option<&str>) -> Daemons {
        let dir = tempfile::Builder::new()
            .prefix("strata-containerd-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 [grpc]\n  address = \"{0}/containerd.sock\"\n\
                 [proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    \
                 address = \"{0}/strata.sock\"\n{1}",
                d.display(),
                extra
            ),
        )
        .unwrap();
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("TZ", "UTC")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log")).unwrap())
            .spawn()
            .expect("starting containerd");
        let mut daemons = Daemons {
            dir,
            strata: None,
            containerd,
            driver: driver.map(str::to_string),
        };
        daemons.start_strata();
        daemons.wait_for(&daemons.path("containerd.sock"));
        daemons
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn wait_for(&self, socket: &Path) {
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} did not appear",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn strata_command(&self) -> Command {
        let mut c = crate::strata_command(crate::strata_bin());
        c.arg("--root")
            .arg(self.path("strata"))
            .arg("--run-root")
            .arg(self.path("strata-run"));
        if let Some(d) = &self.driver {
            c.arg("--driver").arg(d);
        }
        c
    }

    pub fn start_strata(&mut self) {
        let _ = std::fs::remove_file(self.path("strata.sock"));
        let child = self
            .strata_command()
            .arg("serve")
            .arg("--containerd-socket")
            .arg(self.path("strata.sock"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path("strata.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("starting strata serve");
        self.strata = Some(child);
        self.wait_for(&self.path("strata.sock"));
    }

    /// After a restart containerd's connection to the old socket is broken; it redials with
    /// a back-off of up to 3 s and fails calls as unavailable until then. Listing answers
    /// from containerd's own records, so a snapshot is prepared (and removed) to be sure the
    /// snapshotter itself answers.
    pub fn wait_until_containerd_reconnects(&self) {
        let start = Instant::now();
        loop {
            let (success, _, err) = self.ctr(&[
                "snapshots",
                "--snapshotter",
                "strata",
                "prepare",
                "reconnect-probe",
            ]);
            if success {
                self.ok(&[
                    "snapshots",
                    "--snapshotter",
                    "strata",
                    "rm",
                    "reconnect-probe",
                ]);
                return;
            }
            assert!(
                err.contains("unavailable") && start.elapsed() < Duration::from_secs(30),
                "containerd does not reach the restarted snapshotter: {err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill_strata(&mut self) {
        if let Some(mut c) = self.strata.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `ctr ARGS` in the namespace [`NAMESPACE`]: whether it succeeded, its stdout, stderr.
    pub fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        ctr_at(&self.path("containerd.sock"), args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (success, out, err) = self.ctr(args);
        assert!(
            success,
            "ctr {args:?} failed: {err}\nstrata log: {}\nprocesses: {}",
            std::fs::read_to_string(self.path("strata.log")).unwrap_or_default(),
            String::from_utf8_lossy(
                &Command::new("sh")
                    .args(["-c", "ps -eo pid,stat,args | grep '[s]trata.sock'"])
                    .output()
                    .unwrap()
                    .stdout
            )
        );
        out
    }

    /// Snapshot keys containerd's strata snapshotter lists.
    pub fn snapshots(&self) -> Vec<String> {
        self.ok(&["snapshots", "--snapshotter", "strata", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Layers in Strata's store.
    pub fn layers(&self) -> Vec<String> {
        let out = self
            .strata_command()
            .args(["layer", "ls"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    }

    /// Waits for containerd's garbage collection to have removed every snapshot, through
    /// Strata: no snapshot and no layer left.
    pub fn wait_until_collected(&self) {
        let start = Instant::now();
        while !self.snapshots().is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.snapshots(), Vec::<String>::new());
        assert_eq!(self.layers(), Vec::<String>::new());
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["containerd.log", "strata.log"] {
                let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                eprintln!("--- last lines of {log}:");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.containerd.id().to_string())
            .status();
        let start = Instant::now();
        while self.containerd.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        self.kill_strata();
        strata_host::sys::mount::detach_all_beneath(self.dir.path());
    }
}
