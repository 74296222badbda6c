use clap::Parser;
use emshap_ci::{app, cli::Cli, cli::OutputFormat, error::exit};

fn main() {
    let cli = Cli::parse();
    emshap_ci::logging::init(emshap_ci::logging::level(
        cli.global.quiet,
        cli.global.verbose,
    ));
    let json = cli.global.output == OutputFormat::Json;
    // In GitHub Actions each command's log is one collapsible group, and a failure is an
    // annotation on the run.
    let gha = emshap_ci::gha::Actions::from_env();
    // Every secret it may be given is masked before anything else is printed.
    let kafka_secrets = emshap_ci::kafka::SECRET_PROPERTIES.map(|(_, env)| env);
    for key in [
        "GITHUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "EMSHAP_CI_KAFKA_OAUTHBEARER_TOKEN",
    ]
    .into_iter()
    .chain(kafka_secrets)
    {
        if let Ok(v) = std::env::var(key) {
            gha.mask(&v);
        }
    }
    // The command's words ("train power"), from the parsed command, never its flags or values.
    let name = cli.command.name();
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
                // A person at a terminal gets the report as text; pipes and files the
                // markdown (report.md, the comment and the job summary always are).
                let markdown = matches!(
                    cli.command,
                    emshap_ci::cli::Command::Report(_) | emshap_ci::cli::Command::Run(_)
                );
                if markdown && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    println!("{}", emshap_ci::terminal::render(&out.text));
                } else {
                    println!("{}", out.text);
                }
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
