//! What `igl migrate` and `igl node` do once the configuration is loaded and logging is up.

use anyhow::Context;
use igl_config::Settings;
use igl_node::NodeOptions;
use igl_store::{DatabaseOptions, open_storage};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Creates or upgrades the database schema of `settings.database`, then returns.
///
/// # Errors
///
/// Any failure to reach or migrate the database, with context.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let options = DatabaseOptions {
        url: settings.database_url(),
        max_connections: settings.database.max_connections,
        schema: settings.database.schema.clone(),
        connect_timeout: settings.database.connect_timeout(),
    };
    open_storage(&options).await.with_context(|| {
        format!(
            "cannot migrate the database {}",
            settings.redacted_database_url()
        )
    })?;
    info!(
        backend = %settings.database.backend(),
        database_url = %settings.redacted_database_url(),
        "database schema is up to date"
    );
    Ok(())
}

/// Runs every enabled component of `settings` until `shutdown` is cancelled, then stops them.
///
/// # Errors
///
/// Failure to open the backends, or the first component failure, with context.
pub async fn node(options: NodeOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let running = igl_node::start(options, shutdown).await?;
    running.wait().await
}
