//! `narutalk-server`: starts Narutalk on the settings of contract section 8.

use std::path::PathBuf;

use clap::Parser;
use narutalk_core::config;
use narutalk_server::Launch;
use narutalk_server::settings::{Overrides, Settings};

/// Narutalk's API server. Settings: defaults < TOML file < NARUTALK_* variables < flags.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// Listen address, such as 127.0.0.1:8000 (NARUTALK_BIND).
    #[arg(long)]
    bind: Option<String>,
    /// SQLite database file (NARUTALK_DATABASE).
    #[arg(long)]
    database: Option<PathBuf>,
    /// TOML settings file (NARUTALK_CONFIG); without either, /etc/narutalk/narutalk.toml
    /// when it exists (an empty NARUTALK_CONFIG: no file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the OpenAPI document (what GET /api/schema/ serves) and exit.
    #[arg(long)]
    openapi: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Flags::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("narutalk-server: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    if flags.openapi {
        println!("{}", narutalk_server::openapi_json());
        return Ok(());
    }
    let overrides = Overrides {
        bind: flags.bind,
        core: config::Overrides {
            database: flags.database,
            config: flags.config,
        },
    };
    let (config, settings_file) = Settings::load(&overrides)?;
    Launch::new(config, settings_file).run().await?;
    println!("Narutalk stopped.");
    Ok(())
}
