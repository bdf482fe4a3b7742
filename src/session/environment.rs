//! A session's own environment: the variables and working directory a client gives a session
//! when it takes it (`POST /v1/sessions` `env` and `cwd`, `pyrepl3 exec --env`), their
//! validation (names, sizes, the names the service relies on and refuses), the resolution of
//! `cwd` inside the session's directory, and [`Session::set_environment`], which applies them
//! to the live worker (an internal call to the agent) and has the session's core keep them,
//! so every worker that replaces this one (a crash, `restart`, a cancel's kill) starts with
//! the same variables in the same directory. The core is their one owner once set.
//!
//! Also the environment variables between host and agent that this feature adds:
//! `PYREPL3_CWD` (the directory a replacing worker starts in) and `PYREPL3_PACKAGES` (the
//! session's package prefix; docs/protocol.md).

use std::path::{Component, Path, PathBuf};

use super::{Event, ExecuteOptions, Session};
use crate::error::Error;

/// The agent's variable naming the working directory a worker starts in (it `chdir`s there,
/// making it if it is missing; the process itself is started in the session's directory,
/// which is what a sandbox binds).
pub(crate) const CWD_VAR: &str = "PYREPL3_CWD";
/// The agent's variable carrying the session's own variables (a JSON object), which the agent
/// puts in `os.environ` at start. Never the variables themselves in the start environment:
/// that is also the environment of what starts the worker (`bwrap`, `setpriv`, run as root
/// by a root server), on which the dynamic linker would act (`LD_DEBUG_OUTPUT`,
/// `GLIBC_TUNABLES`...); and interpreter-start variables (`PYTHONHASHSEED`...) would apply
/// to a replacing worker but not to the pooled one the session began with.
pub(crate) const SESSION_ENV_VAR: &str = "PYREPL3_SESSION_ENV";
/// Bytes of the variables as they travel in [`SESSION_ENV_VAR`] (JSON, escapes included):
/// one environment string, which the kernel takes up to 128 KiB of.
pub const MAX_ENCODED_BYTES: usize = 120 * 1024;
/// The agent's variable naming the session's package prefix (`pip install --prefix`).
pub(crate) const PACKAGES_VAR: &str = "PYREPL3_PACKAGES";
/// Where the package prefix is, inside a session's own directory.
pub const PACKAGES_SUBDIR: &str = ".pyrepl3/packages";
/// The directory of the session's own that holds it, at the top of the session's directory
/// (left out of file listings: it is the service's, not the user's).
pub const SERVICE_SUBDIR: &str = ".pyrepl3";

/// Variables a session may get at most.
pub const MAX_VARS: usize = 128;
/// Bytes of one name, at most.
pub const MAX_NAME_BYTES: usize = 128;
/// Bytes of one value, at most.
pub const MAX_VALUE_BYTES: usize = 32 << 10;
/// Bytes of all names and values together, at most.
pub const MAX_TOTAL_BYTES: usize = 64 << 10;
/// Bytes of `cwd`, at most.
pub const MAX_CWD_BYTES: usize = 1024;

/// Names a client's environment may not set: the service relies on them. `PYREPL3_*` (the
/// host ⇄ agent variables) is refused as a prefix, besides these.
pub const REFUSED_NAMES: &[&str] = &[
    // The session's packages (docs/api.md, "Packages per session"): where pip installs and
    // where Python finds what was installed.
    "PIP_PREFIX",
    "PIP_TARGET",
    "PIP_USER",
    "PYTHONPATH",
    // The worker's interpreter must start after a restart, and find its own library.
    "PYTHONHOME",
    "PYTHONPLATLIBDIR",
    "PYTHONEXECUTABLE",
    // Set by the host for every worker: the interpreter's directory and the session's.
    "PATH",
    "HOME",
    // Code loaded into every process the worker starts.
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
];

/// The prefix of the names the host and the agent use between themselves.
pub const RESERVED_PREFIX: &str = "PYREPL3_";

