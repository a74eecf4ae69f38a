//! Configuration, loaded once: defaults → `maestro.toml` → `MAESTRO_*`
//! environment → command-line flags, then validated.
//!
//! One flat document holds both kinds of keys (camelCase, as in the API):
//! server settings ([`ServerSettings`], read at start only) and the runtime
//! keys of `MaestroConfig` (stored once PATCHed; then the stored values win).
//! Environment variables are the keys in upper snake case with the `MAESTRO_`
//! prefix (`MAESTRO_DATA_DIR`, `MAESTRO_AGENT_TIMEOUT_MS`); `MAESTRO_LOG` is
//! `logLevel`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use maestro_core::choreography::CelBudget;
use maestro_core::model::MaestroConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Settings read at start; a PATCH of `/maestro/config` cannot change them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Where the SQLite database and `admin.token` live.
    pub data_dir: PathBuf,
    /// `sqlite://<path>` or `postgres://...`; default `sqlite://<dataDir>/maestro.db`.
    pub database_url: Option<String>,
    /// Connections of the PostgreSQL pool (unused with SQLite).
    pub database_max_connections: u32,
    /// PostgreSQL (cluster mode): how long an execution lease and the leader
    /// lease last without renewal; a dead node's executions are taken over
    /// within about this long (docs/OPERATIONS.md "Running a cluster").
    pub cluster_lease_ttl_ms: u64,
    /// Failed authentications per client address and minute before the
    /// address is refused (429 `RATE_LIMITED`) for the rest of the minute.
    pub auth_failures_per_minute: u32,
    /// Finished executions are deleted this long after they finished (0: kept
    /// forever); see docs/OPERATIONS.md "Retention".
    pub retention_executions_ms: u64,
    /// Events are deleted this long after their timestamp (0: kept forever).
    pub retention_events_ms: u64,
    /// The admin token; when unset one is generated at first start.
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
    /// `text` (default) or `json` log lines, on stderr.
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    pub max_queued_executions: usize,
    pub max_steps_per_workflow: usize,
    /// Most estimated work units of one CEL condition: over it, refused at
    /// definition (400 `INVALID_CONDITION`) or, on an execution's values, before
    /// evaluation (`CONDITION_ERROR`). See docs/SECURITY.md "CEL budget".
    pub cel_max_cost: u64,
    /// Most elements of any list or map one CEL condition may build.
    pub cel_max_list_size: u64,
    pub max_json_depth: usize,
    pub max_output_bytes: usize,
    /// How long a shutdown waits for requests and agent calls in flight.
    pub drain_timeout_ms: u64,
    /// Hosts/CIDRs outbound requests may target; unset: the default policy.
    pub outbound_allow_list: Option<Vec<String>>,
    /// Longest `?wait=` of execute, ms.
    pub max_wait_ms: u64,
    /// Events an SSE client may fall behind before it is disconnected.
    pub sse_queue: usize,
    /// SSE keep-alive comment interval, ms.
    pub sse_keepalive_ms: u64,
    /// A request head must be complete within this long of the connection's
    /// accept (or of its first byte on a kept-alive connection), ms.
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request in flight is closed this long
    /// after its last response, ms.
    pub keep_alive_idle_timeout_ms: u64,
    /// Open client connections at most (also kept under three quarters of the
    /// open-file limit); more are answered 503 and closed.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:7300".parse().expect("literal address"),
            data_dir: PathBuf::from("./maestro-data"),
            database_url: None,
            database_max_connections: 16,
            cluster_lease_ttl_ms: 10_000,
            auth_failures_per_minute: 30,
            retention_executions_ms: 7 * 24 * 3600 * 1000,
            retention_events_ms: 7 * 24 * 3600 * 1000,
            admin_token: None,
            log_format: LogFormat::Text,
            max_body_bytes: 1 << 20,
            max_queued_executions: 10_000,
            max_steps_per_workflow: 1000,
            cel_max_cost: CelBudget::default().max_cost,
            cel_max_list_size: CelBudget::default().max_list_size,
            max_json_depth: 64,
            max_output_bytes: 1 << 20,
            drain_timeout_ms: 10_000,
            outbound_allow_list: None,
            max_wait_ms: 60_000,
            sse_queue: 1024,
            sse_keepalive_ms: 15_000,
            header_read_timeout_ms: 10_000,
            keep_alive_idle_timeout_ms: 60_000,
            max_connections: 10_000,
        }
    }
}

