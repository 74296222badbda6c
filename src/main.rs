use clap::Parser;
use emshap_ci::{app, cli::Cli, cli::OutputFormat, error::exit};

fn main() {
    let cli = Cli::parse();
    let level = match (cli.global.quiet, cli.global.verbose) {
        // librdkafka's own log lines repeat what our errors already say; shown from -vv.
        (q, _) if q >= 2 => "error,rdkafka=off",
        (_, 0) => "warn,rdkafka=off",
        (_, 1) => "info,rdkafka=off",
        (_, 2) => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMSHAP_CI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let json = cli.global.output == OutputFormat::Json;
    // In GitHub Actions each command's log is one collapsible group, and a failure is an
    // annotation on the run.
    let gha = emshap_ci::gha::Actions::from_env();
    // Every secret it may be given is masked before anything else is printed.
    for key in ["GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        if let Ok(v) = std::env::var(key) {
            gha.mask(&v);
        }
    }
    // The command's words ("train power"), not its flags or values.
    let name = std::env::args()
        .skip(1)
        .take_while(|a| !a.starts_with('-'))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    // `run` opens a group per stage itself (groups do not nest).
    let result = if matches!(cli.command, emshap_ci::cli::Command::Run(_)) {
        app::run(&cli)
    } else {
        gha.group(&format!("emshap-ci {name}"), || app::run(&cli))
    };
    if let Err(e) = &result {
        gha.error(&format!("emshap-ci {name}: {}", e.kind()), &e.to_string());
    }
    std::process::exit(match result {
        Ok(out) => {
            if json {
                println!("{}", out.json);
            } else if cli.global.quiet < 2 {
                println!("{}", out.text);
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            if json {
                println!("{}", app::error_json(&e));
            }
            e.exit_code()
        }
    });
}
