//! Files and text a stranger controls, through the CLI: nothing blocks, nothing reads without
//! end, an image never reaches outside itself, its text reaches the terminal escaped, and
//! `driver inspect` reads a component without compiling it.
//!
//! Every `strata` child here runs under a watchdog ([`run_guarded`]): a child that is still
//! running after [`WATCHDOG`] or grows past [`MEMORY_GUARD`] is killed and the test fails
//! saying so, instead of the suite hanging or the machine running out of memory. The
//! watchdog is not a speed check: every case that passes answers at once.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use strata_tests::applymem::run_measured;
use strata_tests::oci::{self, Compression};
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, hostile_wasm, root_or_skip, strata_bin, strata_command};

/// How long a child may run before it counts as hung (orders of magnitude above what a
/// refusal takes: it only bounds how long a broken build makes the suite wait).
const WATCHDOG: Duration = Duration::from_secs(60);
/// Resident memory past which a child counts as growing without bound.
const MEMORY_GUARD: u64 = 1 << 30;

/// What a guarded child did.
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs `cmd` to its end under the watchdog; fails the test naming `what` when the child
/// hangs or grows past [`MEMORY_GUARD`].
fn run_guarded(what: &str, cmd: &mut Command) -> Outcome {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting strata");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for strata") {
            break status;
        }
        let rss = rss_of(child.id());
        let hung = started.elapsed() > WATCHDOG;
        if hung || rss > MEMORY_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            if hung {
                panic!("{what}: strata hung (killed after {WATCHDOG:?}); stderr: {stderr}");
            }
            panic!(
                "{what}: strata grew to {} MiB and was killed; stderr: {stderr}",
                rss >> 20
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        success: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `strata --root … --run-root … --driver vfs ARGS` against `t`, guarded.
fn cli(t: &TempStore, what: &str, args: &[&str]) -> Outcome {
    let mut cmd = strata_command(strata_bin());
    cmd.arg("--root")
        .arg(t.root())
        .arg("--run-root")
        .arg(t.dir.path().join("run"))
        .arg("--driver")
        .arg("vfs")
        .args(args);
    run_guarded(what, &mut cmd)
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn one_layer_image(reference: &str) -> oci::BuiltImage {
    oci::build(
        &[tar_of(&[Entry::file("hello", 0o644, b"hello\n")])],
        Compression::None,
        reference,
    )
}

/// Whether the store holds no image (nothing was imported).
fn no_images(t: &TempStore) -> bool {
    let o = cli(t, "image ls", &["image", "ls"]);
    assert!(o.success, "image ls: {}", o.stderr);
    o.stdout.trim().is_empty()
}

#[test]
fn fifos_in_an_image_are_refused_not_waited_on() {
    if !root_or_skip(
        "fifos_in_an_image_are_refused_not_waited_on",
        "importing makes layers owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let image = one_layer_image("example.com/fifo:1");
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    // What is a FIFO, relative to the layout ("" is the layout itself).
    let cases = [
        ("a layer blob", blob(&image.layer_digests[0])),
        ("index.json", "index.json".to_string()),
        ("the config blob", blob(&image.config_digest)),
        ("the image path itself", String::new()),
    ];
    for (what, rel) in cases {
        let layout = t
            .dir
            .path()
            .join(format!("layout-{}", what.replace(' ', "-")));
        oci::write_layout(&image, &layout);
        let fifo = if rel.is_empty() {
            std::fs::remove_dir_all(&layout).unwrap();
            layout.clone()
        } else {
            layout.join(&rel)
        };
        mkfifo(&fifo);
        let o = cli(&t, what, &["image", "import", &layout.to_string_lossy()]);
        assert!(!o.success, "{what}: an import from a FIFO must fail");
        assert!(
            o.stderr.contains("FIFO (named pipe), where a regular file"),
            "{what}: the error says what the file is: {}",
            o.stderr
        );
        let name = fifo.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            o.stderr.contains(&name),
            "{what}: names the file: {}",
            o.stderr
        );
        assert!(no_images(&t), "{what}: nothing was imported");
    }
    // The store works on: the lock was given back.
    let layout = t.dir.path().join("good");
    oci::write_layout(&image, &layout);
    let o = cli(
        &t,
        "a good import",
        &["image", "import", &layout.to_string_lossy()],
    );
    assert!(o.success, "{}", o.stderr);
}

#[test]
fn files_named_on_the_command_line_must_be_regular() {
    let t = TempStore::new();
    let fifo = t.dir.path().join("fifo");
    mkfifo(&fifo);
    let fifo = fifo.to_string_lossy().into_owned();
    for (what, path, kind) in [
        ("--config FIFO", fifo.as_str(), "a FIFO (named pipe)"),
        ("--config /dev/zero", "/dev/zero", "a character device"),
    ] {
        let o = cli(&t, what, &["--config", path, "layer", "ls"]);
        assert!(!o.success, "{what} must be refused");
        assert!(
            o.stderr.contains(path) && o.stderr.contains(kind),
            "{what}: the error names the file and what it is: {}",
            o.stderr
        );
    }
    // A config over the cap is refused whatever its metadata says; one under it is read.
    let big = t.dir.path().join("big.toml");
    std::fs::write(
        &big,
        format!(
            "# {}\n",
            "x".repeat(strata_core::config::MAX_CONFIG_SIZE as usize)
        ),
    )
    .unwrap();
    let o = cli(
        &t,
        "a large config",
        &["--config", &big.to_string_lossy(), "layer", "ls"],
    );
    assert!(
        !o.success && o.stderr.contains("larger than"),
        "{}",
        o.stderr
    );

    if !root_or_skip(
        "files_named_on_the_command_line_must_be_regular (layer apply)",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let o = cli(&t, "layer create", &["layer", "create", "--id", "base"]);
    assert!(o.success, "{}", o.stderr);
    for path in [fifo.as_str(), "/dev/zero"] {
        let o = cli(&t, "layer apply", &["layer", "apply", "base", path]);
        assert!(!o.success, "layer apply {path} must be refused");
        assert!(
            o.stderr.contains(path) && o.stderr.contains("where a regular file is expected"),
            "{}",
            o.stderr
        );
        assert!(
            o.stderr.contains("as stdin"),
            "says how to apply a stream: {}",
            o.stderr
        );
    }
    // stdin stays the way to apply a stream.
    let tar = tar_of(&[Entry::file("f", 0o644, b"x")]);
    let mut child = strata_command(strata_bin())
        .arg("--root")
        .arg(t.root())
        .arg("--run-root")
        .arg(t.dir.path().join("run"))
        .args(["--driver", "vfs", "layer", "apply", "base", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A layout whose blobs are reached through `link` (a path in the layout, relative) being a
/// symlink to a directory outside that holds them.
fn layout_through_symlink(t: &TempStore, image: &oci::BuiltImage, link: &str) -> PathBuf {
    let name = link.replace('/', "-");
    let layout = t.dir.path().join(format!("layout-{name}"));
    let outside = t.dir.path().join(format!("outside-{name}"));
    oci::write_layout(image, &layout);
    let real = layout.join(link);
    std::fs::rename(&real, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &real).unwrap();
    layout
}

#[test]
fn image_sources_stay_inside_themselves() {
    if !root_or_skip(
        "image_sources_stay_inside_themselves",
        "importing makes layers owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let image = one_layer_image("example.com/confined:1");
    for link in ["blobs", "blobs/sha256"] {
        let layout = layout_through_symlink(&t, &image, link);
        let o = cli(&t, link, &["image", "import", &layout.to_string_lossy()]);
        assert!(
            !o.success,
            "a layout whose {link} is a symlink must be refused"
        );
        assert!(
            o.stderr.contains("symlink"),
            "{link}: says why: {}",
            o.stderr
        );
        assert!(no_images(&t), "{link}: nothing was imported");
    }

    // A `docker save` directory whose layer goes through a symlinked directory to a file
    // outside: refused without a word about that file (no size, no digest).
    let secret = tar_of(&[Entry::file("etc/secret", 0o600, &[b's'; 7777])]);
    let secret_hash = oci::sha256(&secret);
    let secret_hex = secret_hash.trim_start_matches("sha256:");
    let outside = t.dir.path().join("outside-docker");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("layer.tar"), &secret).unwrap();
    let dir = t.dir.path().join("docker-dir");
    std::fs::create_dir(&dir).unwrap();
    let config_name = format!("{}.json", image.image_id());
    let config = &image
        .blobs
        .iter()
        .find(|(d, _)| *d == image.config_digest)
        .unwrap()
        .1;
    std::fs::write(dir.join(&config_name), config).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("l")).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": ["example.com/docker:1"],
            "Layers": ["l/layer.tar"],
        }]))
        .unwrap(),
    )
    .unwrap();
    let o = cli(
        &t,
        "docker-save dir",
        &["image", "import", &dir.to_string_lossy()],
    );
    assert!(
        !o.success,
        "a layer through a symlinked directory must be refused"
    );
    assert!(o.stderr.contains("symlink"), "says why: {}", o.stderr);
    for leak in [secret_hex, &secret.len().to_string()] {
        assert!(
            !o.stderr.contains(leak),
            "the error reveals {leak} of the outside file: {}",
            o.stderr
        );
    }
    assert!(no_images(&t));
}

