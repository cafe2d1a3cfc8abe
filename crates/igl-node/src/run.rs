//! What `igl migrate` and `igl node` do once the configuration is loaded and logging is up.

use std::sync::Arc;

use anyhow::Context;
use igl_config::{ObjectStoreSettings, Settings};
use igl_core::{ObjectStore, Storage};
use igl_store::objects::ObjectLake;
use igl_store::{DatabaseOptions, open_storage};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The backends a node runs on.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Messages, jobs, events, ACL.
    pub storage: Arc<dyn Storage>,
    /// Documents.
    pub objects: Arc<dyn ObjectStore>,
}

fn database_options(settings: &Settings) -> DatabaseOptions {
    DatabaseOptions {
        url: settings.database_url(),
        max_connections: settings.database.max_connections,
        schema: settings.database.schema.clone(),
        connect_timeout: settings.database.connect_timeout(),
    }
}

/// Opens the database (applying migrations) and the object store.
pub async fn open_backends(settings: &Settings) -> anyhow::Result<Backends> {
    let storage = open_storage(&database_options(settings))
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                settings.redacted_database_url()
            )
        })?;
    let objects: Arc<dyn ObjectStore> = match &settings.objects {
        ObjectStoreSettings::Local { .. } => {
            let path = settings
                .local_objects_path()
                .context("no path for the local object store")?;
            let lake = ObjectLake::local(&path)
                .with_context(|| format!("cannot open the object store at {}", path.display()))?;
            Arc::new(lake)
        }
    };
    Ok(Backends { storage, objects })
}

/// Creates or upgrades the database schema of `settings.database`, then returns.
///
/// # Errors
///
/// Any failure to reach or migrate the database, with context.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    open_storage(&database_options(settings))
        .await
        .with_context(|| {
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
pub async fn node(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let backends = open_backends(&settings).await?;
    backends
        .storage
        .ping()
        .await
        .context("database does not answer")?;
    backends
        .objects
        .ping()
        .await
        .context("object store does not answer")?;
    let components: Vec<&str> = settings
        .enabled_components()
        .into_iter()
        .map(|component| component.as_str())
        .collect();
    info!(
        jurisdiction = %settings.node.jurisdiction,
        database_url = %settings.redacted_database_url(),
        components = %components.join(","),
        "node ready"
    );
    shutdown.cancelled().await;
    info!("node stopped");
    Ok(())
}
