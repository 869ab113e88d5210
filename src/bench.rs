//! `latch bench`: measurements against baselines taken in the same run.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Which {
    /// HTTP commands, relay publishing and commit-to-read-model lag.
    Pipeline,
}

pub async fn run(which: Which) -> Result<(), Box<dyn std::error::Error>> {
    match which {
        Which::Pipeline => Err("not built yet".into()),
    }
}
