use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = consumer::Config::parse();
    common::cli::init_tracing(config.log_format);
    let result = match config.command.clone() {
        Some(command) => consumer::operator::run(&config, &command).await,
        None => consumer::run(config, common::cli::shutdown_signal())
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer: error: {}", common::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
