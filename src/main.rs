//! The `herald` binary: parse the command line, run, report errors with their cause.

use clap::Parser;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = herald::cli::Cli::parse();
    match herald::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