/// Retitles the terminal, erases the line and starts one that looks like Strata's own; C1
/// CSI and NEL, a right-to-left override.
const HOSTILE: &str =
    "\u{1b}]0;owned\u{7}\u{1b}[2K\nstrata: all layers verified\u{9b}1m\u{85}\u{202e}";

fn assert_escaped(what: &str, text: &str) {
    for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{85}', '\u{202e}'] {
        assert!(
            !text.contains(bad),
            "{what}: raw control character {bad:?} in {text:?}"
        );
    }
    for line in text.lines() {
        assert!(
            !line.starts_with("strata: all layers") && !line.starts_with("Delete /etc/shadow"),
            "{what}: a forged line {line:?} in {text:?}"
        );
    }
}

/// Writes an OCI layout of one layer (`tar`) whose config, manifest and index carry
/// `HOSTILE` in their free-form fields, and the layer the media type `media_type`.
fn hostile_layout(dir: &Path, tar: &[u8], media_type: &str) -> (String, serde_json::Value) {
    let sha = oci::sha256;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "variant": HOSTILE,
        "author": HOSTILE,
        "config": { "Labels": { "label": HOSTILE } },
        "rootfs": { "type": "layers", "diff_ids": [sha(tar)] },
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(&config_bytes),
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": media_type,
            "digest": sha(tar),
            "size": tar.len(),
            "annotations": { "note": HOSTILE },
        }],
        "annotations": { "org.opencontainers.image.description": HOSTILE },
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": format!("a:{HOSTILE}") },
            "platform": { "architecture": "amd64", "os": "linux", "variant": HOSTILE },
        }],
    }))
    .unwrap();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    for b in [tar, &config_bytes, &manifest] {
        std::fs::write(blob_path(dir, &sha(b)), b).unwrap();
    }
    std::fs::write(dir.join("index.json"), index).unwrap();
    (
        sha(&config_bytes).trim_start_matches("sha256:").to_string(),
        config,
    )
}

