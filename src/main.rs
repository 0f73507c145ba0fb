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
            eprintln!("{}", one_line(&e));
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

/// clap's error in one line (SPEC §2): its first line, which for a missing argument ("the
/// following required arguments were not provided:") lacks the arguments, so those are named.
fn one_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::MissingRequiredArgument {
        if let Some(ContextValue::Strings(missing)) = e.get(ContextKind::InvalidArg) {
            let usage = match e.get(ContextKind::Usage) {
                Some(ContextValue::StyledStr(u)) => {
                    let u = u.to_string();
                    format!(" ({})", u.trim().trim_start_matches("Usage:").trim())
                }
                _ => String::new(),
            };
            return format!("error: missing {}{usage}", missing.join(", "));
        }
    }
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or("error: bad arguments")
        .to_owned()
}
