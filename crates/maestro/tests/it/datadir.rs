//! The data directory is the service user's only (docs/SECURITY.md "Data at
//! rest"): the real binary under umask 022 makes the directory 0700 and every
//! file in it 0600 (the SQLite database, its `-wal` and `-shm`, `node.id`,
//! `admin.token`), and tightens what an older version left open.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::json;

use crate::process::start_serve;

/// `maestro serve` on `dir`, under umask 022 (files 0644 unless the server
/// sets their modes), its stderr written to `log`.
fn under_umask_022(dir: &Path, log: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_maestro"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("MAESTRO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    cmd
}

fn serve_under_umask_022(dir: &Path, log: &Path) -> (Child, String) {
    start_serve(&mut under_umask_022(dir, log))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Writes enough for SQLite to have its `-wal` and `-shm` files.
async fn write_some(base: &str, dir: &Path) {
    let admin = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/maestro/agents"))
        .bearer_auth(&admin)
        .json(
            &json!({"id": "w", "type": "t", "endpoint": "http://127.0.0.1:9",
                      "inboundSecret": "s3cret", "capabilities": [{"id": "work"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// The data dir is 0700 and every file in it 0600; the files named are there.
fn assert_private(dir: &Path, expected: &[&str]) {
    assert_eq!(mode(dir), 0o700, "the data dir {}", dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(mode(&entry.path()), 0o600, "{name}");
        names.push(name);
    }
    for want in expected {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}

fn stop(child: &mut Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_its_files_are_owner_only_under_umask_022() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = tmp.path().join("stderr.log");
    let (mut child, base) = serve_under_umask_022(&dir, &log);
    write_some(&base, &dir).await;
    // While running: the WAL and its index exist.
    assert_private(
        &dir,
        &[
            "maestro.db",
            "maestro.db-wal",
            "maestro.db-shm",
            "node.id",
            "admin.token",
        ],
    );
    stop(&mut child);
    assert_private(&dir, &["maestro.db", "node.id", "admin.token"]);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("owner-only"), "nothing to tighten: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_left_open_are_tightened_at_start_with_a_log_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = tmp.path().join("stderr.log");
    let (mut child, base) = serve_under_umask_022(&dir, &log);
    write_some(&base, &dir).await;
    // As an older version left them: 0755 and 0644 (the server is killed, so
    // the WAL files stay too).
    let _ = child.kill();
    child.wait().unwrap();
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    set(&dir, 0o755).unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        set(&path, 0o644).unwrap();
        files.push(path);
    }
    assert!(
        files.iter().any(|f| f.ends_with("maestro.db-wal")),
        "{files:?}"
    );

    let (mut child, base) = serve_under_umask_022(&dir, &log);
    assert_private(&dir, &["maestro.db", "node.id", "admin.token"]);
    let text = std::fs::read_to_string(&log).unwrap();
    for path in std::iter::once(&dir).chain(&files) {
        let was = if path == &dir { "0755" } else { "0644" };
        let path = path.to_string_lossy();
        // The path itself, not a longer one it is a prefix of.
        let names = |l: &str| {
            l.match_indices(&*path)
                .any(|(i, _)| !l[i + path.len()..].starts_with('/'))
        };
        let line = text
            .lines()
            .find(|l| l.contains("owner-only") && names(l) && l.contains(was));
        assert!(line.is_some(), "a log line for {path}: {text}");
    }
    // And it still works on the tightened files.
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    stop(&mut child);
}

/// A database outside the data dir (`databaseUrl`) is treated alike, and its
/// missing directory is created 0700.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outside_the_data_dir_is_owner_only_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let db_dir = tmp.path().join("db").join("here");
    let log = tmp.path().join("stderr.log");
    let url = format!("sqlite://{}", db_dir.join("m.db").display());
    let mut cmd = under_umask_022(&dir, &log);
    cmd.env("MAESTRO_DATABASE_URL", &url);
    let (mut child, base) = start_serve(&mut cmd);
    write_some(&base, &dir).await;
    assert_private(&db_dir, &["m.db", "m.db-wal", "m.db-shm"]);
    assert_private(&dir, &["node.id", "admin.token"]);
    stop(&mut child);
}
