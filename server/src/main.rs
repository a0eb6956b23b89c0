//! `slices-blueprint`: the dashboard, the SLICES REST API and the task worker in one
//! binary. Subcommands: `serve` (default), `worker`, `migrate`, `dev-token`, `sync-catalog`,
//! `rotate-clouds-key`.

use anyhow::Context as _;
use app::ssr::api;
use app::ssr::config::{Config, Settings};
use app::ssr::server;
use app::ssr::state::AppState;
use clap::{Parser, Subcommand};
use leptos::prelude::get_configuration;
use std::time::Duration;

mod telemetry;

/// The static (musl) build of the image allocates with mimalloc: musl's own allocator takes a
/// global lock, which serializes tokio's worker threads.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "slices-blueprint",
    version,
    about = "SLICES-RI blueprint backend and dashboard"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the dashboard and API, with the task worker inside (unless RUN_WORKER=false).
    Serve,
    /// Run only the task worker (more workers = more processes; they never run a task twice).
    Worker,
    /// Apply the database migrations and exit.
    Migrate,
    /// Import the Glance images and Nova flavors of a site cloud (SITE_CLOUDS_YAML) into the
    /// catalog; prints what was added, updated, unchanged. Safe to repeat.
    SyncCatalog {
        /// A cloud of SITE_CLOUDS_YAML (default: its first cloud).
        #[arg(long)]
        cloud: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-seal every stored clouds.yaml with CLOUDS_ENCRYPTION_KEY (after a rotation, with
    /// the old key in CLOUDS_ENCRYPTION_KEY_PREVIOUS).
    RotateCloudsKey,
    /// GET a URL and exit 0 when it answers 2xx (1 otherwise), printing the status and body:
    /// a readiness check from inside the image, which has no shell, curl or wget (the Helm
    /// chart's `helm test` pods run it against /readyz).
    Probe {
        /// e.g. http://slices-blueprint:80/readyz
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Print a token signed by the dev issuer (DEV_ISSUER=true; local runs and tests only).
    DevToken {
        #[command(subcommand)]
        kind: DevTokenKind,
    },
}

#[derive(Subcommand)]
enum DevTokenKind {
    /// A user token (like `slices auth id-token`).
    User {
        #[arg(long, default_value = "user_dev.local_alice")]
        user_id: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// An experiment token (like `slices experiment jwt`).
    Experiment {
        #[arg(long, default_value = "exp_dev.local_demo")]
        experiment_id: String,
        #[arg(long, default_value = "proj_dev.local_qkd")]
        project_id: String,
        /// The acting user (claim SLICES_CLAIM_ACTING_USER).
        #[arg(long)]
        user_id: Option<String>,
        /// Token lifetime, seconds.
        #[arg(long, default_value_t = 900)]
        expires_in_secs: u64,
        /// The experiment's own expiry, seconds from now (claim SLICES_CLAIM_EXPERIMENT_EXPIRES).
        #[arg(long)]
        experiment_expires_in_secs: Option<i64>,
    },
}

fn main() {
    let cli = Cli::parse();
    // Logs and traces first, outside the runtime (the trace exporter's client has its own).
    let telemetry = match telemetry::init(&cli.settings.log_format) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("slices-blueprint: {e:#}");
            std::process::exit(2);
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    telemetry.shutdown();
    if let Err(e) = result {
        // One line, the whole chain; the configuration errors already name the variable.
        eprintln!("slices-blueprint: {e:#}");
        std::process::exit(2);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::DevToken { kind } => dev_token(&cli.settings, kind),
        Command::Probe { url, timeout_secs } => probe(&url, timeout_secs).await,
        Command::Migrate => {
            let config = cli.settings.validate(true)?;
            let pool = server::connect(&config).await?;
            match app::ssr::migrate(&pool)
                .await
                .context("applying migrations")?
            {
                app::ssr::Migrated::Current => println!("migrations applied"),
                app::ssr::Migrated::Newer {
                    applied,
                    this_build,
                } => println!(
                    "the database is ahead of this build (migration {applied}; this build's newest is {this_build}): left as it is"
                ),
            }
            Ok(())
        }
        Command::Worker => {
            let state = build_state(cli.settings.validate(true)?).await?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = tx.send(true);
            });
            if let Some(addr) = state.config.worker_http_addr {
                serve_probes(&state, addr, rx.clone()).await?;
            }
            app::ssr::worker::run_worker(state.worker(), rx).await
        }
        Command::SyncCatalog { cloud, json } => {
            let state = build_state(cli.settings.validate(true)?).await?;
            let report = app::ssr::catalog_import::import_site_cloud(
                &state.pool,
                &state.openstack,
                &app::ssr::audit::Actor::anonymous(),
                state.config.site_clouds_yaml.as_deref(),
                cloud.as_deref(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_import(&report);
            }
            Ok(())
        }
        Command::RotateCloudsKey => {
            let config = cli.settings.validate(true)?;
            let pool = connect(&config).await?;
            let keys = server::clouds_keys(&config, &pool).await?;
            let count = app::ssr::clouds::reseal_all(&pool, &keys)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("re-sealed {count} clouds.yaml with the current CLOUDS_ENCRYPTION_KEY");
            if keys.previous.is_some() {
                println!("CLOUDS_ENCRYPTION_KEY_PREVIOUS can now be removed");
            }
            Ok(())
        }
        Command::Serve => serve(cli.settings.validate(true)?).await,
    }
}

/// Connects; applies the migrations unless `MIGRATE_ON_START=false`.
async fn connect(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let pool = server::connect(config).await?;
    if config.migrate_on_start {
        let migrated = app::ssr::migrate(&pool)
            .await
            .context("applying migrations")?;
        if let app::ssr::Migrated::Newer { applied, .. } = migrated {
            tracing::warn!(
                applied,
                "the database is ahead of this build (a rollback?): not migrating"
            );
        }
    } else {
        tracing::info!(
            "MIGRATE_ON_START=false: the schema is left as it is (`migrate` applies it)"
        );
    }
    Ok(pool)
}

/// Serves `/healthz`, `/readyz` and `/metrics` of a `worker` process on `addr`
/// (`WORKER_HTTP_ADDR`) until `stop` turns true.
async fn serve_probes(
    state: &AppState,
    addr: std::net::SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on WORKER_HTTP_ADDR {addr}"))?;
    tracing::info!(%addr, "worker probes and metrics listening");
    let router = server::ops_router(state);
    tokio::spawn(async move {
        let stopping = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        server::serve(listener, router, stopping, Duration::from_secs(1)).await;
    });
    Ok(())
}

async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let pool = connect(&config).await?;
    let conf = get_configuration(None).context("reading the LEPTOS_* settings")?;
    server::assemble(config, pool, conf.leptos_options).await
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.site_addr;
    let public_url = config.public_url.clone();
    let state = build_state(config).await?;
    let router = server::router(&state).await?;

    // SIGTERM or Ctrl-C stops both at once: the listener closes (open requests may finish
    // within the grace period) and the worker stops claiming and hands its tasks back.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let worker = state.config.run_worker.then(|| {
        let worker = state.worker();
        let stop = stop_rx.clone();
        tokio::spawn(async move { app::ssr::worker::run_worker(worker, stop).await })
    });

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on LEPTOS_SITE_ADDR {addr}"))?;
    report(&state, &public_url);
    let mut stopped = stop_rx.clone();
    let stopping = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    server::serve(listener, router, stopping, state.config.shutdown_grace).await;
    if let Some(worker) = worker {
        if let Ok(Err(e)) = worker.await {
            tracing::warn!(error = %e, "the worker stopped with an error");
        }
    }
    Ok(())
}

