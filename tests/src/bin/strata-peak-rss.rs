//! `strata-peak-rss CMD [ARG…]`: runs CMD (stdout discarded, stderr passed through) and prints
//! its peak resident set size in bytes; exits with CMD's status.
//!
//! A process's `ru_maxrss` counts the memory of whatever it was before `exec`: a command
//! spawned straight from a test or benchmark that holds hundreds of megabytes of generated
//! tars would report those. Started from this small process, CMD reports only its own.

use std::process::{Command, Stdio};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: strata-peak-rss CMD [ARG…]");
        std::process::exit(2);
    };
    let mut child = Command::new(cmd)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("strata-peak-rss: running {cmd}: {e}");
            std::process::exit(2);
        });
    match strata_sys::rusage::wait_with_peak_rss(&mut child) {
        Ok((status, peak)) => {
            println!("{peak}");
            std::process::exit(status.code().unwrap_or(1));
        }
        Err(e) => {
            eprintln!("strata-peak-rss: waiting for {cmd}: {e}");
            std::process::exit(2);
        }
    }
}