#[test]
fn untrusted_text_is_printed_escaped() {
    if !root_or_skip(
        "untrusted_text_is_printed_escaped",
        "importing makes layers owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let esc_name = format!("t{HOSTILE}");
    let tar = tar_of(&[
        Entry::dir("x\nDelete ", 0o755),
        Entry::dir("x\nDelete /etc", 0o755),
        Entry::file("x\nDelete /etc/shadow", 0o644, b"x"),
        Entry::file(&esc_name, 0o644, b"y"),
    ]);
    let layout = t.dir.path().join("hostile-layout");
    let good_type = "application/vnd.oci.image.layer.v1.tar";
    let (id, config) = hostile_layout(&layout, &tar, good_type);
    let layout_arg = layout.to_string_lossy().into_owned();
    // The ref name is not a valid image name: refused, escaped.
    let o = cli(
        &t,
        "import (bad ref name)",
        &["image", "import", &layout_arg],
    );
    assert!(!o.success);
    assert_escaped("the refused ref name", &o.stderr);
    let o = cli(
        &t,
        "import",
        &["image", "import", "--name", "hostile:1", &layout_arg],
    );
    assert!(o.success, "{}", o.stderr);
    assert_escaped("import", &format!("{}{}", o.stdout, o.stderr));

    for args in [
        &["image", "inspect", "hostile:1"][..],
        &["image", "ls"],
        &["layer", "ls"],
        &["layer", "inspect", &oci::sha256(&tar)["sha256:".len()..]],
        &["layer", "changes", &oci::sha256(&tar)["sha256:".len()..]],
    ] {
        let o = cli(&t, &args.join(" "), args);
        assert!(o.success, "{args:?}: {}", o.stderr);
        assert_escaped(&args.join(" "), &o.stdout);
    }
    let changes = cli(
        &t,
        "changes",
        &["layer", "changes", &oci::sha256(&tar)["sha256:".len()..]],
    )
    .stdout;
    assert!(
        changes.contains("Add \"/x\\nDelete /etc/shadow\""),
        "a path with a newline is quoted: {changes}"
    );

    // --json is unchanged: the same strings, escaped by JSON alone.
    let o = cli(
        &t,
        "inspect --json",
        &["--json", "image", "inspect", "hostile:1"],
    );
    assert!(o.success, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["id"], json!(id));
    assert_eq!(v["config"], config, "the config as the image has it");
    assert_eq!(v["config"]["author"], json!(HOSTILE));
    let o = cli(
        &t,
        "changes --json",
        &[
            "--json",
            "layer",
            "changes",
            &oci::sha256(&tar)["sha256:".len()..],
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/x\nDelete /etc/shadow"), "{paths:?}");
    assert!(
        paths.contains(&format!("/{esc_name}").as_str()),
        "{paths:?}"
    );

    // A layer media type and a platform from an image, in an error.
    let layout2 = t.dir.path().join("hostile-media-type");
    hostile_layout(&layout2, &tar, &format!("{good_type}{HOSTILE}"));
    let o = cli(
        &t,
        "import (bad media type)",
        &[
            "image",
            "import",
            "--name",
            "x:2",
            &layout2.to_string_lossy(),
        ],
    );
    assert!(!o.success);
    assert!(o.stderr.contains("media type"), "{}", o.stderr);
    assert_escaped("a refused media type", &o.stderr);

    // A directory named with a newline, as the image path: quoted.
    let odd = t.dir.path().join("x\nDelete /etc");
    std::fs::create_dir_all(&odd).unwrap();
    let o = cli(&t, "odd path", &["image", "import", &odd.to_string_lossy()]);
    assert!(!o.success);
    assert_escaped("an image path with a newline", &o.stderr);
    assert!(
        o.stderr.contains("x\\nDelete /etc\""),
        "quoted: {}",
        o.stderr
    );
}

// ---- driver inspect ------------------------------------------------------------------------

/// Core functions in the code padded onto a driver component, and `i32.add`s in each.
const PAD_FUNCTIONS: u32 = 10_000;
const PAD_ADDS: u32 = 60;

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// `component` with a core module of a few MiB of code appended (never instantiated): a
/// valid component with the same imports and exports, and much more to compile.
fn padded_component(component: &[u8]) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, Function, FunctionSection, Instruction, Module, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut functions = FunctionSection::new();
    let mut code = CodeSection::new();
    for f in 0..PAD_FUNCTIONS {
        functions.function(0);
        let mut body = Function::new([]);
        body.instruction(&Instruction::LocalGet(0));
        for i in 0..PAD_ADDS {
            body.instruction(&Instruction::I32Const((f ^ i) as i32 * 7919));
            body.instruction(&Instruction::I32Add);
        }
        body.instruction(&Instruction::End);
        code.function(&body);
    }
    let mut module = Module::new();
    module.section(&types).section(&functions).section(&code);
    let module = module.finish();
    let mut out = component.to_vec();
    out.push(1); // the component-level core module section
    leb(module.len(), &mut out);
    out.extend_from_slice(&module);
    out
}

/// The imports and exports of `wasm` as wasmtime, compiling it, sees them.
fn reference_names(wasm: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let component = wasmtime::component::Component::new(&engine, wasm).unwrap();
    let ty = component.component_type();
    let mut imports: Vec<String> = ty.imports(&engine).map(|(n, _)| n.to_string()).collect();
    let mut exports: Vec<String> = ty.exports(&engine).map(|(n, _)| n.to_string()).collect();
    imports.sort();
    exports.sort();
    (imports, exports)
}

fn inspect_peak(t: &TempStore, wasm: &Path) -> u64 {
    let cache = t.dir.path().join("cache");
    let root = t.root();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--root".as_ref(),
        root.as_os_str(),
        "driver".as_ref(),
        "inspect".as_ref(),
        wasm.as_os_str(),
    ];
    let (ok, err, peak) = run_measured(
        Path::new(env!("CARGO_BIN_EXE_strata-peak-rss")),
        &strata_bin(),
        &args,
        &[("STRATA_COMPONENT_CACHE", cache)],
    );
    assert!(ok, "driver inspect {}: {err}", wasm.display());
    peak
}

#[test]
fn driver_inspect_reads_a_component_without_compiling_it() {
    let t = TempStore::new();
    let original = std::fs::read(hostile_wasm()).unwrap();
    let padded = padded_component(&original);
    let big = t.dir.path().join("big.wasm");
    std::fs::write(&big, &padded).unwrap();
    let small = t.dir.path().join("small.wasm");
    std::fs::write(&small, &original).unwrap();

    let baseline = inspect_peak(&t, &small);
    let peak = inspect_peak(&t, &big);
    // Reading and validating holds the file and little more (the read buffer may double
    // once); compiling it, what inspect did, took 113 MiB against a 54 MiB baseline for
    // these 3.7 MiB, in a debug build.
    let bound = baseline + 2 * padded.len() as u64 + (8 << 20);
    eprintln!(
        "driver inspect: {:.1} MiB component, peak {:.1} MiB (baseline {:.1} MiB, bound {:.1} MiB)",
        padded.len() as f64 / f64::from(1 << 20),
        peak as f64 / f64::from(1 << 20),
        baseline as f64 / f64::from(1 << 20),
        bound as f64 / f64::from(1 << 20),
    );
    assert!(
        peak <= bound,
        "driver inspect of a {} byte component peaked at {peak} bytes (bound {bound})",
        padded.len()
    );
    assert!(
        !t.dir.path().join("cache").exists()
            || std::fs::read_dir(t.dir.path().join("cache"))
                .unwrap()
                .next()
                .is_none(),
        "inspect compiles and caches nothing"
    );

    let mut cmd = strata_command(strata_bin());
    cmd.arg("--root")
        .arg(t.root())
        .args(["--json", "driver", "inspect"])
        .arg(&big);
    let o = run_guarded("driver inspect --json", &mut cmd);
    assert!(o.success, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let list = |k: &str| {
        let mut l: Vec<String> = v[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        l.sort();
        l
    };
    let (imports, exports) = reference_names(&original);
    assert_eq!(list("imports"), imports);
    assert_eq!(list("exports"), exports);
    assert_eq!(v["wit"], "strata:driver@0.2.0");
    assert_eq!(v["sha256"], json!(oci::sha256(&padded)["sha256:".len()..]));

    // A core module is not a component, and a damaged body is found without compiling.
    let core = t.dir.path().join("core.wasm");
    std::fs::write(&core, wasm_encoder::Module::new().finish()).unwrap();
    let mut damaged = padded.clone();
    let at = damaged.len() - 2;
    damaged[at] = 0xff;
    let damaged_path = t.dir.path().join("damaged.wasm");
    std::fs::write(&damaged_path, &damaged).unwrap();
    for (path, needle) in [
        (&core, "not a component"),
        (&damaged_path, "not a valid WebAssembly component"),
    ] {
        let mut cmd = strata_command(strata_bin());
        cmd.arg("--root")
            .arg(t.root())
            .args(["driver", "inspect"])
            .arg(path);
        let o = run_guarded("driver inspect (invalid)", &mut cmd);
        assert!(!o.success && o.stderr.contains(needle), "{}", o.stderr);
    }
}
