//! Server settings: the TOML file, then `PYREPL3_*` environment variables, then command-line
//! flags, each overriding the one before; their validation; and the [`ServiceConfig`] they
//! make (tenants, pool, limits).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;
use crate::pool::PoolConfig;
pub use crate::service::TenantConfig;
use crate::service::{Bounds, ServiceConfig};
use crate::session::SessionConfig;

/// Pool settings as they appear in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    pub min_idle: usize,
    pub max_sessions: usize,
    pub warmup_code: Option<String>,
    pub python: Option<PathBuf>,
    /// How long a new session's interpreter may take to answer its probe, and then its
    /// worker to become ready (each).
    pub start_timeout_secs: f64,
    /// Whether workers start with the server's environment (false: a minimal one, see
    /// docs/api.md; the server's variables, tokens included, never reach user code).
    pub inherit_env: bool,
    /// Variables set for every worker.
    pub env: std::collections::BTreeMap<String, String>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            min_idle: 2,
            max_sessions: 20,
            warmup_code: None,
            python: None,
            start_timeout_secs: 10.0,
            inherit_env: false,
            env: std::collections::BTreeMap::new(),
        }
    }
}

/// `[sandbox]` as it appears in the config file: on by default (docs/security.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// `false` (or `--sandbox off`): workers run as the server's user, in its namespaces.
    pub enabled: bool,
    pub network: crate::worker::Network,
    pub tmp_size_bytes: u64,
    pub uid_range: [u32; 2],
    pub bwrap: PathBuf,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        let d = crate::worker::SandboxConfig::default();
        SandboxSettings {
            enabled: true,
            network: d.network,
            tmp_size_bytes: d.tmp_size_bytes,
            uid_range: d.uid_range,
            bwrap: d.bwrap,
        }
    }
}

impl SandboxSettings {
    /// The sandbox sessions get, or `None` when it is off.
    pub fn config(&self) -> Option<crate::worker::SandboxConfig> {
        self.enabled.then(|| crate::worker::SandboxConfig {
            network: self.network,
            tmp_size_bytes: self.tmp_size_bytes,
            uid_range: self.uid_range,
            bwrap: self.bwrap.clone(),
            hidden_paths: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The file this was read from (set by `load`): hidden from sandboxed workers.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub tenants: Vec<TenantConfig>,
    pub pool: PoolSettings,
    pub sandbox: SandboxSettings,
    /// The durable store (checkpoints): a SQLite file, `:memory:` for one that lasts as
    /// long as the server. Default: `$XDG_DATA_HOME/pyrepl3/store.sqlite3`, else
    /// `~/.local/share/pyrepl3/store.sqlite3`.
    pub store: Option<PathBuf>,
    /// Largest `code` accepted (then 413).
    pub max_code_bytes: usize,
    /// Largest request body accepted (then 413).
    pub max_body_bytes: usize,
    /// How long an execution whose client disconnected waits for a reconnect before it is
    /// cancelled.
    pub reconnect_grace_secs: f64,
    /// At shutdown: how long running executions may still take before they end with
    /// `ServerShutdown`.
    pub shutdown_grace_secs: f64,
    /// At shutdown, after the shutdown grace: how long connections may still take to finish
    /// their answers before they are dropped.
    pub shutdown_drain_secs: f64,
    /// Origins whose pages may call the API from a browser (CORS): `scheme://host[:port]`
    /// each, or `["*"]` for any; empty (the default): none.
    pub cors_origins: Vec<String>,
    /// Open connections at most (WebSockets included); beyond it a connection is answered
    /// `503` and closed.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, from its start or from
    /// the end of the previous answer (so also how long a keep-alive connection may sit idle)
    /// before it is closed.
    pub header_read_timeout_secs: f64,
    // --- Memory bounds and WebSocket liveness (docs/api.md, "Bounds") ---
    /// Executions queued behind the running one, per session (then 429 queue_full).
    pub max_queued_executions: usize,
    /// Output bytes a collected (non-streaming) execute answer keeps (then `truncated`).
    pub max_output_bytes: usize,
    /// Largest rich output (one display, one result's MIME bundle), in bytes; a larger
    /// display is replaced by a note saying so.
    pub max_display_bytes: usize,
    /// Bytes of finished execution logs kept per session, and in the whole server.
    pub retained_log_bytes_per_session: usize,
    pub retained_log_bytes_total: usize,
    /// Messages waiting to be written to one WebSocket before its client counts as not
    /// reading (and is disconnected).
    pub ws_send_queue: usize,
    /// Ping after this much silence from a WebSocket client; disconnect if no pong within
    /// the timeout.
    pub ws_ping_interval_secs: f64,
    pub ws_pong_timeout_secs: f64,
    /// `[files]`: the size of files uploaded to a session (per file, and all of a
    /// session's directory) and of a listing (docs/api.md, "Files").
    pub files: crate::session::FileLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            config_file: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8765)),
            tenants: Vec::new(),
            pool: PoolSettings::default(),
            sandbox: SandboxSettings::default(),
            store: None,
            max_code_bytes: 1024 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            reconnect_grace_secs: 30.0,
            shutdown_grace_secs: 5.0,
            shutdown_drain_secs: 5.0,
            cors_origins: Vec::new(),
            max_connections: 1000,
            header_read_timeout_secs: 30.0,
            max_queued_executions: Bounds::default().max_queued_executions,
            max_output_bytes: Bounds::default().max_output_bytes,
            max_display_bytes: crate::session::DEFAULT_MAX_DISPLAY_BYTES,
            retained_log_bytes_per_session: Bounds::default().retained_log_bytes_per_session,
            retained_log_bytes_total: Bounds::default().retained_log_bytes_total,
            ws_send_queue: Bounds::default().ws_send_queue,
            ws_ping_interval_secs: Bounds::default().ws_ping_interval.as_secs_f64(),
            ws_pong_timeout_secs: Bounds::default().ws_pong_timeout.as_secs_f64(),
            files: crate::session::FileLimits::default(),
        }
    }
}

