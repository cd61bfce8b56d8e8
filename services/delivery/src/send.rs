//! Provider calls: webhook (signed JSON POST), SMTP (lettre) and the built-in inbox (Redis).

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rc_common::redis::RedisConn;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::providers::{Kind, Provider};

/// What a provider said.
#[derive(Debug)]
pub enum SendResult {
    /// Accepted; `delivered` when acceptance means delivery (webhook 2xx, inbox).
    Sent {
        reference: Option<String>,
        delivered: bool,
    },
    /// Try again later (5xx, 408, 429, timeouts, connection errors, SMTP 4xx).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Will never work (other 4xx, SMTP 5xx, bad addresses).
    Failed { error: String },
}

/// One rendered message for one channel.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub workspace: String,
    pub message_id: String,
    pub channel: String,
    pub address: String,
    pub recipient: String,
    pub to: Value,
    pub title: String,
    pub body: String,
    pub data: Value,
    pub event: String,
    pub notification: String,
    pub run_id: String,
    pub tenant_id: String,
}

/// `courier-signature` value: `t=<ms>,signature=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &str, t_ms: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={t_ms},signature={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[derive(Clone)]
pub struct Senders {
    pub http: reqwest::Client,
    /// `outbound.allow_private_networks`: off, a literal private IP is refused before connecting.
    pub allow_private_networks: bool,
    pub redis: RedisConn,
    pub default_timeout: Duration,
}

impl Senders {
    pub async fn send(&self, provider: &Provider, out: &Outgoing) -> SendResult {
        let timeout = provider
            .u64("timeout_ms")
            .map(Duration::from_millis)
            .unwrap_or(self.default_timeout);
        match provider.kind {
            Kind::Webhook => self.webhook(provider, out, timeout).await,
            Kind::Smtp => smtp(provider, out, timeout).await,
            Kind::Inbox => self.inbox(out).await,
        }
    }

    async fn webhook(&self, provider: &Provider, out: &Outgoing, timeout: Duration) -> SendResult {
        let Some(url) = provider.str("url") else {
            return SendResult::Failed {
                error: "webhook provider has no url".into(),
            };
        };
        let url = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => {
                return SendResult::Failed {
                    error: format!("webhook url is invalid: {e}"),
                };
            }
        };
        // Literal IPs never reach the guard's resolver: checked here, before any connection.
        if let Err(blocked) =
            rc_common::outbound::check_destination(&url, self.allow_private_networks)
        {
            return SendResult::Failed {
                error: format!("webhook destination refused: {blocked}"),
            };
        }
        let payload = json!({
            "type": "message:send",
            "data": {
                "id": out.message_id,
                "channel": out.channel,
                "provider": provider.name,
                "recipient": out.recipient,
                "to": out.to,
                "content": {"title": out.title, "body": out.body},
                "data": out.data,
                "event": out.event,
                "notification": out.notification,
                "run_id": out.run_id,
                "tenant_id": out.tenant_id,
            }
        });
        let body = serde_json::to_vec(&payload).expect("serializable");
        let mut request = self
            .http
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("idempotency-key", &out.message_id);
        if let Some(Value::Object(headers)) = provider.config.get("headers") {
            for (k, v) in headers {
                if let Some(v) = v.as_str() {
                    request = request.header(k.as_str(), v);
                }
            }
        }
        if let Some(secret) = provider.str("secret") {
            request = request.header(
                "courier-signature",
                signature(secret, crate::store::now_ms(), &body),
            );
        }
        let response = match request.body(body).send().await {
            Ok(r) => r,
            Err(err) => {
                // A refused destination stays refused until the provider is reconfigured.
                if let Some(blocked) = rc_common::outbound::is_blocked(&err) {
                    return SendResult::Failed {
                        error: format!("webhook destination refused: {blocked}"),
                    };
                }
                let what = if err.is_timeout() {
                    "timed out"
                } else if err.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return SendResult::Retry {
                    error: format!("webhook {what}: {}", rc_common::outbound::root_cause(&err)),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = rc_common::backoff::retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let reference = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
                ["id", "messageId", "reference"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_str).map(String::from))
            });
            return SendResult::Sent {
                reference,
                delivered: true,
            };
        }
        let excerpt: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(300)
            .collect();
        let error = format!("HTTP {}: {}", status.as_u16(), excerpt.trim());
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            SendResult::Retry { error, retry_after }
        } else {
            SendResult::Failed { error }
        }
    }

    /// The built-in inbox: idempotent on the message id (HSETNX + ZADD NX in one transaction).
    async fn inbox(&self, out: &Outgoing) -> SendResult {
        if out.recipient.is_empty() {
            return SendResult::Failed {
                error: "inbox messages need a recipient user id".into(),
            };
        }
        let now = crate::store::now_ms();
        let item = json!({
            "id": out.message_id,
            "channel": out.channel,
            "title": out.title,
            "body": out.body,
            "data": out.data,
            "event": out.event,
            "notification": out.notification,
            "created_at": now,
        });
        let (items, order) = inbox_keys(&out.workspace, &out.recipient);
        let mut conn = self.redis.clone();
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .cmd("HSETNX")
            .arg(&items)
            .arg(&out.message_id)
            .arg(item.to_string())
            .ignore()
            .cmd("ZADD")
            .arg(&order)
            .arg("NX")
            .arg(now)
            .arg(&out.message_id)
            .ignore()
            .query_async(&mut conn)
            .await;
        match result {
            Ok(()) => SendResult::Sent {
                reference: Some(out.message_id.clone()),
                delivered: true,
            },
            Err(err) => SendResult::Retry {
                error: format!("inbox store unavailable: {err}"),
                retry_after: None,
            },
        }
    }
}

