//! What `igl migrate` and `igl node` do once the configuration is loaded and logging is up.
//!
//! Placeholders until the storage layer and the components are composed here.

use igl_config::Settings;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Creates or upgrades the database schema of `settings.database`, then returns.
///
/// # Errors
///
/// Any failure to reach or migrate the database, with context.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    info!(
        backend = %settings.database.backend(),
        database_url = %settings.redacted_database_url(),
        "database migrations are not implemented yet, nothing to do"
    );
    Ok(())
}

/// Runs every enabled component of `settings` until `shutdown` is cancelled, then stops them.
///
/// # Errors
///
/// The first component failure, with context.
pub async fn node(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let components: Vec<&str> = settings
        .enabled_components()
        .into_iter()
        .map(|component| component.as_str())
        .collect();
    info!(
        jurisdiction = %settings.node.jurisdiction,
        components = %components.join(","),
        "components are not implemented yet, waiting for shutdown"
    );
    shutdown.cancelled().await;
    info!("node stopped");
    Ok(())
}
