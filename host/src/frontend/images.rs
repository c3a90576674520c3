//! `strata image …` and `strata container …`.
//!
//! Import shows its progress (bytes, layers, rate) on stderr when stderr is a terminal and
//! `--json` is not given; otherwise it is quiet until it prints its result.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use super::output::{print_human_json, print_json, quoted};
use crate::image::{ContainerOptions, ImportOptions, ImportProgress};
use crate::layers::Strata;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an image: an OCI layout directory, an OCI archive or a `docker save` archive
    /// (layers plain, gzip or zstd). Layers already in the store are reused.
    Import {
        path: PathBuf,
        /// A name for the image (e.g. `app:1.0`), repeatable; default: the names the image
        /// carries (its ref name or tags).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// List images.
    Ls,
    /// Show an image's record, manifest and config.
    Inspect { image: String },
    /// Remove an image and the layers nothing else needs.
    Rm { image: String },
}

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Make a container (a read-write layer) on an image; prints its id.
    Create {
        image: String,
        /// A name for the container, repeatable.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Option for the driver, repeatable (e.g. `size=10G`).
        #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = super::output::parse_kv)]
        opts: Vec<(String, String)>,
    },
    /// Mount a container's filesystem; prints the mount path.
    Mount { container: String },
    /// Unmount a container (drops one user; the last one unmounts).
    Unmount {
        container: String,
        #[arg(long)]
        force: bool,
    },
    /// Remove a container and its layer.
    Rm {
        container: String,
        /// Unmount it first if it is mounted.
        #[arg(long)]
        force: bool,
    },
    /// List containers.
    Ls,
    /// Turn a container's changes (its diff against the image) into a new layer on the
    /// image's top layer; prints the layer id.
    Commit {
        container: String,
        /// A name for the new layer, repeatable.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Redraws one progress line on stderr until dropped.
struct ProgressLine<'a> {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::ScopedJoinHandle<'a, ()>>,
}

impl Drop for ProgressLine<'_> {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn show_progress<'a>(
    scope: &'a std::thread::Scope<'a, '_>,
    progress: &'a ImportProgress,
) -> ProgressLine<'a> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let started = Instant::now();
    let thread = scope.spawn(move || {
        let draw = |last: bool| {
            let read = progress.bytes_read.load(Ordering::Relaxed);
            let total = progress.bytes_total.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let line = format!(
                "\r\x1b[2Klayers {}/{} ({} reused)  {:.1}/{:.1} MiB  {:.1} MiB/s",
                progress.layers_done.load(Ordering::Relaxed),
                progress.layers_total.load(Ordering::Relaxed),
                progress.layers_reused.load(Ordering::Relaxed),
                mib(read),
                mib(total),
                mib(read) / secs,
            );
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(line.as_bytes());
            if last {
                let _ = err.write_all(b"\n");
            }
            let _ = err.flush();
        };
        loop {
            match stopped.recv_timeout(Duration::from_millis(200)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => draw(false),
                _ => {
                    draw(true);
                    return;
                }
            }
        }
    });
    ProgressLine {
        stop,
        thread: Some(thread),
    }
}