/// The start-up report: where to go and what is connected.
fn report(state: &AppState, public_url: &str) {
    let k8s = match (&state.backends.kubernetes, &state.backends.kubernetes_error) {
        (Some(k), _) => k.health(),
        (None, Some(e)) => format!("not connected ({})", e.lines().next().unwrap_or(e)),
        (None, None) => "not connected".to_string(),
    };
    let auth = match (&state.config.auth.issuer, state.auth.dev_issuer()) {
        (Some(iss), Some(_)) => format!("{iss} + dev issuer"),
        (Some(iss), None) => iss.clone(),
        (None, Some(_)) => "dev issuer only (DEV_ISSUER=true; local use)".into(),
        (None, None) => "none".into(),
    };
    println!("slices-blueprint is up");
    println!("  dashboard   {public_url}/");
    println!("  API         {public_url}{}", api::BASE);
    println!("  API docs    {public_url}/docs  and  {public_url}/redoc");
    println!("  database    connected");
    println!("  kubernetes  {k8s}");
    println!(
        "  openstack   each user's own clouds.yaml (catalog import: {})",
        match &state.config.site_clouds_yaml {
            Some(path) => format!("SITE_CLOUDS_YAML {}", path.display()),
            None => "off, SITE_CLOUDS_YAML not set".into(),
        }
    );
    println!(
        "  outbound    OpenStack requests reach {}{}",
        state.config.egress.describe(),
        if state.config.egress.allow_insecure_tls {
            "; verify: false honoured"
        } else {
            ""
        }
    );
    println!("  tokens      {auth}");
    println!(
        "  worker      {}",
        if state.config.run_worker {
            "running in this process"
        } else {
            "off (RUN_WORKER=false)"
        }
    );
}

