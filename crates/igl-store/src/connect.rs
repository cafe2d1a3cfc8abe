//! Opening a storage backend from its URL.

use std::sync::Arc;

use igl_core::{Storage, StoreError};

use crate::{PostgresStore, SqliteStore};

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseOptions {
    /// `sqlite://path/to/file.db` or `postgres://user:pass@host:port/db`.
    pub url: String,
    /// Pool size (readers for SQLite; all connections for PostgreSQL).
    pub max_connections: u32,
    /// PostgreSQL schema (created if missing); `None` means `public`.
    pub schema: Option<String>,
    /// How long to wait for a connection (to establish one, or for a free one in the pool).
    pub connect_timeout: std::time::Duration,
}

/// Opens the backend named by the URL scheme and applies pending migrations (so `igl node`
/// works on a fresh machine without a separate `igl migrate`).
pub async fn open_storage(options: &DatabaseOptions) -> Result<Arc<dyn Storage>, StoreError> {
    let url = options.url.as_str();
    if url.starts_with("sqlite:") {
        if options.schema.is_some() {
            return Err(StoreError::InvalidArgument(
                "a schema applies to PostgreSQL only".into(),
            ));
        }
        Ok(Arc::new(
            SqliteStore::connect(url, options.max_connections).await?,
        ))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PostgresStore::connect_with_timeout(
            url,
            options.max_connections,
            options.schema.as_deref(),
            options.connect_timeout,
        )
        .await?;
        Ok(Arc::new(store))
    } else {
        Err(StoreError::InvalidArgument(
            "database URL must start with sqlite: or postgres:".into(),
        ))
    }
}
