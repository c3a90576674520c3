//! The `strata` command line.
//!
//! Every command prints plain text for people, or with `--json` one JSON document for
//! scripts. Errors go to stderr, naming the object that failed, with exit status 1 (2 for
//! usage errors, as clap does).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use super::images::{ContainerCommand, ImageCommand, container_command, image_command};
use super::output::{parse_kv, print_human_json, print_json, quoted};
use crate::config::Config;
use crate::conformance;
use crate::layers::{ChangeKind, CreateLayer, StoreOptions, Strata, driver_grants, inspect_driver};
use crate::registry;
use crate::sandbox::WIT_PACKAGE;
use crate::text::escape;

/// Strata: container layer storage with sandboxed WebAssembly drivers.
#[derive(Parser, Debug)]
#[command(name = "strata", version, about)]
pub struct Cli {
    /// Configuration file (TOML); default /etc/strata/strata.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where layers are stored (overrides `root`).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Where runtime state lives (overrides `run_root`).
    #[arg(long = "run-root", global = true, value_name = "DIR")]
    run_root: Option<PathBuf>,
    /// Driver: a first-party name (`vfs`) or a path to a driver `.wasm`.
    #[arg(long, global = true, value_name = "NAME|PATH.wasm")]
    driver: Option<String>,
    /// Driver option given to its init, repeatable.
    #[arg(long = "driver-opt", global = true, value_name = "KEY=VALUE", value_parser = parse_kv)]
    driver_opts: Vec<(String, String)>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work with layers.
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Work with drivers.
    #[command(subcommand)]
    Driver(DriverCommand),
    /// Import, list and remove images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Containers: read-write layers on images.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// The store's and the driver's status.
    Status,
    /// Serve containerd's snapshots API (a proxy snapshotter) until SIGINT or SIGTERM.
    ///
    /// Requests run on 4 worker threads (one store handle each) behind a queue of 128; a
    /// request that finds the queue full, or waits 30 s in it, is answered RESOURCE_EXHAUSTED
    /// without being run. SIGTERM or SIGINT stops the daemon within 10 s: no new connections,
    /// queued requests answered UNAVAILABLE, running ones given the rest of the 10 s (a second
    /// signal exits at once); the next start reconciles what an interrupted request left.
    Serve {
        /// The unix socket containerd's `[proxy_plugins.NAME] address` names.
        #[arg(long = "containerd-socket", value_name = "PATH")]
        containerd_socket: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum LayerCommand {
    /// Create a layer; prints its id.
    Create(CreateArgs),
    /// Apply a layer tar (plain, gzip or zstd) from FILE or stdin; prints the applied size.
    Apply {
        id: String,
        /// The tar; `-` or nothing reads stdin.
        file: Option<String>,
    },
    /// Mount a layer; prints the mount path.
    Mount {
        id: String,
        /// Mount option for the driver, repeatable.
        #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
        opts: Vec<(String, String)>,
    },
    /// Unmount a layer (drops one user; the last one unmounts).
    Unmount {
        id: String,
        /// Unmount now, whatever the count, lazily if busy.
        #[arg(long)]
        force: bool,
    },
    /// List what changed against the parent: `Add /p`, `Modify /p`, `Delete /p`.
    Changes {
        id: String,
        #[arg(long)]
        parent: Option<String>,
    },
    /// Write the layer's diff against its parent as a tar with `.wh.` whiteouts.
    Diff {
        id: String,
        #[arg(long)]
        parent: Option<String>,
        /// Output file; stdout when absent.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Bytes of files added or changed against the parent.
    DiffSize {
        id: String,
        #[arg(long)]
        parent: Option<String>,
    },
    /// Remove a layer (not while it has children or is mounted).
    Rm { id: String },
    /// List layers; with `--json`, each with the driver's metadata as `inspect` shows it.
    Ls,
    /// Show one layer's record and the driver's metadata.
    Inspect { id: String },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// The new layer's id; a random 64-hex id when absent.
    #[arg(long)]
    id: Option<String>,
    /// Parent layer (id or name).
    #[arg(long)]
    parent: Option<String>,
    /// A read-write (container) layer.
    #[arg(long)]
    rw: bool,
    /// Create the layer as a copy of this layer (id or name), on the template's parent.
    #[arg(long, conflicts_with = "parent")]
    template: Option<String>,
    /// A name for the layer, repeatable.
    #[arg(long = "name")]
    names: Vec<String>,
    /// Option for the driver, repeatable (e.g. `size=10G`).
    #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    opts: Vec<(String, String)>,
}

#[derive(Subcommand, Debug)]
enum DriverCommand {
    /// List installed drivers.
    Ls,
    /// Show a driver's WIT version and the capabilities it imports.
    Inspect {
        /// A driver name or a path to a `.wasm`.
        driver: String,
    },
    /// Run the conformance suite on a driver (needs root); exits non-zero when a case fails.
    Test(TestArgs),
}

#[derive(Args, Debug)]
struct TestArgs {
    /// A driver name or a path to a `.wasm`; the configured driver when absent.
    driver: Option<String>,
    /// Run only cases whose name contains this, repeatable.
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// Layers in the deep-chain case.
    #[arg(long = "deep-chain", value_name = "N", default_value_t = conformance::DEFAULT_DEEP_CHAIN)]
    deep_chain: usize,
    /// Where the cases' temporary stores go; put it on the filesystem the driver is for.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    scratch: PathBuf,
    /// Print the case names and exit.
    #[arg(long)]
    list: bool,
}

/// Runs the CLI and maps errors to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let msg = json!({ "error": format!("{e:#}") });
                eprintln!("{msg}");
            } else {
                // Errors carry text from drivers, images and file names: escaped, so that
                // none can drive the terminal or forge a line.
                eprintln!("strata: {}", crate::text::escape(&format!("{e:#}")));
            }
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    Ok(crate::paths::load_config(
        cli.config.as_deref(),
        cli.root.as_deref(),
        cli.run_root.as_deref(),
    )?)
}

fn open(cli: &Cli, config: Config) -> Result<Strata> {
    let driver = cli.driver.clone();
    let name = driver.clone().unwrap_or_else(|| config.driver.clone());
    let strata = Strata::open(StoreOptions {
        config,
        driver,
        driver_options: cli.driver_opts.clone(),
        cache_dir: None,
    })
    .with_context(|| format!("opening the store with driver {name}"))?;
    warn_uncached(strata.component());
    warn_damaged(&strata)?;
    Ok(strata)
}

/// Layers set aside by recovery: the store works without them, the operator is told (each
/// open retries them).
fn warn_damaged(strata: &Strata) -> Result<()> {
    for l in strata.damaged()? {
        eprintln!(
            "strata: warning: layer {} is set aside as damaged: {} (the rest of the store \
             works; each start retries it; see docs/crash-safety.md)",
            l.id,
            crate::text::escape(l.damaged.as_deref().unwrap_or_default())
        );
    }
    Ok(())
}

/// A cache that cannot be written costs start-up time, not correctness: say so and go on.
fn warn_uncached(component: &crate::sandbox::DriverComponent) {
    if let Some(w) = &component.cache_warning {
        eprintln!(
            "strata: warning: {} (the driver was compiled and runs; it is compiled again next start)",
            escape(&w.to_string())
        );
    }
}

fn pairs_json(pairs: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

fn change_word(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Add => "Add",
        ChangeKind::Modify => "Modify",
        ChangeKind::Delete => "Delete",
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = load_config(&cli)?;
    let json = cli.json;
    match &cli.command {
        Command::Driver(DriverCommand::Ls) => {
            let drivers = registry::available(&config);
            if json {
                print_json(json!(
                    drivers
                        .iter()
                        .map(|d| json!({"name": d.name, "path": d.path}))
                        .collect::<Vec<_>>()
                ))?;
            } else {
                for d in &drivers {
                    println!("{}\t{}", d.name, quoted(&d.path.to_string_lossy()));
                }
            }
            Ok(())
        }
        Command::Driver(DriverCommand::Inspect { driver }) => {
            // Read from the component's binary: nothing is compiled or cached.
            let c = inspect_driver(driver, &config)
                .with_context(|| format!("inspecting driver {}", escape(driver)))?;
            let caps: Vec<&str> = c.capabilities.iter().map(|c| c.name()).collect();
            let granted = driver_grants(driver, &config)?;
            if json {
                print_json(json!({
                    "name": c.name,
                    "path": c.path,
                    "sha256": c.sha256,
                    "wit": format!("{WIT_PACKAGE}@{}", c.wit_version),
                    "capabilities": caps,
                    "granted": granted,
                    "imports": c.imports,
                    "exports": c.exports,
                }))
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "name:         {}", c.name)?;
                writeln!(out, "path:         {}", quoted(&c.path.to_string_lossy()))?;
                writeln!(out, "sha256:       {}", c.sha256)?;
                writeln!(
                    out,
                    "wit:          {WIT_PACKAGE}@{}",
                    escape(&c.wit_version)
                )?;
                writeln!(out, "capabilities: {}", caps.join(", "))?;
                writeln!(out, "granted:      {}", granted.join(", "))?;
                writeln!(out, "imports:")?;
                for i in &c.imports {
                    writeln!(out, "  {}", escape(i))?;
                }
                writeln!(out, "exports:")?;
                for e in &c.exports {
                    writeln!(out, "  {}", escape(e))?;
                }
                Ok(())
            }
        }
        Command::Driver(DriverCommand::Test(args)) => driver_test(&cli, config, args),
        Command::Status => {
            let strata = open(&cli, config)?;
            let status = strata.status()?;
            let layers = strata.list()?.len();
            let damaged = strata.damaged()?;
            let c = strata.config();
            if json {
                print_json(json!({
                    "driver": strata.driver_name(),
                    "root": c.root,
                    "run_root": c.run_root,
                    "layers": layers,
                    "damaged": damaged
                        .iter()
                        .map(|l| json!({"id": l.id, "reason": l.damaged}))
                        .collect::<Vec<_>>(),
                    "status": pairs_json(&status),
                }))
            } else {
                println!("Driver: {}", strata.driver_name());
                println!("Root: {}", quoted(&c.root.to_string_lossy()));
                println!("Run root: {}", quoted(&c.run_root.to_string_lossy()));
                println!("Layers: {layers}");
                println!("Damaged layers: {}", damaged.len());
                for l in &damaged {
                    println!(
                        "  {}: {}",
                        l.id,
                        crate::text::escape(l.damaged.as_deref().unwrap_or_default())
                    );
                }
                for (k, v) in &status {
                    println!("{}: {}", escape(k), escape(v));
                }
                Ok(())
            }
        }
        Command::Layer(cmd) => {
            let strata = open(&cli, config)?;
            layer_command(&strata, cmd, json)
        }
        Command::Serve { containerd_socket } => {
            crate::frontend::containerd::serve(|| open(&cli, config.clone()), containerd_socket)
                .map_err(anyhow::Error::from)
        }
        Command::Image(cmd) => {
            let strata = open(&cli, config)?;
            image_command(&strata, cmd, json)
        }
        Command::Container(cmd) => {
            let strata = open(&cli, config)?;
            container_command(&strata, cmd, json)
        }
    }
}

fn driver_test(cli: &Cli, config: Config, args: &TestArgs) -> Result<()> {
    let json = cli.json;
    if args.list {
        let names = conformance::case_names(args.deep_chain);
        if json {
            return print_json(json!(names));
        }
        for n in names {
            println!("{n}");
        }
        return Ok(());
    }
    let driver = args
        .driver
        .clone()
        .or_else(|| cli.driver.clone())
        .unwrap_or_else(|| config.driver.clone());
    let cache_dir = crate::paths::conformance_cache(&args.scratch);
    let options = conformance::SuiteOptions {
        driver: driver.clone(),
        config,
        driver_options: cli.driver_opts.clone(),
        scratch: args.scratch.clone(),
        cache_dir,
        deep_chain: args.deep_chain,
        only: args.cases.clone(),
    };
    if !json {
        println!("conformance suite for driver {driver}");
    }
    let report = conformance::run(&options, |r| {
        if json {
            return;
        }
        match &r.outcome {
            conformance::Outcome::Passed => {
                let note = r
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                println!("ok    {} [{} ms]{}", r.name, r.millis, escape(&note));
            }
            conformance::Outcome::Failed { message } => {
                println!("FAIL  {} [{} ms]", r.name, r.millis);
                for line in message.lines() {
                    println!("      {}", escape(line));
                }
            }
        }
    })
    .with_context(|| format!("testing driver {driver}"))?;
    let (passed, failed) = (report.passed(), report.failed());
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["passed"] = json!(passed);
        v["failed"] = json!(failed);
        print_json(v)?;
    } else {
        println!(
            "{passed} passed, {failed} failed: {} (sha256 {})",
            quoted(&report.path.to_string_lossy()),
            report.sha256
        );
    }
    if failed > 0 {
        let names: Vec<&str> = report
            .cases
            .iter()
            .filter(|c| matches!(c.outcome, conformance::Outcome::Failed { .. }))
            .map(|c| c.name.as_str())
            .collect();
        anyhow::bail!(
            "driver {driver} failed {failed} of {} conformance cases: {}",
            report.cases.len(),
            names.join(", ")
        );
    }
    Ok(())
}

