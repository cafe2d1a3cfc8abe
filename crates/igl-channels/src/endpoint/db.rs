//! The databases an endpoint uses: the shared **medium** (the `channel_messages` table both
//! endpoints of the channel write and read) and the endpoint's own tables (subscriptions and
//! observer cursors), which live in the medium database unless a separate one is configured.
//!
//! Both are either SQLite (the embedded demo: one file shared by the endpoints of one
//! machine) or PostgreSQL (production). Queries are written once, with `$N` placeholders,
//! which both sqlx drivers understand; [`Db::sql`] fills in the one thing that differs,
//! the expression for "now" in microseconds since the Unix epoch.
//!
//! Writes that must be ordered take the medium's write lock (`in_write_transaction!`): on
//! SQLite `BEGIN IMMEDIATE` on a single writer connection, on PostgreSQL a transaction-level
//! advisory lock. Holding it while the row id is allocated and until commit makes ids (and
//! `updated_at`) appear in commit order, so a reader that has seen id `n` has seen every
//! committed id below `n`: the observer's cursor by id can never skip a row that commits
//! late.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgConnection, SqlitePool};

use super::error::EndpointError;

/// "Now" in microseconds since the Unix epoch, as SQLite computes it (millisecond precision).
const NOW_SQLITE: &str = "CAST(unixepoch('subsec') * 1000000 AS INTEGER)";
/// "Now" in microseconds since the Unix epoch, from the PostgreSQL server's clock.
const NOW_POSTGRES: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000000 AS BIGINT)";

/// A connection to one database.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqliteDb),
    Postgres(PostgresDb),
}

/// SQLite: one writer connection (writes queue in the pool instead of waiting in SQLite's
/// sleeping busy handler), a pool of readers, WAL, `synchronous = FULL`.
///
/// Every endpoint of this process that opens the same file shares the same pools (so the
/// AU and SG endpoints of the embedded demo queue for one writer rather than competing for
/// the file lock); other processes on the same file wait through `busy_timeout`.
#[derive(Debug, Clone)]
pub(crate) struct SqliteDb(Arc<SqlitePools>);

#[derive(Debug)]
pub(crate) struct SqlitePools {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    /// The canonical path of the file: identifies the medium within this process.
    pub(crate) path: PathBuf,
}

impl Deref for SqliteDb {
    type Target = SqlitePools;

    fn deref(&self) -> &SqlitePools {
        &self.0
    }
}

/// The SQLite files open in this process, by canonical path.
static OPEN_SQLITE: LazyLock<tokio::sync::Mutex<HashMap<PathBuf, Weak<SqlitePools>>>> =
    LazyLock::new(Default::default);

/// PostgreSQL: one pool whose connections use `schema`.
#[derive(Debug, Clone)]
pub(crate) struct PostgresDb {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
    /// The key of the advisory lock that orders writes to the medium of this schema.
    pub(crate) lock_key: i64,
}

/// How to open a database.
#[derive(Debug, Clone)]
pub(crate) struct DbOptions<'a> {
    pub(crate) url: &'a str,
    pub(crate) schema: Option<&'a str>,
    pub(crate) max_connections: u32,
    pub(crate) connect_timeout: Duration,
}

impl Db {
    /// Opens the database named by `options.url` (`sqlite:…` or `postgres:…`), creating the
    /// SQLite file or the PostgreSQL schema when missing.
    pub(crate) async fn open(options: &DbOptions<'_>) -> Result<Self, EndpointError> {
        let url = options.url;
        if url.starts_with("sqlite:") {
            if options.schema.is_some() {
                return Err(EndpointError::Config(
                    "a schema applies to PostgreSQL only".to_owned(),
                ));
            }
            open_sqlite(url, options).await.map(Db::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            open_postgres(url, options).await.map(Db::Postgres)
        } else {
            Err(EndpointError::Config(
                "database URL must start with sqlite: or postgres:".to_owned(),
            ))
        }
    }

    /// A key naming this database within the process (the same medium opened twice gives
    /// the same key).
    pub(crate) fn identity(&self) -> String {
        match self {
            Db::Sqlite(sqlite) => format!("sqlite:{}", sqlite.path.display()),
            Db::Postgres(postgres) => {
                let options = postgres.pool.connect_options();
                format!(
                    "postgres://{}:{}/{}?schema={}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or(""),
                    postgres.schema
                )
            }
        }
    }

    /// Applies `migrations` (one set per backend), recording them in `table` rather than
    /// `_sqlx_migrations` so they never mix with the node's own migrations.
    pub(crate) async fn migrate(
        &self,
        migrations: Migrations,
        table: &'static str,
    ) -> Result<(), EndpointError> {
        match self {
            Db::Sqlite(sqlite) => {
                let mut migrator = migrations.sqlite;
                migrator.dangerous_set_table_name(table);
                migrator.run(&sqlite.writer).await?;
            }
            Db::Postgres(postgres) => {
                let mut migrator = migrations.postgres;
                migrator.dangerous_set_table_name(table);
                migrator.run(&postgres.pool).await?;
            }
        }
        Ok(())
    }

    /// `template` with `{now}` replaced by this backend's "now in microseconds" expression.
    pub(crate) fn sql(&self, template: &'static str) -> sqlx::AssertSqlSafe<Cow<'static, str>> {
        if !template.contains("{now}") {
            return sqlx::AssertSqlSafe(Cow::Borrowed(template));
        }
        let now = match self {
            Db::Sqlite(_) => NOW_SQLITE,
            Db::Postgres(_) => NOW_POSTGRES,
        };
        sqlx::AssertSqlSafe(Cow::Owned(template.replace("{now}", now)))
    }
}

/// Migrations for both backends.
#[derive(Debug)]
pub(crate) struct Migrations {
    pub(crate) sqlite: Migrator,
    pub(crate) postgres: Migrator,
}

async fn open_sqlite(url: &str, options: &DbOptions<'_>) -> Result<SqliteDb, EndpointError> {
    let connect = SqliteConnectOptions::from_str(url)?;
    let file = connect.get_filename().to_path_buf();
    if let Some(directory) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(directory).map_err(|error| {
            EndpointError::Config(format!(
                "cannot create the directory of {}: {error}",
                file.display()
            ))
        })?;
    }
    let path = canonical_path(&file);
    let mut open = OPEN_SQLITE.lock().await;
    if let Some(pools) = open.get(&path).and_then(Weak::upgrade) {
        return Ok(SqliteDb(pools));
    }
    let connect = connect
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(connect.clone())
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.connect_timeout)
        .connect_with(connect)
        .await?;
    let pools = Arc::new(SqlitePools {
        writer,
        reader,
        path: path.clone(),
    });
    open.retain(|_, pools| pools.strong_count() > 0);
    open.insert(path, Arc::downgrade(&pools));
    Ok(SqliteDb(pools))
}

