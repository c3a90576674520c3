//! The `strata` command: see `strata --help`.

fn main() -> std::process::ExitCode {
    strata_host::frontend::cli::main()
}
