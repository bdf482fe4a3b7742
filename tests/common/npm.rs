//! npm for the tests of the TypeScript client and the playground: `npm ci` of a directory's
//! locked devDependencies (once per test process), and `node` commands run to their end
//! with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::Watched;

/// npm may have to download from the registry (CI starts with an empty cache).
const NPM_CI_DEADLINE: Duration = Duration::from_secs(300);

/// A directory of the repository.
pub fn repo_dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `npm ci` in `dir` once per test process (the tests of one file share it): installs
/// exactly what its package-lock.json says, from npm's cache when it has it.
pub fn npm_ci(dir: &Path) {
    static DONE: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    let mut done = DONE
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|d| d == dir) {
        return;
    }
    let (status, stdout, stderr) = run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
            .current_dir(dir),
        NPM_CI_DEADLINE,
    );
    assert!(
        status.success(),
        "npm ci in {} failed (it needs npm and the npm registry, or npm's cache):\n{stdout}{stderr}",
        dir.display()
    );
    done.push(dir.to_path_buf());
}

/// Runs `command` to its end within `within`: (status, stdout, stderr).
pub fn run(command: &mut Command, within: Duration) -> (ExitStatus, String, String) {
    let mut child = Watched::spawn(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        within,
    );
    let status = child.finish();
    (status, child.stdout(), child.stderr())
}
