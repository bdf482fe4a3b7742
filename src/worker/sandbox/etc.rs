//! The sandbox's `/etc`: the short list of files a Python program commonly reads, made once
//! per host process into one directory (bound as a whole: one mount instead of twenty, about
//! 2 ms off every sandbox's start), with the directories among them and the files that
//! change while the host runs (`resolv.conf`, `hosts`) bound one by one on top, live.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Error;

/// Files of `/etc` a Python program commonly reads (the dynamic linker, names and
/// addresses, users, time zone, certificates for HTTPS, MIME types, pip's settings, the
/// font configuration that matplotlib's and Pillow's font libraries read), shown
/// read-only when present. Nothing else of `/etc`: the server's own configuration may live
/// there.
const ETC_FILES: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "fonts",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "pip.conf",
    "pki",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
];

/// Files that change while a host runs (DHCP, VPNs, container runtimes rewrite them): bound
/// live, not copied.
const LIVE_FILES: &[&str] = &["hosts", "resolv.conf"];

/// The prepared `/etc`: the directory to bind at `/etc`, and what to bind on top of it.
#[derive(Debug)]
pub(crate) struct PreparedEtc {
    pub(crate) dir: PathBuf,
    /// `/etc/<name>` entries bound one by one (directories and live files); their mount
    /// points exist in `dir`.
    pub(crate) live: Vec<PathBuf>,
    /// An empty read-only file, bound over files a sandbox must not show (`hidden_paths`).
    pub(crate) empty_file: PathBuf,
}

/// The prepared `/etc`, made on first use (in the host's run directory; blocking work, on
/// the blocking pool).
pub(crate) async fn prepared_etc() -> Result<Arc<PreparedEtc>, Error> {
    static PREPARED: tokio::sync::OnceCell<Arc<PreparedEtc>> = tokio::sync::OnceCell::const_new();
    PREPARED
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(|| {
                let dir = crate::rundir::run_dir()?.join("sandbox-etc");
                prepare(Path::new("/etc"), &dir).map(Arc::new)
            })
            .await
            .map_err(|e| Error::Sandbox(format!("preparing the sandbox's /etc: {e}")))?
        })
        .await
        .cloned()
}

/// Builds `dir` from `etc`: small files copied, links recreated, mount points for the rest.
fn prepare(etc: &Path, dir: &Path) -> Result<PreparedEtc, Error> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |what: &str, e: std::io::Error| {
        Error::Sandbox(format!("preparing the sandbox's /etc ({what}): {e}"))
    };
    // A fresh copy for this process (its run directory is its own).
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(dir.with_extension("empty"));
    std::fs::create_dir(dir).map_err(|e| failed("creating it", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| failed("opening it", e))?;
    let mut live = Vec::new();
    for name in ETC_FILES {
        let source = etc.join(name);
        let target = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&source) else {
            continue; // not on this host
        };
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&source).map_err(|e| failed(name, e))?;
            std::os::unix::fs::symlink(link, &target).map_err(|e| failed(name, e))?;
        } else if meta.is_dir() {
            std::fs::create_dir(&target).map_err(|e| failed(name, e))?;
            live.push(source);
        } else if LIVE_FILES.contains(name) {
            std::fs::File::create(&target).map_err(|e| failed(name, e))?;
            live.push(source);
        } else {
            // Keeps the file's mode: what others may not read stays so.
            std::fs::copy(&source, &target).map_err(|e| failed(name, e))?;
        }
    }
    let empty_file = dir.with_extension("empty");
    std::fs::write(&empty_file, b"").map_err(|e| failed("an empty file", e))?;
    std::fs::set_permissions(&empty_file, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| failed("an empty file", e))?;
    Ok(PreparedEtc {
        dir: dir.to_path_buf(),
        live,
        empty_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_copied_links_kept_and_directories_left_to_bind() {
        let host = tempfile::tempdir().unwrap();
        let etc = host.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        std::fs::write(etc.join("secret.conf"), "token").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", etc.join("os-release")).unwrap();
        std::fs::create_dir(etc.join("ssl")).unwrap();
        let made = prepare(&etc, &host.path().join("made")).unwrap();
        assert_eq!(
            std::fs::read_to_string(made.dir.join("passwd")).unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_link(made.dir.join("os-release")).unwrap(),
            Path::new("../usr/lib/os-release")
        );
        assert!(
            !made.dir.join("secret.conf").exists(),
            "only the listed files"
        );
        assert_eq!(made.live, vec![etc.join("resolv.conf"), etc.join("ssl")]);
        assert_eq!(std::fs::read(made.dir.join("resolv.conf")).unwrap(), b"");
    }
}
