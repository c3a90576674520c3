//! Front ends: how people and programs reach the layer service. Today the `strata` CLI.

pub mod cli;
mod images;
mod output;

#[cfg(test)]
mod tests {
    /// `strata serve --help` states the figures the constants hold.
    #[test]
    fn serve_help_states_the_bounds() {
        use clap::CommandFactory;
        let mut cli = super::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        for figure in [
            format!(
                "{} worker threads",
                strata_containerd::workers::STORE_HANDLES
            ),
            format!(
                "queue of {}",
                strata_containerd::workers::MAX_QUEUED_REQUESTS
            ),
            format!(
                "waits {} s",
                strata_containerd::workers::MAX_QUEUE_WAIT.as_secs()
            ),
            format!("within {} s", strata_containerd::SHUTDOWN_GRACE.as_secs()),
        ] {
            assert!(help.contains(&figure), "`{figure}` in: {help}");
        }
    }
}
