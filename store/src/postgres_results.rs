//! Celery task results in PostgreSQL, written exactly where and how Celery's database
//! result backend (`result_backend = "db+postgresql://..."`) keeps them, so that
//! `AsyncResult(task_id).get()` on the scheduler's side reads them unchanged:
//!
//! - table `celery_taskmeta` (`celery/backends/database/models.py`): `id` from the
//!   sequence `task_id_sequence`, `task_id` unique, `status`, `result` (a pickle: Celery
//!   5.4-5.6 store the column as SQLAlchemy's `PickleType`; 5.7 reads serializer bytes
//!   and falls back to unpickling), `date_done` (UTC, without zone), `traceback`;
//! - one row per task, inserted on its first state and updated afterwards, as
//!   `DatabaseBackend._store_result` does.
//!
//! The table is created when missing, as Celery's own `create_all` would create it, with
//! the columns of `result_extended = True` too (a client that does not use them ignores
//! them; one that does would otherwise find them missing).

use async_trait::async_trait;
use specrun_core::backoff::Backoff;
use specrun_core::celery::CeleryState;
use specrun_core::pickle::to_pickle;
use specrun_core::ports::{CeleryResultBackend, StoreError};
use specrun_core::service_url::redact_url;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls};

/// The DDL SQLAlchemy emits for Celery's `Task`/`TaskExtended` model on PostgreSQL, made
/// idempotent.
const CREATE_TABLE: &str = "
CREATE SEQUENCE IF NOT EXISTS task_id_sequence;
CREATE TABLE IF NOT EXISTS celery_taskmeta (
    id INTEGER NOT NULL,
    task_id VARCHAR(155),
    status VARCHAR(50),
    result BYTEA,
    date_done TIMESTAMP WITHOUT TIME ZONE,
    traceback TEXT,
    name VARCHAR(155),
    args BYTEA,
    kwargs BYTEA,
    worker VARCHAR(155),
    retries INTEGER,
    queue VARCHAR(155),
    PRIMARY KEY (id),
    UNIQUE (task_id)
);";

/// Insert or update one task's row (`task_id` is unique).
const UPSERT: &str = "
INSERT INTO celery_taskmeta (id, task_id, status, result, date_done, traceback)
VALUES (nextval('task_id_sequence'), $1, $2, $3, (now() AT TIME ZONE 'utc'), $4)
ON CONFLICT (task_id) DO UPDATE SET
    status = EXCLUDED.status,
    result = EXCLUDED.result,
    date_done = EXCLUDED.date_done,
    traceback = EXCLUDED.traceback";

/// Celery's database result backend on one PostgreSQL database.
pub struct PostgresCeleryResults {
    config: Config,
    /// The URL with its password masked, for messages.
    shown: String,
    client: Mutex<Option<Client>>,
    retry: Backoff,
}

impl PostgresCeleryResults {
    /// A writer for the `postgresql://` URL (see
    /// [`specrun_core::service_url::parse_postgres_backend`]); connects on first use, and
    /// again after the connection is lost, retrying for up to `retry`'s budget.
    pub fn new(url: &str, retry: Backoff) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            StoreError::backend(shown.clone(), format!("not a PostgreSQL URL: {e}"))
        })?;
        Ok(PostgresCeleryResults {
            config,
            shown,
            client: Mutex::new(None),
            retry,
        })
    }

    /// Connects and makes sure the table exists: fails early on a wrong URL or password.
    pub async fn check(&self) -> Result<(), StoreError> {
        let mut client = self.client.lock().await;
        self.connected(&mut client).await.map(|_| ())
    }

    async fn connected<'a>(&self, slot: &'a mut Option<Client>) -> Result<&'a Client, StoreError> {
        if slot.as_ref().is_some_and(Client::is_closed) {
            *slot = None;
        }
        if slot.is_none() {
            let (client, connection) = self
                .config
                .connect(NoTls)
                .await
                .map_err(|e| self.error(e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "the result backend's connection ended");
                }
            });
            create_table(&client).await.map_err(|e| self.error(e))?;
            *slot = Some(client);
        }
        slot.as_ref()
            .ok_or_else(|| StoreError::unavailable(self.shown.clone(), "not connected"))
    }

    fn error(&self, e: tokio_postgres::Error) -> StoreError {
        // A refused statement (a missing permission, a table of another shape) does not
        // mend by itself; everything else (no connection, a restart) may.
        if e.as_db_error().is_some() && !e.is_closed() {
            StoreError::backend(self.shown.clone(), e)
        } else {
            StoreError::unavailable(self.shown.clone(), e)
        }
    }

    async fn store_once(
        &self,
        task_id: &str,
        state: &str,
        result: &[u8],
        traceback: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut slot = self.client.lock().await;
        let client = self.connected(&mut slot).await?;
        let stored = client
            .execute(UPSERT, &[&task_id, &state, &result, &traceback])
            .await;
        match stored {
            Ok(_) => Ok(()),
            Err(e) => {
                let error = self.error(e);
                if error.is_transient() {
                    *slot = None;
                }
                Err(error)
            }
        }
    }
}

/// Creates the sequence and table when missing. Two runners starting together may race on
/// the catalog (a unique violation on `pg_type`); the loser finds the table made.
async fn create_table(client: &Client) -> Result<(), tokio_postgres::Error> {
    match client.batch_execute(CREATE_TABLE).await {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            client.batch_execute(CREATE_TABLE).await
        }
        other => other,
    }
}

#[async_trait]
impl CeleryResultBackend for PostgresCeleryResults {
    async fn store_result(
        &self,
        task_id: &str,
        state: CeleryState,
        result: serde_json::Value,
        traceback: Option<&str>,
    ) -> Result<(), StoreError> {
        let pickled = to_pickle(&result);
        crate::retry::retry(&self.retry, "store_result", task_id, || {
            self.store_once(task_id, state.as_str(), &pickled, traceback)
        })
        .await
    }
}
