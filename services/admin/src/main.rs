//! `rc-admin`: workspaces and API keys. A key is printed once, when it is created; only its
//! SHA-256 is stored.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rc_common::auth::{StoreError, WorkspaceStore};
use rc_common::config::RedisSettings;

#[derive(Parser)]
#[command(
    name = "rc-admin",
    version,
    about = "rudder-courier administration: workspaces and API keys"
)]
struct Cli {
    /// Redis URL (single node).
    #[arg(
        long,
        env = "RC_REDIS__URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    redis_url: String,
    /// Comma-separated Redis Cluster seed nodes; overrides --redis-url.
    #[arg(
        long,
        env = "RC_REDIS__CLUSTER_URLS",
        default_value = "",
        global = true
    )]
    redis_cluster_urls: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a workspace and its first API key (printed once).
    CreateWorkspace {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Use this key instead of generating one (e.g. a key already configured in RudderStack).
        #[arg(long, env = "RC_ADMIN_API_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Create the workspace unless it exists, and make sure `--key` (or a new key) works for it.
    /// Used by `make run` to provision the `dev` workspace.
    EnsureWorkspace {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, env = "RC_ADMIN_API_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// List workspaces and their key ids (never the keys).
    ListWorkspaces,
    /// Add another API key to a workspace (printed once).
    CreateKey {
        workspace: String,
        #[arg(long, env = "RC_ADMIN_API_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Revoke a key by its id (as shown by list-workspaces).
    RevokeKey { workspace: String, key_id: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let settings = RedisSettings {
        url: cli.redis_url.clone(),
        cluster_urls: cli.redis_cluster_urls.clone(),
        ..RedisSettings::default()
    };
    let redis = rc_common::redis::connect(&settings)
        .await
        .context("connecting to Redis")?;
    if !rc_common::redis::ping(&redis).await {
        bail!("Redis at {} does not answer", cli.redis_url);
    }
    let store = WorkspaceStore::new(redis);
    match cli.command {
        Command::CreateWorkspace { id, name, key } => {
            store
                .create_workspace(&id, name.as_deref().unwrap_or(&id))
                .await?;
            let key = store.add_key(&id, key.as_deref()).await?;
            print_key(cli.json, &id, &key, true);
        }
        Command::EnsureWorkspace { id, name, key } => {
            let created = match store
                .create_workspace(&id, name.as_deref().unwrap_or(&id))
                .await
            {
                Ok(()) => true,
                Err(StoreError::Exists(_)) => false,
                Err(e) => return Err(e.into()),
            };
            let key = store.add_key(&id, key.as_deref()).await?;
            print_key(cli.json, &id, &key, created);
        }
        Command::ListWorkspaces => {
            let list = store.list_workspaces().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no workspaces");
            } else {
                for ws in list {
                    let keys: Vec<&str> = ws.keys.iter().map(|k| k.key_id.as_str()).collect();
                    println!(
                        "{}\tname={}\tcreated={}\tkeys={}",
                        ws.id,
                        ws.name,
                        ws.created_at,
                        keys.join(",")
                    );
                }
            }
        }
        Command::CreateKey { workspace, key } => {
            let key = store.add_key(&workspace, key.as_deref()).await?;
            print_key(cli.json, &workspace, &key, false);
        }
        Command::RevokeKey { workspace, key_id } => {
            if !store.revoke_key(&workspace, &key_id).await? {
                bail!("workspace {workspace:?} has no key {key_id:?}");
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"workspace": workspace, "revoked": key_id})
                );
            } else {
                println!(
                    "revoked key {key_id} of workspace {workspace} (cached lookups expire within seconds)"
                );
            }
        }
    }
    Ok(())
}

fn print_key(json: bool, workspace: &str, key: &str, created: bool) {
    let key_id = rc_common::auth::key_id_of(key);
    if json {
        println!(
            "{}",
            serde_json::json!({"workspace": workspace, "created": created, "key_id": key_id, "api_key": key})
        );
    } else {
        println!(
            "workspace: {workspace}{}",
            if created { " (created)" } else { "" }
        );
        println!("key id:    {key_id}");
        println!("api key:   {key}");
        println!(
            "(the key is shown only now; store it where RudderStack's Courier destination can use it)"
        );
    }
}