pub use rc_common::keys::inbox as inbox_keys;

async fn smtp(provider: &Provider, out: &Outgoing, timeout: Duration) -> SendResult {
    let failed = |error: String| SendResult::Failed { error };
    let (Some(host), Some(from)) = (provider.str("host"), provider.str("from")) else {
        return failed("smtp provider needs host and from".into());
    };
    let from: Mailbox = match from.parse() {
        Ok(m) => m,
        Err(e) => return failed(format!("invalid from address: {e}")),
    };
    let to: Mailbox = match out.address.parse() {
        Ok(m) => m,
        Err(e) => return failed(format!("invalid recipient address {:?}: {e}", out.address)),
    };
    let email = match lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(out.title.clone())
        .message_id(Some(format!("<{}@rudder-courier>", out.message_id)))
        .header(ContentType::TEXT_PLAIN)
        .body(out.body.clone())
    {
        Ok(m) => m,
        Err(e) => return failed(format!("cannot build the email: {e}")),
    };
    let tls_mode = provider.str("tls").unwrap_or("none");
    let port = provider.u64("port").and_then(|p| u16::try_from(p).ok());
    let params = match TlsParameters::new(host.to_string()) {
        Ok(p) => p,
        Err(e) => return failed(format!("tls setup: {e}")),
    };
    let tls = match tls_mode {
        "tls" => Tls::Wrapper(params),
        "starttls" => Tls::Required(params),
        _ => Tls::None,
    };
    let default_port = match tls_mode {
        "tls" => 465,
        "starttls" => 587,
        _ => 25,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port.unwrap_or(default_port))
        .tls(tls)
        .timeout(Some(timeout));
    if let (Some(user), Some(pass)) = (provider.str("username"), provider.str("password")) {
        builder = builder.credentials(Credentials::new(user.to_string(), pass.to_string()));
    }
    let transport = builder.build();
    match transport.send(email).await {
        Ok(response) => SendResult::Sent {
            reference: Some(
                response
                    .message()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .take(200)
                    .collect(),
            )
            .filter(|s: &String| !s.is_empty())
            .or_else(|| Some(format!("<{}@rudder-courier>", out.message_id))),
            delivered: false,
        },
        Err(e) if e.is_permanent() || e.is_client() => {
            failed(format!("SMTP rejected the message: {e}"))
        }
        Err(e) => SendResult::Retry {
            error: format!("SMTP: {e}"),
            retry_after: None,
        },
    }
}
