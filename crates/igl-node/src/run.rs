//! What `igl migrate` does once the configuration is loaded and logging is up (`igl node`
//! starts through [`igl_node::start`]).

use anyhow::Context;
use igl_config::Settings;
use igl_store::{DatabaseOptions, open_storage};
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
