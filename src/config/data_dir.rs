//! The data directory is private: it holds the network's topology (targets, paths) and incident
//! details. [`prepare`] (at the start of `vantage run`) creates it `0700`, tightens an older, wider
//! one, and refuses one that resolves into a system directory or belongs to another user;
//! [`check`] is the same test without touching anything, for `vantage check`. The stores call
//! [`create`], which only creates a missing directory `0700`: reading commands
//! (`vantage report`, `incidents`) may run as another user, e.g. root.
//!
//! Files inside get `0600` from the process umask (`077`, set by [`private_umask`] when the CLI
//! starts): that one setting also covers what SQLite creates itself (`-wal`, `-shm`, `-journal`)
//! and every draft file, wherever in the code it is written.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::Context;

/// The mode the data directory gets.
const DIR_MODE: u32 = 0o700;

/// Top-level directories the agent must never write into (`/lib*` is matched by prefix).
const SYSTEM_DIRS: [&str; 9] = [
    "etc", "usr", "bin", "sbin", "boot", "proc", "sys", "dev", "lib",
];

/// Make files created from now on private to this user (`0600`, directories `0700`).
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Why `dir` must not be the data directory, if it must not; `dir` need not exist yet (then the
/// nearest existing ancestor is resolved, since creating it would write there).
pub fn check(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    let resolved = loop {
        match existing.canonicalize() {
            Ok(resolved) => break resolved,
            Err(_) => match existing.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
                _ => break std::env::current_dir().unwrap_or_default(),
            },
        }
    };
    if let Some(system) = system_dir(&resolved) {
        return Err(format!(
            "data directory {} resolves into {system}, a system directory; set `data_dir` to a directory of its own, e.g. `data_dir = \"/var/lib/vantage\"`",
            describe(dir, &resolved),
        ));
    }
    if existing == dir {
        let metadata = std::fs::metadata(&resolved)
            .map_err(|e| format!("data directory {}: {e}", dir.display()))?;
        if !metadata.is_dir() {
            return Err(format!(
                "data directory {} is not a directory; set `data_dir` to a directory",
                describe(dir, &resolved)
            ));
        }
        let me = nix::unistd::geteuid().as_raw();
        if metadata.uid() != me {
            return Err(format!(
                "data directory {} belongs to uid {}, not to this user (uid {me}); run the agent as its owner, or `chown` it to the agent's user",
                describe(dir, &resolved),
                metadata.uid(),
            ));
        }
    }
    Ok(())
}

/// Create `dir` (and missing parents) with mode `0700` if it does not exist.
pub fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// Create `dir` (mode `0700`) or tighten an existing one to `0700`, after [`check`]ing it;
/// returns its resolved path.
pub fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    check(dir).map_err(anyhow::Error::msg)?;
    create(dir)?;
    let resolved = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve data directory {}", dir.display()))?;
    // Checked again now that it exists: its owner can only be known now.
    check(&resolved).map_err(anyhow::Error::msg)?;
    let mode = std::fs::metadata(&resolved)
        .with_context(|| format!("cannot read data directory {}", resolved.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode != DIR_MODE {
        std::fs::set_permissions(&resolved, std::fs::Permissions::from_mode(DIR_MODE))
            .with_context(|| {
                format!(
                    "cannot make data directory {} private (chmod 700)",
                    resolved.display()
                )
            })?;
        tracing::warn!(
            dir = %resolved.display(),
            "data directory was mode {mode:o}; tightened to 700 (it holds the network's topology and incident details)"
        );
    }
    Ok(resolved)
}

/// The system directory `resolved` (absolute, canonical) is in or is, if any.
fn system_dir(resolved: &Path) -> Option<String> {
    let mut components = resolved.components();
    match (components.next(), components.next()) {
        (Some(Component::RootDir), None) => Some("/".to_string()),
        (Some(Component::RootDir), Some(Component::Normal(top))) => {
            let top = top.to_string_lossy();
            SYSTEM_DIRS
                .iter()
                .any(|system| top == *system || (*system == "lib" && top.starts_with("lib")))
                .then(|| format!("/{top}"))
        }
        _ => None,
    }
}

fn describe(dir: &Path, resolved: &Path) -> String {
    if dir == resolved {
        dir.display().to_string()
    } else {
        format!("{} (resolved: {})", dir.display(), resolved.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_directories_are_recognised() {
        for (path, system) in [
            ("/", Some("/")),
            ("/etc", Some("/etc")),
            ("/etc/vantage", Some("/etc")),
            ("/usr/lib/vantage", Some("/usr")),
            ("/lib64", Some("/lib64")),
            ("/libx32/x", Some("/libx32")),
            ("/proc/self", Some("/proc")),
            ("/var/lib/vantage", None),
            ("/etcetera", None),
            ("/srv/vantage", None),
        ] {
            assert_eq!(system_dir(Path::new(path)).as_deref(), system, "{path}");
        }
    }

    #[test]
    fn a_symlink_into_etc_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("data");
        std::os::unix::fs::symlink("/etc", &link).expect("symlink");
        let error = prepare(&link).expect_err("refused").to_string();
        assert_eq!(
            error,
            format!(
                "data directory {} (resolved: /etc) resolves into /etc, a system directory; set `data_dir` to a directory of its own, e.g. `data_dir = \"/var/lib/vantage\"`",
                link.display()
            )
        );
        // A directory not yet created below it is resolved through its existing ancestor.
        assert!(check(&link.join("vantage")).is_err());
        assert!(!Path::new("/etc/vantage.db").exists());
    }

    #[test]
    fn a_new_directory_is_private_and_an_old_wide_one_is_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("a/b/data");
        let resolved = prepare(&new).expect("prepare");
        assert_eq!(resolved, new.canonicalize().expect("resolve"));
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&new), 0o700);
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare(&new).expect("prepare again");
        assert_eq!(mode(&new), 0o700);
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let other = nix::unistd::geteuid().as_raw() + 1;
        std::os::unix::fs::chown(&data, Some(other), None).expect("chown (needs root)");
        let error = prepare(&data).expect_err("refused").to_string();
        assert!(
            error.contains(&format!("belongs to uid {other}, not to this user")),
            "{error}"
        );
    }
}
