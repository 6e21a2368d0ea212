use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = consumer::Config::parse();
    common::cli::init_tracing(config.log_format);
    match consumer::run(config, common::cli::shutdown_signal()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer: error: {}", common::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