/// What a client asks for: variables, and a working directory relative to the session's
/// directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEnvironment {
    /// Set in `os.environ` (so child processes inherit them), in this order.
    pub vars: Vec<(String, String)>,
    /// Relative to the session's own directory; made if missing. `None`: that directory.
    pub cwd: Option<PathBuf>,
}

impl SessionEnvironment {
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty() && self.cwd.is_none()
    }

    /// Checks every rule that needs no file system: names (`[A-Za-z_][A-Za-z0-9_]*`, not
    /// refused), values (no NUL), the bounds, and `cwd` (relative, no `..`, no NUL).
    pub fn validate(&self) -> Result<(), Error> {
        if self.vars.len() > MAX_VARS {
            return Err(invalid(format!(
                "{} environment variables; at most {MAX_VARS} are taken",
                self.vars.len()
            )));
        }
        let mut total = 0;
        for (name, value) in &self.vars {
            check_name(name)?;
            if let Some(refused) = refused(name) {
                return Err(invalid(format!(
                    "the environment variable {name} cannot be set: {refused}"
                )));
            }
            check_value(name, value)?;
            total += name.len() + value.len();
        }
        if total > MAX_TOTAL_BYTES {
            return Err(invalid(format!(
                "the environment is {total} bytes; at most {MAX_TOTAL_BYTES} are taken"
            )));
        }
        let encoded = encode_vars(self.vars.iter()).len();
        if encoded > MAX_ENCODED_BYTES {
            return Err(invalid(format!(
                "the environment is {encoded} bytes as JSON (control characters take six \
                 each); at most {MAX_ENCODED_BYTES} are taken"
            )));
        }
        if let Some(cwd) = &self.cwd {
            check_relative(cwd)?;
        }
        Ok(())
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidEnvironment(message)
}

/// A name as a shell and Python take it: `[A-Za-z_][A-Za-z0-9_]*`, bounded.
fn check_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(invalid(format!(
            "{:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
            clip(name)
        )));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "the environment variable name {}... is over {MAX_NAME_BYTES} bytes",
            clip(name)
        )));
    }
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), Error> {
    if value.contains('\0') {
        return Err(invalid(format!(
            "the value of {name} holds a NUL character"
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid(format!(
            "the value of {name} is {} bytes; at most {MAX_VALUE_BYTES} are taken",
            value.len()
        )));
    }
    Ok(())
}

/// Why `name` may not be set by a client, if it may not.
pub fn refused(name: &str) -> Option<&'static str> {
    if name.starts_with(RESERVED_PREFIX) {
        return Some("PYREPL3_* names are the service's own");
    }
    REFUSED_NAMES
        .contains(&name)
        .then_some("the service sets it itself (see docs/api.md, \"Per-session environment\")")
}

/// The rule for the variables of [`crate::SessionConfig::env`] (the operator's, or
/// `pyrepl3 exec --env`): any name a process environment can hold (not empty, no `=`, no
/// NUL; values without NUL), except `PYREPL3_*`, which would break the worker's start.
pub(crate) fn check_config_env(env: &[(String, String)]) -> Result<(), Error> {
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(Error::InvalidConfig(format!(
                "{:?} is not an environment variable name",
                clip(name)
            )));
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(Error::InvalidConfig(format!(
                "the environment variable {name} cannot be set: PYREPL3_* names are the service's own"
            )));
        }
        if value.contains('\0') {
            return Err(Error::InvalidConfig(format!(
                "the value of {name} holds a NUL character"
            )));
        }
    }
    Ok(())
}

fn clip(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// A relative path of normal components only (no `..`, no root, no NUL), bounded.
fn check_relative(cwd: &Path) -> Result<(), Error> {
    let text = cwd.as_os_str().as_encoded_bytes();
    if text.len() > MAX_CWD_BYTES {
        return Err(invalid(format!(
            "cwd is {} bytes; at most {MAX_CWD_BYTES} are taken",
            text.len()
        )));
    }
    if text.contains(&0) {
        return Err(invalid("cwd holds a NUL character".into()));
    }
    for component in cwd.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid(format!(
                    "cwd {:?} has a `..`: it must stay inside the session's directory",
                    cwd.display().to_string()
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "cwd {:?} is absolute: it is relative to the session's directory",
                    cwd.display().to_string()
                )))
            }
        }
    }
    Ok(())
}

