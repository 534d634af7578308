//! petct-node command line: parses arguments and calls into the library.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "petct-node", version, about = "DICOM-native PET/CT AI node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic whole-body FDG PET/CT study with ground truth.
    Phantom(petct_node::phantom::PhantomArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Phantom(args) => {
            let summary = petct_node::phantom::run(&args)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
    }
    Ok(())
}
