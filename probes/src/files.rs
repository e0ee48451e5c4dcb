//! Reading the small files a config points at (secrets, CA bundles) without trusting them.
//!
//! A path in a config may name `/dev/zero` (endless), a FIFO (blocks until someone writes), a
//! directory or a huge file. [`read_small`] reads only regular files, never blocks on open, and
//! stops after `limit` bytes with an error that names the file and the limit.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Limit for a file holding one token or password.
pub const SECRET_LIMIT: u64 = 64 * 1024;
/// Limit for a PEM bundle of CA certificates (the whole Mozilla bundle is about 220 KiB).
pub const CA_BUNDLE_LIMIT: u64 = 1024 * 1024;

/// Why a small file could not be read. The `Display` starts with the file's path, so callers can
/// prefix what the file is for (`secret file /dev/zero is a character device, ...`); it never
/// shows content.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is {kind}, not a regular file; give the path of a regular file of at most {}",
        path.display(),
        human_size(*limit)
    )]
    NotRegular {
        path: PathBuf,
        kind: &'static str,
        limit: u64,
    },
    #[error(
        "{} is larger than the limit of {}; is it the right file?",
        path.display(),
        human_size(*limit)
    )]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
}

/// Read a regular file of at most `limit` bytes.
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Checked before opening (opening a FIFO for reading blocks until a writer comes)...
    regular(path, &std::fs::metadata(path).map_err(io)?, limit)?;
    // ...and again on the opened file, in case the path was swapped in between; O_NONBLOCK makes
    // that open return at once even then (it changes nothing for reads of a regular file).
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    regular(path, &file.metadata().map_err(io)?, limit)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// As [`read_small`], as UTF-8 text.
pub fn read_small_string(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read_small(path, limit)?).map_err(|_| FileError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

fn regular(path: &Path, metadata: &std::fs::Metadata, limit: u64) -> Result<(), FileError> {
    let kind = metadata.file_type();
    let kind = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    };
    Err(FileError::NotRegular {
        path: path.to_path_buf(),
        kind,
        limit,
    })
}

/// `65536` → `64 KiB`, `1048576` → `1 MiB`, other sizes in bytes.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Run `read_small` on another thread so a regression (blocking on a FIFO) fails, not hangs.
    fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let owned = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(read_small(&owned, limit));
        });
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("reading {} did not return within 5 s", path.display()))
    }

    #[test]
    fn reads_a_small_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("write");
        assert_eq!(
            read_bounded(&path, SECRET_LIMIT).expect("read"),
            b"s3cret\n"
        );
        // Exactly at the limit is fine.
        std::fs::write(&path, vec![b'a'; 16]).expect("write");
        assert_eq!(read_bounded(&path, 16).expect("read").len(), 16);
    }

    #[test]
    fn dev_zero_is_refused_without_reading() {
        let error = read_bounded(Path::new("/dev/zero"), SECRET_LIMIT).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "/dev/zero is a character device, not a regular file; give the path of a regular file of at most 64 KiB"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("run mkfifo");
        assert!(status.success(), "mkfifo failed");
        let error = read_bounded(&path, CA_BUNDLE_LIMIT).expect_err("refused");
        assert_eq!(
            error.to_string(),
            format!(
                "{} is a FIFO, not a regular file; give the path of a regular file of at most 1 MiB",
                path.display()
            )
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = read_bounded(dir.path(), SECRET_LIMIT).expect_err("refused");
        assert!(
            matches!(
                error,
                FileError::NotRegular {
                    kind: "a directory",
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string())
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.pem");
        std::fs::write(&path, vec![b'x'; SECRET_LIMIT as usize + 1]).expect("write");
        let error = read_bounded(&path, SECRET_LIMIT).expect_err("refused");
        assert_eq!(
            error.to_string(),
            format!(
                "{} is larger than the limit of 64 KiB; is it the right file?",
                path.display()
            )
        );
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let error = read_bounded(Path::new("/nonexistent/vantage/token"), SECRET_LIMIT)
            .expect_err("missing");
        assert!(
            error
                .to_string()
                .starts_with("/nonexistent/vantage/token: No such file or directory"),
            "{error}"
        );
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_size(SECRET_LIMIT), "64 KiB");
        assert_eq!(human_size(CA_BUNDLE_LIMIT), "1 MiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