pub fn image_command(strata: &Strata, cmd: &ImageCommand, json: bool) -> Result<()> {
    match cmd {
        ImageCommand::Import { path, names } => {
            let progress = ImportProgress::default();
            let options = ImportOptions {
                names: names.clone(),
            };
            let started = Instant::now();
            let interactive = !json && std::io::stderr().is_terminal();
            let report = std::thread::scope(|scope| {
                let _line = interactive.then(|| show_progress(scope, &progress));
                strata.import_image(path, &options, &progress)
            })
            .with_context(|| format!("importing the image {}", quoted(&path.to_string_lossy())))?;
            let secs = started.elapsed().as_secs_f64();
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["seconds"] = json!(secs);
                return print_json(v);
            }
            let reused = report.layers.iter().filter(|l| l.reused).count();
            println!("{}", report.image.id);
            eprintln!(
                "{} image {}{}: {} layers ({} new, {} reused), {:.1} MiB read in {:.2} s",
                if report.new_image {
                    "imported"
                } else {
                    "already present:"
                },
                &report.image.id[..12],
                if report.image.names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", report.image.names.join(", "))
                },
                report.layers.len(),
                report.layers.len() - reused,
                reused,
                mib(report.bytes_read),
                secs
            );
            if report.image.names.is_empty() {
                eprintln!(
                    "the image has no name (its layout gives none, or only a bare tag); name it \
                     with --name, or use the id"
                );
            }
            for (name, from) in &report.moved_names {
                eprintln!(
                    "name {name} moved from image {}",
                    &from[..12.min(from.len())]
                );
            }
            Ok(())
        }
        ImageCommand::Ls => {
            let images = strata.images()?;
            if json {
                return print_json(serde_json::to_value(&images)?);
            }
            let mut out = std::io::stdout().lock();
            for i in &images {
                writeln!(
                    out,
                    "{}\t{}\t{} layers\t{:.1} MiB",
                    i.id,
                    if i.names.is_empty() {
                        "-".to_string()
                    } else {
                        i.names.join(",")
                    },
                    i.layers.len(),
                    mib(i.size)
                )?;
            }
            Ok(())
        }
        ImageCommand::Inspect { image } => {
            let img = strata.image(image)?;
            let (manifest, config) = strata.image_documents(&img.id)?;
            let mut v = serde_json::to_value(&img)?;
            v["manifest"] = serde_json::from_slice(&manifest).unwrap_or(json!(null));
            v["config"] = serde_json::from_slice(&config).unwrap_or(json!(null));
            if json {
                print_json(v)
            } else {
                print_human_json(&v)
            }
        }
        ImageCommand::Rm { image } => {
            let removed = strata
                .remove_image(image)
                .with_context(|| format!("removing image {image}"))?;
            if json {
                return print_json(serde_json::to_value(&removed)?);
            }
            eprintln!(
                "removed image {}: {} layers removed, {} kept (still used)",
                removed.id,
                removed.removed_layers.len(),
                removed.kept_layers.len()
            );
            Ok(())
        }
    }
}

pub fn container_command(strata: &Strata, cmd: &ContainerCommand, json: bool) -> Result<()> {
    match cmd {
        ContainerCommand::Create { image, names, opts } => {
            let c = strata
                .create_container(
                    image,
                    &ContainerOptions {
                        names: names.clone(),
                        driver_options: opts.clone(),
                    },
                )
                .with_context(|| format!("creating a container on image {image}"))?;
            if json {
                return print_json(serde_json::to_value(&c)?);
            }
            println!("{}", c.id);
            Ok(())
        }
        ContainerCommand::Mount { container } => {
            let c = strata.container(container)?;
            let path = strata
                .mount(&c.layer, &[])
                .with_context(|| format!("mounting container {container}"))?;
            if json {
                return print_json(json!({"id": c.id, "mount_point": path}));
            }
            println!("{}", path.display());
            Ok(())
        }
        ContainerCommand::Unmount { container, force } => {
            let c = strata.container(container)?;
            let left = strata
                .unmount(&c.layer, *force)
                .with_context(|| format!("unmounting container {container}"))?;
            if json {
                return print_json(json!({"id": c.id, "mount_count": left}));
            }
            Ok(())
        }
        ContainerCommand::Rm { container, force } => {
            strata
                .remove_container(container, *force)
                .with_context(|| format!("removing container {container}"))?;
            if json {
                return print_json(json!({"removed": container}));
            }
            Ok(())
        }
        ContainerCommand::Ls => {
            let containers = strata.containers()?;
            if json {
                return print_json(serde_json::to_value(&containers)?);
            }
            let mut out = std::io::stdout().lock();
            for c in &containers {
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    c.id,
                    &c.image[..12.min(c.image.len())],
                    if c.names.is_empty() {
                        "-".to_string()
                    } else {
                        c.names.join(",")
                    }
                )?;
            }
            Ok(())
        }
        ContainerCommand::Commit { container, names } => {
            let committed = strata
                .commit_container(container, names)
                .with_context(|| format!("committing container {container}"))?;
            if json {
                return print_json(serde_json::to_value(&committed)?);
            }
            println!("{}", committed.layer.id);
            Ok(())
        }
    }
}