/// `relative` inside `home` (the session's directory), as an absolute path: each component
/// that exists is resolved (a symbolic link may lead elsewhere inside `home`, never out of it)
/// and must be a directory; the first missing one and those after it are taken as they are
/// (they are plain names), and made by the worker itself, as the session's own user, when it
/// takes the directory (`environ`, `PYREPL3_CWD`). The host makes nothing in a directory the
/// session's code can change. Blocking (it reads the file system).
pub(crate) fn resolve_cwd(home: &Path, relative: &Path) -> Result<PathBuf, Error> {
    check_relative(relative)?;
    let home_real =
        std::fs::canonicalize(home).map_err(Error::io("resolving the session's directory"))?;
    let mut path = home_real.clone();
    let mut exists = true;
    for component in relative.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        path.push(name);
        if !exists {
            continue;
        }
        match std::fs::canonicalize(&path) {
            Ok(real) => path = real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Missing, or a dangling link: a link is refused (where it points may be made
                // by the session's code later), a missing name is made by the worker.
                if std::fs::symlink_metadata(&path).is_ok() {
                    return Err(invalid(format!(
                        "cwd {:?} goes through a symbolic link that leads nowhere",
                        relative.display().to_string()
                    )));
                }
                exists = false;
                continue;
            }
            Err(e) => return Err(Error::io("resolving the session's cwd")(e)),
        }
        if !path.starts_with(&home_real) {
            return Err(invalid(format!(
                "cwd {:?} leads outside the session's directory (a symbolic link)",
                relative.display().to_string()
            )));
        }
        if !path.is_dir() {
            return Err(invalid(format!(
                "cwd {:?} is not a directory",
                relative.display().to_string()
            )));
        }
    }
    Ok(path)
}

/// What the core keeps once an environment is set: the variables, and the absolute working
/// directory (resolved).
#[derive(Debug, Clone, Default)]
pub(crate) struct Kept {
    pub vars: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl Kept {
    /// The variables a replacing worker starts with, besides the operator's.
    pub fn worker_env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        let cwd = self
            .cwd
            .as_ref()
            .map(|cwd| (CWD_VAR.to_string(), cwd.to_string_lossy().into_owned()));
        let vars = (!self.vars.is_empty())
            .then(|| (SESSION_ENV_VAR.to_string(), encode_vars(self.vars.iter())));
        vars.into_iter().chain(cwd)
    }
}

impl Session {
    /// Gives the session its own variables and working directory (`cwd` relative to
    /// [`Session::directory`]): applied to the live worker at once (`os.environ`, `chdir`; run
    /// as an execution, queued behind those before it) and kept by the session for every
    /// worker that replaces this one. The variables are merged into those already set.
    /// Refused ([`Error::InvalidEnvironment`]) when [`SessionEnvironment::validate`] fails
    /// or `cwd` resolves outside the session's directory. A pooled session given an
    /// environment is the caller's: discard it rather than give it back to the pool (the
    /// service does).
    pub async fn set_environment(&self, environment: SessionEnvironment) -> Result<(), Error> {
        environment.validate()?;
        let cwd = match environment.cwd.clone() {
            Some(relative) => {
                let home = self.directory().to_path_buf();
                let resolved = tokio::task::spawn_blocking(move || resolve_cwd(&home, &relative))
                    .await
                    .map_err(|e| Error::Io {
                        context: "resolving the session's cwd",
                        source: std::io::Error::other(e),
                    })??;
                Some(resolved)
            }
            None => None,
        };
        // Kept first: a worker that replaces this one from now on starts with them, and the
        // call below applies them to the one running (again, harmlessly, to a new one).
        let kept = Kept {
            vars: environment.vars.clone(),
            cwd: cwd.clone(),
        };
        self.request(|reply| super::requests::Command::SetEnvironment { kept, reply })
            .await?;
        let vars: serde_json::Map<String, serde_json::Value> = environment
            .vars
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let call = serde_json::json!({
            "call": "environ",
            "set": vars,
            "cwd": cwd.map(|c| c.to_string_lossy().into_owned()),
        });
        let outcome = self
            .submit(String::new(), ExecuteOptions::default(), Some(call))
            .outcome()
            .await;
        match outcome.terminal {
            Event::Result { .. } => Ok(()),
            Event::Error {
                exception_type,
                exception_message,
                ..
            } => Err(Error::SessionDead(format!(
                "the worker could not take the session's environment: {exception_type}: {exception_message}"
            ))),
            other => Err(Error::SessionDead(format!(
                "the worker could not take the session's environment: {other:?}"
            ))),
        }
    }
}

