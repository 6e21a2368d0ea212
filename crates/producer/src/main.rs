use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = producer::Config::parse();
    common::cli::init_tracing(config.log_format);
    match producer::run(config, common::cli::shutdown_signal()).await {
        Ok(summary) => {
            println!("{summary}");
            if summary.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("producer: error: {}", common::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
