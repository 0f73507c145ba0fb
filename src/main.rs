//! The `wisp` binary: parse options, bind, run the reactor.
//!
//! Bad options exit with status 2 and one line naming the option (SPEC §2).

use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};

use wisp::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Client { url }) = cli.command {
        return match wisp::client::run(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wisp client: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Token(t)) = cli.command {
        let minted = wisp::config::read_secret("--secret-file", &t.secret_file)
            .and_then(|s| wisp::server::auth::mint(&s.0, &t.sub, &t.rooms, t.history, t.ttl));
        return match minted {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let cfg = match cli.serve.into_config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    wisp::logger::init(cfg.log);
    for warning in &cfg.warnings {
        warn!("{warning}");
    }
    let bind = cfg.bind;
    let daemon = match wisp::server::Daemon::bind(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --bind {bind}: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = daemon.local_addr();
    info!(
        "wisp {} listening on http://{addr}/ (browser client: http://{addr}/, WebSocket: ws://{addr}/ws)",
        env!("CARGO_PKG_VERSION")
    );
    match daemon.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("reactor failed: {e}");
            ExitCode::FAILURE
        }
    }
}
