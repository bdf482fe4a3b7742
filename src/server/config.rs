//! Server settings: the TOML file, then `PYREPL3_*` environment variables, then command-line
//! flags, each overriding the one before; their validation; and the [`ServiceConfig`] they
//! make (tenants, pool, limits).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;
use crate::pool::PoolConfig;
use crate::service::ServiceConfig;
pub use crate::service::TenantConfig;
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
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            min_idle: 2,
            max_sessions: 20,
            warmup_code: None,
            python: None,
            start_timeout_secs: 10.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tenants: Vec<TenantConfig>,
    pub pool: PoolSettings,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8765)),
            tenants: Vec::new(),
            pool: PoolSettings::default(),
            max_code_bytes: 1024 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            reconnect_grace_secs: 30.0,
            shutdown_grace_secs: 5.0,
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
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let env_overrides = Overrides {
            listen: parse_env(env("PYREPL3_LISTEN"), "PYREPL3_LISTEN")?,
            token: env("PYREPL3_TOKEN"),
            python: env("PYREPL3_PYTHON").map(PathBuf::from),
            min_idle: parse_env(env("PYREPL3_MIN_IDLE"), "PYREPL3_MIN_IDLE")?,
            max_sessions: parse_env(env("PYREPL3_MAX_SESSIONS"), "PYREPL3_MAX_SESSIONS")?,
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
    }

    fn validate(&self) -> Result<(), Error> {
        check_secs("reconnect_grace_secs", self.reconnect_grace_secs)?;
        check_secs("shutdown_grace_secs", self.shutdown_grace_secs)?;
        check_secs("pool.start_timeout_secs", self.pool.start_timeout_secs)?;
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
        }
    }

    pub fn reconnect_grace(&self) -> Duration {
        secs(self.reconnect_grace_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        secs(self.shutdown_grace_secs)
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

        let (config, generated) = ServerConfig::load(None, &Overrides::default()).unwrap();
        assert!(generated);
        assert_eq!(config.tenants.len(), 1);
        assert!(config.tenants[0].token.len() >= 32);
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