/// The `sync-catalog` report as a table-like listing.
fn print_import(report: &app::model::ImportReport) {
    println!("catalog import from cloud `{}`", report.cloud);
    let groups = [
        ("images added", &report.images_added),
        ("images updated", &report.images_updated),
        ("images unchanged", &report.images_unchanged),
        ("images skipped (not public)", &report.images_skipped),
        ("flavors added", &report.flavors_added),
        ("flavors updated", &report.flavors_updated),
        ("flavors unchanged", &report.flavors_unchanged),
    ];
    for (label, entries) in groups {
        println!("  {label}: {}", entries.len());
        for e in entries {
            println!("    {}  ({})", e.name, e.source_id);
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// `probe`: one GET of `url`; `Err` (exit 2 with the reason) when it answers anything but
/// 2xx or not at all.
async fn probe(url: &str, timeout_secs: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{} {}", status.as_u16(), body.trim_end());
    anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
    Ok(())
}

fn dev_token(settings: &Settings, kind: DevTokenKind) -> anyhow::Result<()> {
    let config = settings.validate(false)?;
    let key_file = config.auth.dev_issuer_key_file.clone().ok_or_else(|| {
        anyhow::anyhow!("configuration error: DEV_ISSUER: must be true to mint dev tokens")
    })?;
    let dev = app::ssr::auth::DevIssuer::load_or_create(&key_file, &config.auth.dev_issuer_url)?;
    let audience = config.auth.audience.clone();
    let request = match kind {
        DevTokenKind::User { user_id, name } => {
            dev.user_token(&audience, &user_id, name.as_deref())
        }
        DevTokenKind::Experiment {
            experiment_id,
            project_id,
            user_id,
            expires_in_secs,
            experiment_expires_in_secs,
        } => dev.experiment_token(
            &audience,
            &config.auth.claims,
            &experiment_id,
            &project_id,
            user_id.as_deref(),
            experiment_expires_in_secs.map(|s| chrono::Utc::now() + chrono::Duration::seconds(s)),
            Duration::from_secs(expires_in_secs),
        ),
    };
    println!("{}", dev.mint(&request)?);
    Ok(())
}
