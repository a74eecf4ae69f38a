//! The data directory and the files in it are the service user's only
//! (docs/SECURITY.md): the directory 0700, the files 0600, whatever the umask.
//! The SQLite database holds agents' inbound secrets and webhook secrets in
//! plain text and `admin.token` is the admin's bearer token; `node.id` is no
//! secret, but has no reason to differ.
//!
//! What this server creates has these modes from the start. What already
//! exists (left by an older version that created them 0755/0644, or made by
//! hand) loses its group and other bits at start, with a warning naming it.

use std::path::Path;

use anyhow::Context;

/// Create `dir` and its missing parents 0700, or tighten it if it exists.
pub(crate) fn data_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))?;
    tighten(dir);
    Ok(())
}

/// The SQLite database at `db`, before it is opened: tightened with its
/// `-wal`, `-shm` and `-journal` if they exist, else created empty with mode
/// 0600. SQLite creates its `-wal` and `-shm` files with the mode of the
/// database file, so they are 0600 too whatever the umask.
pub(crate) fn sqlite_files(db: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        tighten(Path::new(&name));
    }
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        data_dir(parent)?;
    }
    // An empty file is an empty database to SQLite.
    match new_file(db) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", db.display())),
    }
}

/// Write `contents` to a new (or truncated) file that only the owner may read.
pub(crate) fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode through open: tighten it too.
    tighten(path);
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn new_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Take the group and other permission bits off `path`, if it exists and has
/// any. A failure (not the owner) is a warning: the server can still run, and
/// the operator learns that the file is exposed.
#[cfg(unix)]
pub(crate) fn tighten(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let tight = mode & !0o077;
    let (path_shown, from, to) = (
        path.display(),
        format!("{mode:04o}"),
        format!("{tight:04o}"),
    );
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight)) {
        Ok(()) => tracing::warn!(path = %path_shown, from, to,
            "data file was open to other local users; its mode is now owner-only"),
        Err(e) => tracing::warn!(path = %path_shown, mode = from, error = %e,
            "data file is open to other local users and its mode could not be changed"),
    }
}

#[cfg(not(unix))]
pub(crate) fn tighten(_path: &Path) {}