fn layer_command(strata: &Strata, cmd: &LayerCommand, json: bool) -> Result<()> {
    match cmd {
        LayerCommand::Create(a) => {
            let layer = strata
                .create_layer(CreateLayer {
                    id: a.id.clone(),
                    parent: a.parent.clone(),
                    names: a.names.clone(),
                    read_write: a.rw,
                    options: a.opts.clone(),
                    template: a.template.clone(),
                })
                .context("creating a layer")?;
            if json {
                print_json(serde_json::to_value(&layer)?)
            } else {
                println!("{}", layer.id);
                Ok(())
            }
        }
        LayerCommand::Apply { id, file } => {
            // stdin is the user's own pipe and stays allowed; a named FILE must be a regular
            // file (a FIFO or a device is refused before it is opened for reading, so the
            // store's lock is never held waiting on it): pipe a stream in as stdin instead.
            let input: Box<dyn Read + Send> = match file.as_deref() {
                None | Some("-") => Box::new(std::io::stdin()),
                Some(path) => {
                    let (f, _) = crate::sys::named::open_named_file(std::path::Path::new(path))
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "opening {}: {} (to apply a stream, give it as stdin: \
                                 `strata layer apply {id} - < …`)",
                                quoted(path),
                                e.reason()
                            )
                        })?;
                    Box::new(f)
                }
            };
            let applied = strata
                .apply(id, input)
                .with_context(|| format!("applying a tar to layer {id}"))?;
            if json {
                print_json(serde_json::to_value(&applied)?)
            } else {
                println!("{}", applied.size);
                Ok(())
            }
        }
        LayerCommand::Mount { id, opts } => {
            let path = strata
                .mount(id, opts)
                .with_context(|| format!("mounting layer {id}"))?;
            if json {
                print_json(json!({"id": id, "mount_point": path}))
            } else {
                println!("{}", path.display());
                Ok(())
            }
        }
        LayerCommand::Unmount { id, force } => {
            let left = strata
                .unmount(id, *force)
                .with_context(|| format!("unmounting layer {id}"))?;
            if json {
                print_json(json!({"id": id, "mount_count": left}))
            } else {
                Ok(())
            }
        }
        LayerCommand::Changes { id, parent } => {
            let changes = strata
                .changes(id, parent.as_deref())
                .with_context(|| format!("listing changes of layer {id}"))?;
            if json {
                print_json(json!(
                    changes
                        .iter()
                        .map(|c| json!({"kind": change_word(c.kind), "path": c.path}))
                        .collect::<Vec<_>>()
                ))
            } else {
                let mut out = std::io::stdout().lock();
                for c in &changes {
                    writeln!(
                        out,
                        "{} {}",
                        change_word(c.kind),
                        crate::text::quote_path(&c.path)
                    )?;
                }
                Ok(())
            }
        }
        LayerCommand::Diff { id, parent, output } => {
            let context = || format!("writing the diff of layer {id}");
            let written = match output {
                Some(path) => {
                    let mut f = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let n = strata
                        .diff(id, parent.as_deref(), &mut f)
                        .with_context(context)?;
                    f.sync_all()?;
                    n
                }
                None => {
                    if json {
                        bail!("`layer diff --json` needs -o FILE: stdout carries the JSON");
                    }
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    let n = strata
                        .diff(id, parent.as_deref(), &mut out)
                        .with_context(context)?;
                    out.flush()?;
                    n
                }
            };
            if json {
                print_json(json!({"id": id, "bytes": written, "output": output}))
            } else {
                Ok(())
            }
        }
        LayerCommand::DiffSize { id, parent } => {
            let size = strata
                .diff_size(id, parent.as_deref())
                .with_context(|| format!("sizing the diff of layer {id}"))?;
            if json {
                print_json(json!({"id": id, "size": size}))
            } else {
                println!("{size}");
                Ok(())
            }
        }
        LayerCommand::Rm { id } => {
            strata
                .remove(id)
                .with_context(|| format!("removing layer {id}"))?;
            if json {
                print_json(json!({"removed": id}))
            } else {
                Ok(())
            }
        }
        LayerCommand::Ls => {
            if json {
                // JSON is the full record: each layer as `layer inspect` shows it, the
                // driver's metadata asked for in batches.
                let mut out = Vec::new();
                for (layer, meta) in strata.list_with_metadata()? {
                    let mut value = serde_json::to_value(&layer)?;
                    match meta {
                        Ok(m) => value["driver_metadata"] = pairs_json(&m),
                        Err(e) => value["driver_metadata_error"] = json!(e),
                    }
                    out.push(value);
                }
                return print_json(serde_json::Value::Array(out));
            }
            let layers = strata.list()?;
            {
                let mut out = std::io::stdout().lock();
                for l in &layers {
                    write!(
                        out,
                        "{}\t{}\t{}\t{}",
                        l.id,
                        l.parent.as_deref().unwrap_or("-"),
                        if l.read_write { "rw" } else { "ro" },
                        l.names.join(",")
                    )?;
                    match &l.damaged {
                        Some(why) => writeln!(out, "\tdamaged: {}", crate::text::escape(why))?,
                        None => writeln!(out)?,
                    }
                }
                Ok(())
            }
        }
        LayerCommand::Inspect { id } => {
            let layer = strata.get(id)?;
            let meta = strata
                .metadata(&layer.id)
                .with_context(|| format!("reading metadata of layer {id}"))?;
            let mut value = serde_json::to_value(&layer)?;
            value["driver_metadata"] = pairs_json(&meta);
            if json {
                print_json(value)
            } else {
                print_human_json(&value)
            }
        }
    }
}