impl ServerSettings {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("maestro.db").display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            (
                "databaseMaxConnections",
                u64::from(self.database_max_connections),
            ),
            ("maxBodyBytes", self.max_body_bytes as u64),
            ("maxQueuedExecutions", self.max_queued_executions as u64),
            ("maxStepsPerWorkflow", self.max_steps_per_workflow as u64),
            ("celMaxCost", self.cel_max_cost),
            ("celMaxListSize", self.cel_max_list_size),
            ("maxJsonDepth", self.max_json_depth as u64),
            ("maxOutputBytes", self.max_output_bytes as u64),
            ("sseQueue", self.sse_queue as u64),
            ("sseKeepaliveMs", self.sse_keepalive_ms),
            ("headerReadTimeoutMs", self.header_read_timeout_ms),
            ("keepAliveIdleTimeoutMs", self.keep_alive_idle_timeout_ms),
            ("maxConnections", self.max_connections as u64),
            (
                "authFailuresPerMinute",
                u64::from(self.auth_failures_per_minute),
            ),
        ];
        for (k, v) in positive {
            if v == 0 {
                bail!("{k} must be greater than 0");
            }
        }
        for (k, v) in [
            ("retentionExecutionsMs", self.retention_executions_ms),
            ("retentionEventsMs", self.retention_events_ms),
        ] {
            if v != 0 && v < 60_000 {
                bail!("{k} must be 0 (keep forever) or at least 60000");
            }
        }
        if !(300..=600_000).contains(&self.cluster_lease_ttl_ms) {
            bail!("clusterLeaseTtlMs must be between 300 and 600000");
        }
        if self.max_json_depth > 512 {
            bail!("maxJsonDepth must be at most 512");
        }
        if let Some(list) = &self.outbound_allow_list {
            maestro_api::outbound::AllowList::new(list).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}

/// Everything the server starts with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub runtime: MaestroConfig,
}

/// Values given as flags (they beat everything else).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
}

/// The server settings' names: one list, shared with `PATCH /maestro/config`
/// (which refuses them); a test checks it is exactly [`ServerSettings`]'s fields.
const SERVER_KEYS: &[&str] = maestro_core::protocol::SERVER_SETTINGS;

const RUNTIME_KEYS: &[&str] = &[
    "maxConcurrentWorkflows",
    "defaultWorkflowTimeout",
    "eventBusBufferSize",
    "healthCheckIntervalMs",
    "agentTimeoutMs",
    "enableRollback",
    "enableCompensation",
    "logLevel",
    "defaultRetryPolicy",
];