/// Overrides from the command line (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub python: Option<PathBuf>,
    pub min_idle: Option<usize>,
    pub max_sessions: Option<usize>,
    pub max_connections: Option<usize>,
    /// `--sandbox on|off`.
    pub sandbox: Option<bool>,
    /// `--store PATH`.
    pub store: Option<PathBuf>,
}

/// Where the store is when no setting says: the user's data directory.
fn default_store_path() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("pyrepl3").join("store.sqlite3")
}

/// A validated number of seconds (see `ServerConfig::validate`) as a duration.
fn secs(s: f64) -> Duration {
    crate::time::duration_from_secs(s).unwrap_or(Duration::ZERO)
}

fn check_secs(what: &str, secs: f64) -> Result<(), Error> {
    if crate::time::duration_from_secs(secs).is_none() {
        return Err(Error::InvalidConfig(format!(
            "{what} = {secs}: expected a number of seconds from 0 to {}",
            crate::time::MAX_SECS
        )));
    }
    Ok(())
}

impl ServerConfig {
    /// File (if any), then environment, then `flags`. With no tenant at all, one tenant with
    /// a random token is made; `generated_token` says so (the caller prints it).
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<(ServerConfig, bool), Error> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::InvalidConfig(format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str::<ServerConfig>(&text)
                    .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?
            }
            None => ServerConfig::default(),
        };
        config.config_file =
            file.map(|path| std::fs::canonicalize(path).unwrap_or(path.to_path_buf()));
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let env_overrides = Overrides {
            listen: parse_env(env("PYREPL3_LISTEN"), "PYREPL3_LISTEN")?,
            token: env("PYREPL3_TOKEN"),
            python: env("PYREPL3_PYTHON").map(PathBuf::from),
            min_idle: parse_env(env("PYREPL3_MIN_IDLE"), "PYREPL3_MIN_IDLE")?,
            max_sessions: parse_env(env("PYREPL3_MAX_SESSIONS"), "PYREPL3_MAX_SESSIONS")?,
            max_connections: parse_env(env("PYREPL3_MAX_CONNECTIONS"), "PYREPL3_MAX_CONNECTIONS")?,
            sandbox: match env("PYREPL3_SANDBOX").as_deref() {
                None => None,
                Some("on") => Some(true),
                Some("off") => Some(false),
                Some(other) => {
                    return Err(Error::InvalidConfig(format!(
                        "PYREPL3_SANDBOX = {other:?}: expected on or off"
                    )))
                }
            },
            store: env("PYREPL3_STORE").map(PathBuf::from),
        };
        config.apply(&env_overrides);
        config.apply(flags);
        let generated = config.tenants.is_empty();
        if generated {
            config.tenants.push(TenantConfig {
                token: uuid::Uuid::new_v4().simple().to_string(),
                ..TenantConfig::default()
            });
        }
        config.validate()?;
        Ok((config, generated))
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(listen) = o.listen {
            self.listen = listen;
        }
        if let Some(token) = &o.token {
            // A token given on its own is the default tenant's.
            match self.tenants.iter_mut().find(|t| t.name == "default") {
                Some(t) => t.token = token.clone(),
                None => self.tenants.push(TenantConfig {
                    token: token.clone(),
                    ..TenantConfig::default()
                }),
            }
        }
        if let Some(python) = &o.python {
            self.pool.python = Some(python.clone());
        }
        if let Some(n) = o.min_idle {
            self.pool.min_idle = n;
        }
        if let Some(n) = o.max_sessions {
            self.pool.max_sessions = n;
        }
        if let Some(n) = o.max_connections {
            self.max_connections = n;
        }
        if let Some(on) = o.sandbox {
            self.sandbox.enabled = on;
        }
        if let Some(store) = &o.store {
            self.store = Some(store.clone());
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if let Some(sandbox) = self.sandbox.config() {
            sandbox.validate()?;
        }
        check_secs("reconnect_grace_secs", self.reconnect_grace_secs)?;
        check_secs("shutdown_grace_secs", self.shutdown_grace_secs)?;
        check_secs("pool.start_timeout_secs", self.pool.start_timeout_secs)?;
        check_secs("shutdown_drain_secs", self.shutdown_drain_secs)?;
        check_secs("header_read_timeout_secs", self.header_read_timeout_secs)?;
        if self.header_read_timeout_secs <= 0.0 {
            return Err(Error::InvalidConfig(
                "header_read_timeout_secs must be above 0".to_string(),
            ));
        }
        super::cors::check_origins(&self.cors_origins)?;
        if self.max_display_bytes < 1024 {
            return Err(Error::InvalidConfig(
                "max_display_bytes must be at least 1024".to_string(),
            ));
        }
        if self.max_connections == 0 {
            return Err(Error::InvalidConfig(
                "max_connections must be at least 1".to_string(),
            ));
        }
        check_secs("ws_ping_interval_secs", self.ws_ping_interval_secs)?;
        check_secs("ws_pong_timeout_secs", self.ws_pong_timeout_secs)?;
        if self.ws_send_queue == 0
            || self.ws_ping_interval_secs <= 0.0
            || self.ws_pong_timeout_secs <= 0.0
        {
            return Err(Error::InvalidConfig(
                "ws_send_queue, ws_ping_interval_secs and ws_pong_timeout_secs must be above 0"
                    .into(),
            ));
        }
        let files = &self.files;
        if files.max_file_bytes == 0 || files.max_session_bytes == 0 || files.max_list_entries == 0
        {
            return Err(Error::InvalidConfig(
                "files.max_file_bytes, files.max_session_bytes and files.max_list_entries must be above 0"
                    .into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for t in &self.tenants {
            // Sessions belong to a tenant by name: two tenants with one name would share them.
            if !names.insert(&t.name) {
                return Err(Error::InvalidConfig(format!(
                    "two tenants are named {:?}; names must be unique",
                    t.name
                )));
            }
            check_secs(
                &format!("tenant {:?}: idle_timeout_secs", t.name),
                t.idle_timeout_secs,
            )?;
            if let Some(limit) = t.execution_time_limit_secs {
                check_secs(
                    &format!("tenant {:?}: execution_time_limit_secs", t.name),
                    limit,
                )?;
            }
            if !(t.rate_per_second.is_finite() && t.rate_per_second > 0.0) || t.burst == 0 {
                return Err(Error::InvalidConfig(format!(
                    "tenant {:?}: rate_per_second must be above 0 and burst at least 1",
                    t.name
                )));
            }
            if t.token.len() < 8 {
                return Err(Error::InvalidConfig(format!(
                    "tenant {:?}: a token needs at least 8 characters",
                    t.name
                )));
            }
            if !seen.insert(&t.token) {
                return Err(Error::InvalidConfig(format!(
                    "tenant {:?}: its token is used by another tenant",
                    t.name
                )));
            }
        }
        Ok(())
    }

    pub fn pool_config(&self) -> PoolConfig {
        let mut session = SessionConfig::default();
        if let Some(python) = &self.pool.python {
            session.python = python.clone();
        }
        session.start_timeout = secs(self.pool.start_timeout_secs);
        session.max_display_bytes = self.max_display_bytes;
        session.inherit_env = self.pool.inherit_env;
        session.env = self.pool.env.clone().into_iter().collect();
        session.sandbox = self.sandbox.config().map(|mut sandbox| {
            sandbox.hidden_paths.extend(self.config_file.clone());
            // The store holds every tenant's checkpoints (and SQLite's companions of it).
            let store = self.store.clone().unwrap_or_else(default_store_path);
            for suffix in ["", "-wal", "-shm"] {
                let mut path = store.clone().into_os_string();
                path.push(suffix);
                sandbox.hidden_paths.push(PathBuf::from(path));
            }
            sandbox
        });
        PoolConfig {
            min_idle: self.pool.min_idle,
            max_sessions: self.pool.max_sessions,
            warmup_code: self.pool.warmup_code.clone(),
            // A session leaves the pool for good once a tenant has used it: never recycled.
            recycle_after_executions: None,
            // A request waits this long for a session when the pool is exhausted (then 503).
            acquire_timeout: Some(Duration::from_secs(10)),
            session,
            ..PoolConfig::default()
        }
    }

    /// What the service runs with: the tenants, the pool, the limits and graces.
    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            tenants: self.tenants.clone(),
            pool: self.pool_config(),
            max_code_bytes: self.max_code_bytes,
            reconnect_grace: self.reconnect_grace(),
            shutdown_grace: self.shutdown_grace(),
            store: Some(self.store.clone().unwrap_or_else(default_store_path)),
            bounds: Bounds {
                max_queued_executions: self.max_queued_executions,
                max_output_bytes: self.max_output_bytes,
                retained_log_bytes_per_session: self.retained_log_bytes_per_session,
                retained_log_bytes_total: self.retained_log_bytes_total,
                ws_send_queue: self.ws_send_queue,
                ws_ping_interval: secs(self.ws_ping_interval_secs),
                ws_pong_timeout: secs(self.ws_pong_timeout_secs),
                files: self.files,
            },
        }
    }

    pub fn reconnect_grace(&self) -> Duration {
        secs(self.reconnect_grace_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        secs(self.shutdown_grace_secs)
    }

    pub fn shutdown_drain(&self) -> Duration {
        secs(self.shutdown_drain_secs)
    }

    pub fn header_read_timeout(&self) -> Duration {
        secs(self.header_read_timeout_secs)
    }
}

fn parse_env<T: std::str::FromStr>(value: Option<String>, name: &str) -> Result<Option<T>, Error>
where
    T::Err: std::fmt::Display,
{
    value
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| Error::InvalidConfig(format!("{name}={v:?}: {e}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_a_missing_token_is_generated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:9000"
[pool]
min_idle = 1
env = { LD_LIBRARY_PATH = "/opt/py/lib" }
[[tenants]]
name = "alice"
token = "alice-token-123"
max_sessions = 3
"#,
        )
        .unwrap();
        let flags = Overrides {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            max_sessions: Some(7),
            ..Overrides::default()
        };
        let (config, generated) = ServerConfig::load(Some(&path), &flags).unwrap();
        assert!(!generated);
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.pool.min_idle, 1);
        assert_eq!(config.pool.max_sessions, 7);
        assert_eq!(config.tenants[0].max_sessions, 3);
        // Workers get the configured variables, and none of the server's.
        let session = config.pool_config().session;
        assert!(!session.inherit_env);
        assert_eq!(
            session.env,
            [("LD_LIBRARY_PATH".to_string(), "/opt/py/lib".to_string())]
        );

        let (config, generated) = ServerConfig::load(None, &Overrides::default()).unwrap();
        assert!(generated);
        assert_eq!(config.tenants.len(), 1);
        assert!(config.tenants[0].token.len() >= 32);
    }

    #[test]
    fn connection_settings_come_from_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(
            &path,
            "max_connections = 50\nheader_read_timeout_secs = 2.5\nshutdown_drain_secs = 0.5\n",
        )
        .unwrap();
        let (config, _) = ServerConfig::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.max_connections, 50);
        assert_eq!(config.header_read_timeout(), Duration::from_millis(2500));
        assert_eq!(config.shutdown_drain(), Duration::from_millis(500));
        let flags = Overrides {
            max_connections: Some(7),
            ..Overrides::default()
        };
        let (config, _) = ServerConfig::load(Some(&path), &flags).unwrap();
        assert_eq!(config.max_connections, 7);
        for (bad, says) in [
            ("max_connections = 0\n", "max_connections"),
            ("header_read_timeout_secs = 0\n", "header_read_timeout_secs"),
            ("shutdown_drain_secs = -1\n", "shutdown_drain_secs"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = ServerConfig::load(Some(&path), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listen = 5\nunknown = true\n").unwrap();
        let err = ServerConfig::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
        std::fs::write(&path, "[[tenants]]\nname = \"x\"\ntoken = \"short\"\n").unwrap();
        let err = ServerConfig::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("8 characters"), "{err}");
    }
}