/// The variables as one JSON object, for [`SESSION_ENV_VAR`].
fn encode_vars<'a>(vars: impl Iterator<Item = &'a (String, String)>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = vars
        .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> SessionEnvironment {
        SessionEnvironment {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: None,
        }
    }

    #[test]
    fn names_values_and_refused_names_are_checked() {
        assert!(env(&[("A_1", "x"), ("_b", "")]).validate().is_ok());
        for bad in ["", "1A", "A-B", "A=B", "É"] {
            assert!(env(&[(bad, "x")]).validate().is_err(), "{bad:?}");
        }
        let e = env(&[("PYREPL3_FD", "9")]).validate().unwrap_err();
        assert!(e.to_string().contains("PYREPL3_FD"), "{e}");
        for name in REFUSED_NAMES {
            let e = env(&[(name, "x")]).validate().unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        assert!(env(&[("A", "a\0b")]).validate().is_err());
        let many: Vec<(String, String)> = (0..=MAX_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        let too_many = SessionEnvironment {
            vars: many,
            cwd: None,
        };
        assert!(too_many.validate().is_err());
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(env(&[("A", &big)]).validate().is_err());
    }

    #[test]
    fn cwd_must_stay_inside() {
        let with = |cwd: &str| SessionEnvironment {
            vars: Vec::new(),
            cwd: Some(PathBuf::from(cwd)),
        };
        assert!(with("a/b").validate().is_ok());
        assert!(with("./a").validate().is_ok());
        assert!(with("../a").validate().is_err());
        assert!(with("a/../../b").validate().is_err());
        assert!(with("/etc").validate().is_err());
    }

    #[test]
    fn cwd_resolves_inside_and_a_link_out_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(home.path()).unwrap();
        // Missing: taken as it is, made later by the worker.
        assert_eq!(
            resolve_cwd(home.path(), Path::new("a/b")).unwrap(),
            real.join("a/b")
        );
        assert!(!real.join("a").exists(), "the host makes nothing");
        std::fs::create_dir_all(real.join("x/y")).unwrap();
        std::os::unix::fs::symlink("x", home.path().join("in")).unwrap();
        assert_eq!(
            resolve_cwd(home.path(), Path::new("in/y/z")).unwrap(),
            real.join("x/y/z")
        );
        std::os::unix::fs::symlink("/nowhere-at-all", home.path().join("dangling")).unwrap();
        assert!(resolve_cwd(home.path(), Path::new("dangling/a")).is_err());
        std::os::unix::fs::symlink("/tmp", home.path().join("out")).unwrap();
        let e = resolve_cwd(home.path(), Path::new("out/x")).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        std::fs::write(home.path().join("file"), b"").unwrap();
        assert!(resolve_cwd(home.path(), Path::new("file")).is_err());
    }

    #[test]
    fn config_env_refuses_only_what_breaks_the_worker() {
        let ok = vec![("LD_LIBRARY_PATH".to_string(), "/opt".to_string())];
        assert!(check_config_env(&ok).is_ok());
        let bad = vec![("PYREPL3_FD".to_string(), "1".to_string())];
        assert!(check_config_env(&bad).is_err());
        let bad = vec![("A=B".to_string(), "1".to_string())];
        assert!(check_config_env(&bad).is_err());
    }
}
