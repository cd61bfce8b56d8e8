//! `rc-admin`: workspaces and API keys (a key is printed once, when it is created; only its
//! SHA-256 is stored), and the operator's view of dead letters over NATS (`dlq`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use rc_common::auth::{StoreError, WorkspaceStore};
use rc_common::config::RedisSettings;
use rc_common::deadletters::{DEFAULT_PAGE, DeadLetters, DlqService, Scope};

#[derive(Parser)]
#[command(
    name = "rc-admin",
    version,
    about = "rudder-courier administration: workspaces, API keys and dead letters"
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
    /// NATS URL (for `dlq`).
    #[arg(
        long,
        env = "RC_NATS__URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    /// NATS `.creds` file (for `dlq` on an authenticated cluster).
    #[arg(long, env = "RC_NATS__CREDENTIALS_FILE", global = true)]
    nats_credentials_file: Option<String>,
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
    /// Dead letters of a service, over NATS (every workspace unless `--workspace`).
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Args)]
struct DlqScope {
    /// profiles, accounts, automations, delivery or forwarder.
    #[arg(long)]
    service: DlqService,
    /// Only this workspace's dead letters.
    #[arg(long)]
    workspace: Option<String>,
}

impl DlqScope {
    fn scope(&self) -> Scope<'_> {
        Scope {
            service: self.service,
            workspace: self.workspace.as_deref(),
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One page of dead letters, oldest first (`--cursor` the previous page's `next`).
    List {
        #[command(flatten)]
        scope: DlqScope,
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        /// At most 100.
        #[arg(long, default_value_t = DEFAULT_PAGE)]
        limit: usize,
    },
    /// One dead letter, its payload decoded to JSON.
    Show {
        seq: u64,
        #[command(flatten)]
        scope: DlqScope,
    },
    /// Publish it again to its original subject (deduplicated), then delete it.
    Replay {
        seq: u64,
        #[command(flatten)]
        scope: DlqScope,
    },
    /// Delete every dead letter of the service (of `--workspace` when given).
    Purge {
        #[command(flatten)]
        scope: DlqScope,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Dlq(command) = &cli.command {
        return dlq(&cli, command).await;
    }
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
        Command::Dlq(_) => unreachable!("handled above"),
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

async fn dlq(cli: &Cli, command: &DlqCommand) -> Result<()> {
    let mut options = async_nats::ConnectOptions::new()
        .name("rc-admin")
        .connection_timeout(Duration::from_secs(5));
    if let Some(path) = &cli.nats_credentials_file {
        options = options.credentials_file(path).await?;
    }
    let client = options
        .connect(rc_common::nats::server_list(&cli.nats_url))
        .await
        .with_context(|| format!("connecting to NATS at {}", cli.nats_url))?;
    let store = DeadLetters::new(async_nats::jetstream::new(client));
    match command {
        DlqCommand::List {
            scope,
            cursor,
            limit,
        } => {
            let page = store.list(scope.scope(), *cursor, *limit).await?;
            if cli.json {
                let items: Vec<_> = page.items.iter().map(|d| d.summary_json()).collect();
                let next = page.next.map(|n| n.to_string());
                println!(
                    "{}",
                    serde_json::json!({"deadLetters": items, "next": next})
                );
            } else if page.items.is_empty() {
                println!("no dead letters");
            } else {
                for d in &page.items {
                    println!(
                        "{}\t{}\t{}\t{}\tattempts={}\t{}",
                        d.seq,
                        d.workspace(),
                        d.original_subject(),
                        d.dead_lettered_at_text(),
                        d.delivery_count().map_or("?".into(), |n| n.to_string()),
                        d.reason()
                    );
                }
                if let Some(next) = page.next {
                    println!("(more: --cursor {next})");
                }
            }
        }
        DlqCommand::Show { seq, scope } => {
            let dead = store.get(scope.scope(), *seq).await?;
            // Always JSON: the decoded payload is a document.
            println!("{}", serde_json::to_string_pretty(&dead.detail_json())?);
        }
        DlqCommand::Replay { seq, scope } => {
            let r = store.replay(scope.scope(), *seq).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"replayed": seq, "subject": r.subject, "duplicate": r.duplicate})
                );
            } else {
                println!("replayed {seq} to {}", r.subject);
            }
        }
        DlqCommand::Purge { scope } => {
            let purged = store.purge(scope.scope()).await?;
            if cli.json {
                println!("{}", serde_json::json!({"purged": purged}));
            } else {
                println!("purged {purged} dead letters");
            }
        }
    }
    Ok(())
}