/// The canonical form of a database file path that may not exist yet (its directory does).
fn canonical_path(file: &Path) -> PathBuf {
    if let Ok(path) = std::fs::canonicalize(file) {
        return path;
    }
    match (file.parent(), file.file_name()) {
        (Some(directory), Some(name)) => {
            let directory = if directory.as_os_str().is_empty() {
                Path::new(".")
            } else {
                directory
            };
            std::fs::canonicalize(directory)
                .map(|directory| directory.join(name))
                .unwrap_or_else(|_| file.to_path_buf())
        }
        _ => file.to_path_buf(),
    }
}

async fn open_postgres(url: &str, options: &DbOptions<'_>) -> Result<PostgresDb, EndpointError> {
    let mut connect = PgConnectOptions::from_str(url)?;
    let schema = options.schema.unwrap_or("public").to_owned();
    if !is_identifier(&schema) {
        return Err(EndpointError::Config(format!(
            "{schema:?} is not a schema name (lower-case letters, digits and '_')"
        )));
    }
    if schema != "public" {
        let mut conn = PgConnection::connect_with(&connect).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        connect = connect.options([("search_path", schema.as_str())]);
    }
    let pool = igl_store::postgres_pool_options()
        .max_connections(options.max_connections.max(2))
        .acquire_timeout(options.connect_timeout)
        .connect_with(connect)
        .await?;
    let lock_key = advisory_lock_key(&format!("igl-channel-medium/{schema}"));
    Ok(PostgresDb {
        pool,
        schema,
        lock_key,
    })
}

/// A schema name we can put into SQL unquoted.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// A stable 64-bit key for an advisory lock (FNV-1a), the same in every process.
fn advisory_lock_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Runs `$body` with `$exec` bound to a reading executor (`&Pool`) of `$db`.
macro_rules! on_reader {
    ($db:expr, |$exec:ident| $body:expr) => {
        match $db {
            $crate::endpoint::db::Db::Sqlite(sqlite) => {
                let $exec = &sqlite.reader;
                $body
            }
            $crate::endpoint::db::Db::Postgres(postgres) => {
                let $exec = &postgres.pool;
                $body
            }
        }
    };
}

/// Runs `$body` with `$exec` bound to a writing executor (`&Pool`, autocommit) of `$db`.
macro_rules! on_writer {
    ($db:expr, |$exec:ident| $body:expr) => {
        match $db {
            $crate::endpoint::db::Db::Sqlite(sqlite) => {
                let $exec = &sqlite.writer;
                $body
            }
            $crate::endpoint::db::Db::Postgres(postgres) => {
                let $exec = &postgres.pool;
                $body
            }
        }
    };
}

/// Runs `$body` in a write transaction holding the medium's write lock, with `$tx` bound
/// to the transaction, and commits when `$body` succeeds (`$body` evaluates to a
/// `Result`; an `Err` rolls back). The whole macro evaluates to that `Result`.
macro_rules! in_write_transaction {
    ($db:expr, |$tx:ident| $body:expr) => {
        match $db {
            $crate::endpoint::db::Db::Sqlite(sqlite) => {
                match sqlite.writer.begin_with("BEGIN IMMEDIATE").await {
                    Err(error) => Err(error.into()),
                    Ok(mut $tx) => match $body {
                        Ok(output) => $tx.commit().await.map(|()| output).map_err(Into::into),
                        Err(error) => Err(error),
                    },
                }
            }
            $crate::endpoint::db::Db::Postgres(postgres) => match postgres.pool.begin().await {
                Err(error) => Err(error.into()),
                Ok(mut $tx) => {
                    let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(postgres.lock_key)
                        .execute(&mut *$tx)
                        .await;
                    match locked {
                        Err(error) => Err(error.into()),
                        Ok(_) => match $body {
                            Ok(output) => $tx.commit().await.map(|()| output).map_err(Into::into),
                            Err(error) => Err(error),
                        },
                    }
                }
            },
        }
    };
}

pub(crate) use {in_write_transaction, on_reader, on_writer};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(
            advisory_lock_key("igl-channel-medium/public"),
            advisory_lock_key("igl-channel-medium/public")
        );
        assert_ne!(
            advisory_lock_key("igl-channel-medium/public"),
            advisory_lock_key("igl-channel-medium/t_1")
        );
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("t_0abc"));
        assert!(!is_identifier("Public"));
        assert!(!is_identifier("a;drop"));
        assert!(!is_identifier(""));
    }
}