/// `data_dir` → `dataDir`.
fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Load and validate. `env` is the process environment (a parameter so tests
/// can pass their own).
pub fn load(flags: &Flags, env: &[(String, String)]) -> anyhow::Result<Settings> {
    let mut fig = Figment::new();
    let file = flags.config.clone().or_else(|| {
        let default = PathBuf::from("maestro.toml");
        default.exists().then_some(default)
    });
    if let Some(path) = &file {
        if !path.exists() {
            bail!("config file {} does not exist", path.display());
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    // Environment: MAESTRO_<UPPER_SNAKE> of a known key; others (such as the
    // CLI's MAESTRO_SERVER / MAESTRO_TOKEN) are not ours to judge.
    let mut from_env = Map::new();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("MAESTRO_") else {
            continue;
        };
        let key = if rest == "LOG" {
            "logLevel".to_owned()
        } else {
            camel(&rest.to_ascii_lowercase())
        };
        if !SERVER_KEYS.contains(&key.as_str()) && !RUNTIME_KEYS.contains(&key.as_str()) {
            continue;
        }
        // Numbers, booleans and lists are written as JSON (`8`, `true`,
        // `["10.0.0.0/8"]`); text settings are taken as they are.
        let textual = matches!(
            key.as_str(),
            "listen" | "dataDir" | "databaseUrl" | "adminToken" | "logLevel" | "logFormat"
        );
        let value = match serde_json::from_str::<Value>(v) {
            Ok(parsed) if !textual => parsed,
            _ => Value::String(v.clone()),
        };
        from_env.insert(key, value);
    }
    fig = fig.merge(Serialized::defaults(Value::Object(from_env)));
    let mut from_flags = Map::new();
    if let Some(l) = &flags.listen {
        from_flags.insert("listen".into(), Value::String(l.clone()));
    }
    if let Some(d) = &flags.data_dir {
        from_flags.insert("dataDir".into(), Value::String(d.display().to_string()));
    }
    if let Some(u) = &flags.database_url {
        from_flags.insert("databaseUrl".into(), Value::String(u.clone()));
    }
    fig = fig.merge(Serialized::defaults(Value::Object(from_flags)));
    let doc: Map<String, Value> = fig.extract().context("reading the configuration")?;
    let mut server_doc = Map::new();
    let mut runtime_doc = Map::new();
    for (k, v) in doc {
        if SERVER_KEYS.contains(&k.as_str()) {
            server_doc.insert(k, v);
        } else if RUNTIME_KEYS.contains(&k.as_str()) {
            runtime_doc.insert(k, v);
        } else {
            bail!("unknown configuration key {k:?}");
        }
    }
    let mut base = serde_json::to_value(ServerSettings::default())?;
    maestro_core::model::merge_patch(&mut base, &Value::Object(server_doc));
    let server: ServerSettings = serde_json::from_value(base).context("invalid server setting")?;
    server.validate()?;
    let runtime = MaestroConfig::default()
        .patched(&Value::Object(runtime_doc))
        .map_err(|e| anyhow::anyhow!("invalid runtime setting: {e}"))?;
    Ok(Settings { server, runtime })
}

/// Write `admin.token` readable by the owner only.
pub fn write_admin_token(data_dir: &Path, token: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let path = data_dir.join("admin.token");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn layers_win_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\ndataDir = \"/from/file\"\nagentTimeoutMs = 1234\nmaxBodyBytes = 10\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(file.clone()),
            ..Default::default()
        };
        let s = load(
            &flags,
            &env(&[("MAESTRO_DATA_DIR", "/from/env"), ("MAESTRO_SERVER", "x")]),
        )
        .unwrap();
        assert_eq!(s.server.listen.port(), 9000);
        assert_eq!(s.server.data_dir, PathBuf::from("/from/env"));
        assert_eq!(s.server.max_body_bytes, 10);
        assert_eq!(s.server.database_max_connections, 16);
        assert_eq!(s.runtime.agent_timeout_ms, 1234);
        let flags = Flags {
            config: Some(file),
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some("/from/flag".into()),
            ..Default::default()
        };
        let s = load(
            &flags,
            &env(&[
                ("MAESTRO_DATA_DIR", "/from/env"),
                ("MAESTRO_AGENT_TIMEOUT_MS", "99"),
                ("MAESTRO_LOG", "debug"),
                ("MAESTRO_DATABASE_MAX_CONNECTIONS", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.database_max_connections, 4);
        assert_eq!(s.server.listen.port(), 0);
        assert_eq!(s.server.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(s.runtime.agent_timeout_ms, 99);
        assert_eq!(s.runtime.log_level.as_str(), "debug");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let flags = Flags {
            config: Some(file.clone()),
            ..Default::default()
        };
        let e = load(&flags, &[]).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        std::fs::write(&file, "agentTimeoutMs = 0\n").unwrap();
        assert!(load(&flags, &[]).is_err());
        std::fs::write(&file, "maxBodyBytes = 0\n").unwrap();
        assert!(load(&flags, &[]).is_err());
        std::fs::write(&file, "databaseMaxConnections = 0\n").unwrap();
        assert!(load(&flags, &[]).is_err());
        let e = load(
            &Flags {
                listen: Some("nope".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("listen") || format!("{e:#}").contains("address"),
            "{e:#}"
        );
        assert!(
            load(
                &Flags {
                    config: Some(dir.path().join("missing.toml")),
                    ..Default::default()
                },
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn cel_budget_settings() {
        let s = load(&Flags::default(), &[]).unwrap();
        assert_eq!(s.server.cel_max_cost, 1_000_000);
        assert_eq!(s.server.cel_max_list_size, 10_000);
        let s = load(
            &Flags::default(),
            &env(&[
                ("MAESTRO_CEL_MAX_COST", "5000"),
                ("MAESTRO_CEL_MAX_LIST_SIZE", "100"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (s.server.cel_max_cost, s.server.cel_max_list_size),
            (5000, 100)
        );
        let e = load(&Flags::default(), &env(&[("MAESTRO_CEL_MAX_COST", "0")])).unwrap_err();
        assert!(e.to_string().contains("celMaxCost"), "{e}");
    }

    /// The field names serde reads for `T` (its `deserialize_struct` call).
    fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        use serde::de::{Deserializer, Visitor};
        struct Fields(Option<&'static [&'static str]>);
        impl<'de> Deserializer<'de> for &mut Fields {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = Some(fields);
                Err(serde::de::Error::custom("fields read"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut f = Fields(None);
        let _ = T::deserialize(&mut f);
        f.0.expect("a struct")
    }

    /// `PATCH /maestro/config` refuses exactly the server settings: the
    /// shared list and `ServerSettings` name the same keys.
    #[test]
    fn server_settings_list_is_the_struct() {
        use std::collections::BTreeSet;
        let fields: BTreeSet<&str> = struct_fields::<ServerSettings>().iter().copied().collect();
        let listed: BTreeSet<&str> = SERVER_KEYS.iter().copied().collect();
        assert_eq!(listed.len(), SERVER_KEYS.len(), "a key is listed twice");
        let missing: Vec<_> = fields.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&fields).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "maestro_core::protocol::SERVER_SETTINGS lacks {missing:?} and lists {stale:?}"
        );
        // No runtime key is taken for a server setting.
        assert!(RUNTIME_KEYS.iter().all(|k| !listed.contains(k)));
    }

    #[test]
    fn admin_token_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_admin_token(dir.path(), "mst_x_y").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(std::fs::read_to_string(p).unwrap().trim(), "mst_x_y");
    }
}
