use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before the runtime starts any thread.
    consumer::memory::limit_malloc_arenas();
    let config = consumer::Config::parse();
    common::cli::init_tracing(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("consumer: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match config.command.clone() {
            Some(command) => consumer::operator::run(&config, &command).await,
            None => consumer::run(config, common::cli::shutdown_signal())
                .await
                .map(|_| ()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer: error: {}", common::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
