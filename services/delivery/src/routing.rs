//! From a `MessageRequest` to what to send: recipient addresses, data, content per channel,
//! and the routing decision (channels × providers), or the Courier reason it cannot be sent.

use rc_proto::MessageRequest;
use serde_json::{Map, Value, json};

use crate::providers::Provider;
use crate::render::{Vars, render};

pub const DEFAULT_CHANNELS: [&str; 6] = ["email", "push", "sms", "inbox", "chat", "webhook"];

fn object(bytes: &[u8]) -> Map<String, Value> {
    if bytes.is_empty() {
        return Map::new();
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn str_of<'a>(v: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn channel_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

/// Courier's routing `method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The first channel that works, in order: a channel without an address or provider is
    /// skipped, and one whose provider fails for good falls back to the next.
    Single,
    /// Every routable channel.
    All,
}

impl Method {
    /// `"all"` (any case) is [`Method::All`]; anything else Courier's default, `single`.
    fn parse(s: &str) -> Self {
        if s.trim().eq_ignore_ascii_case("all") {
            Method::All
        } else {
            Method::Single
        }
    }
}

/// The request, both forms (legacy and `message`) folded into one view.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub recipient: String,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub push_token: Option<String>,
    pub tenant_id: String,
    /// `message.to.tenant_id` was given (a tenant as the audience).
    pub to_tenant: bool,
    pub template: String,
    pub template_status: String,
    pub notification: Map<String, Value>,
    pub inline: Option<Map<String, Value>>,
    pub data: Value,
    pub profile: Value,
    /// In the author's order (the order of preference for [`Method::Single`]).
    pub channels: Vec<String>,
    pub method: Method,
}

impl Prepared {
    pub fn from_request(req: &MessageRequest) -> Self {
        let message = object(&req.message);
        let to = message
            .get("to")
            .and_then(|t| match t {
                Value::Array(a) => a.first(),
                other => Some(other),
            })
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let profile = object(&req.profile);
        let mut data = object(&req.data);
        if let Some(Value::Object(extra)) = message.get("data") {
            for (k, v) in extra {
                data.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let recipient = if req.recipient.is_empty() {
            str_of(&to, "user_id").unwrap_or_default().to_string()
        } else {
            req.recipient.clone()
        };
        let email = str_of(&to, "email")
            .or_else(|| str_of(&profile, "email"))
            .map(String::from);
        let phone_number = str_of(&to, "phone_number")
            .or_else(|| str_of(&profile, "phone_number"))
            .map(String::from);
        let push_token = push_token(&to).or_else(|| push_token(&profile));
        let tenant_id = if req.tenant_id.is_empty() {
            str_of(&to, "tenant_id").unwrap_or_default().to_string()
        } else {
            req.tenant_id.clone()
        };
        let template = if req.template.is_empty() {
            str_of(&message, "template").unwrap_or_default().to_string()
        } else {
            req.template.clone()
        };
        let inline = message
            .get("content")
            .and_then(Value::as_object)
            .cloned()
            .filter(|c| !c.is_empty());
        let notification = object(&req.notification);
        let template_status = if !req.template_status.is_empty() {
            req.template_status.to_ascii_lowercase()
        } else if inline.is_some() && template.is_empty() {
            "inline".into()
        } else if !notification.is_empty() {
            "found".into()
        } else {
            "missing".into()
        };
        let routing = message.get("routing").and_then(Value::as_object);
        // A Courier notification template may carry its own routing (`{method, channels}`).
        let template_routing = notification.get("routing").and_then(Value::as_object);
        let mut channels: Vec<String> = req
            .channels
            .iter()
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if channels.is_empty() {
            channels = channel_list(routing.and_then(|r| r.get("channels")));
        }
        if channels.is_empty() {
            channels = channel_list(template_routing.and_then(|r| r.get("channels")));
        }
        if channels.is_empty() {
            channels = channel_list(notification.get("channels"));
        }
        // The automations service stores content per channel under `channels` (its documented
        // notification template shape); Courier's own shape puts it under `content`. The
        // author's key order is the preference order (serde_json keeps it: `preserve_order`).
        for key in ["channels", "content"] {
            if channels.is_empty()
                && let Some(Value::Object(content)) = notification.get(key)
            {
                channels = content
                    .keys()
                    .filter(|k| crate::providers::CHANNELS.contains(&k.as_str()))
                    .cloned()
                    .collect();
            }
        }
        if channels.is_empty() {
            channels = DEFAULT_CHANNELS.iter().map(|s| s.to_string()).collect();
        }
        let mut seen = std::collections::HashSet::new();
        channels.retain(|c| seen.insert(c.clone()));
        let method = Some(req.routing_method.as_str())
            .filter(|m| !m.trim().is_empty())
            .or_else(|| routing.and_then(|r| str_of(r, "method")))
            .or_else(|| template_routing.and_then(|r| str_of(r, "method")))
            .map_or(Method::Single, Method::parse);
        Prepared {
            recipient,
            email,
            phone_number,
            push_token,
            to_tenant: str_of(&to, "tenant_id").is_some(),
            tenant_id,
            template,
            template_status,
            notification,
            inline,
            data: Value::Object(data),
            profile: Value::Object(profile),
            channels,
            method,
        }
    }

    /// A send to a whole tenant: `to.tenant_id` with no user id and no address of its own.
    pub fn is_tenant_send(&self) -> bool {
        self.to_tenant
            && self.recipient.is_empty()
            && self.email.is_none()
            && self.phone_number.is_none()
            && self.push_token.is_none()
    }

    /// Whether the recipient can be reached on `channel` (webhook/chat need only a provider).
    pub fn address(&self, channel: &str) -> Option<String> {
        match channel {
            "email" => self.email.clone(),
            "sms" => self.phone_number.clone(),
            "push" => self.push_token.clone(),
            "inbox" => Some(self.recipient.clone()).filter(|r| !r.is_empty()),
            "webhook" | "chat" => Some(String::new()),
            _ => None,
        }
    }

    /// Rendered (title, body) for a channel.
    pub fn content(&self, channel: &str) -> (String, String) {
        let pick = |m: &Map<String, Value>| -> Option<(String, String)> {
            let title = str_field(m, &["title", "subject"]);
            let body = str_field(m, &["body", "text"]);
            (title.is_some() || body.is_some())
                .then(|| (title.unwrap_or_default(), body.unwrap_or_default()))
        };
        let raw = self
            .inline
            .as_ref()
            .and_then(|c| {
                c.get(channel)
                    .and_then(Value::as_object)
                    .and_then(pick)
                    .or_else(|| pick(c))
            })
            .or_else(|| {
                let per_channel = |key: &str| {
                    self.notification
                        .get(key)
                        .and_then(Value::as_object)
                        .and_then(|c| c.get(channel))
                        .and_then(Value::as_object)
                        .and_then(pick)
                };
                let content = self.notification.get("content").and_then(Value::as_object);
                per_channel("content")
                    .or_else(|| per_channel("channels"))
                    .or_else(|| content.and_then(pick))
                    .or_else(|| pick(&self.notification))
            })
            .unwrap_or_default();
        let vars = Vars {
            data: &self.data,
            profile: &self.profile,
        };
        (render(&raw.0, &vars), render(&raw.1, &vars))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "user_id": self.recipient,
            "email": self.email,
            "phone_number": self.phone_number,
            "tenant_id": self.tenant_id,
        })
    }
}

fn str_field(m: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| m.get(*k).and_then(Value::as_str))
        .map(String::from)
}

fn push_token(m: &Map<String, Value>) -> Option<String> {
    for key in ["push_token", "firebaseToken", "token"] {
        if let Some(t) = str_of(m, key) {
            return Some(t.to_string());
        }
    }
    for block in ["apn", "expo", "firebase"] {
        if let Some(Value::Object(b)) = m.get(block)
            && let Some(t) = str_of(b, "token")
        {
            return Some(t.to_string());
        }
    }
    None
}

#[derive(Debug, Clone)]
pub struct Target {
    pub channel: String,
    pub address: String,
    pub provider: Provider,
}

#[derive(Debug)]
pub enum Route {
    /// UNMAPPED: no notification template matched.
    Unmapped(String),
    /// UNROUTABLE with a Courier reason.
    Unroutable { reason: &'static str, error: String },
    /// Every routable channel in order; for [`Method::Single`] the first is tried first and
    /// the others are fallbacks.
    Targets(Vec<Target>),
}

pub fn route(p: &Prepared, providers: &[Provider]) -> Route {
    match p.template_status.as_str() {
        "missing" => {
            return Route::Unmapped(if p.template.is_empty() {
                "The message names no template and has no content".into()
            } else {
                format!("Notification template {:?} not found", p.template)
            });
        }
        "unpublished" => {
            return Route::Unroutable {
                reason: "UNPUBLISHED",
                error: format!("Notification template {:?} is not published", p.template),
            };
        }
        _ => {}
    }
    if p.notification.get("published") == Some(&Value::Bool(false)) {
        return Route::Unroutable {
            reason: "UNPUBLISHED",
            error: format!("Notification template {:?} is not published", p.template),
        };
    }
    if providers.is_empty() {
        return Route::Unroutable {
            reason: "NO_PROVIDERS",
            error: "No providers added".into(),
        };
    }
    let mut targets = Vec::new();
    let mut any_address = false;
    for channel in &p.channels {
        let Some(address) = p.address(channel) else {
            continue;
        };
        let provider = providers
            .iter()
            .find(|pr| pr.channels.iter().any(|c| c == channel));
        if !matches!(channel.as_str(), "webhook" | "chat") {
            any_address = true;
        }
        if let Some(provider) = provider {
            any_address = true;
            targets.push(Target {
                channel: channel.clone(),
                address,
                provider: provider.clone(),
            });
        }
    }
    if !targets.is_empty() {
        return Route::Targets(targets);
    }
    if !any_address {
        Route::Unroutable {
            reason: "NO_CHANNELS",
            error: format!(
                "The recipient has no address for any of the channels {}",
                p.channels.join(", ")
            ),
        }
    } else {
        Route::Unroutable {
            reason: "NO_PROVIDERS",
            error: format!(
                "No provider is configured for the recipient's channels among {}",
                p.channels.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Kind;

    fn provider(name: &str, kind: Kind, channels: &[&str]) -> Provider {
        Provider {
            name: name.into(),
            kind,
            channels: channels.iter().map(|s| s.to_string()).collect(),
            priority: 0,
            config: Map::new(),
        }
    }

    fn req(message: Value, profile: Value) -> MessageRequest {
        MessageRequest {
            workspace_id: "ws".into(),
            message_id: "m1".into(),
            message: message.to_string().into_bytes().into(),
            profile: profile.to_string().into_bytes().into(),
            data: br#"{"name":"Ada"}"#.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn automations_template_shape_gives_channels_and_content() {
        // What the automations service stores and embeds: content per channel under `channels`.
        let mut r = req(json!({}), json!({"email": "p@x.org", "name": "Ada"}));
        r.recipient = "u1".into();
        r.template = "WELCOME".into();
        r.notification = json!({"id": "WELCOME", "published": true, "channels": {
            "webhook": {"title": "Hi {{profile.name}}", "body": "b"},
            "email": {"subject": "Mail {{name}}", "text": "t"}}})
        .to_string()
        .into_bytes()
        .into();
        let p = Prepared::from_request(&r);
        assert_eq!(p.template_status, "found");
        assert_eq!(p.channels, ["webhook", "email"], "the author's order");
        assert_eq!(p.method, Method::Single);
        assert_eq!(p.content("webhook"), ("Hi Ada".into(), "b".into()));
        assert_eq!(p.content("email"), ("Mail Ada".into(), "t".into()));
    }

    #[test]
    fn message_form_inline_content_and_routing() {
        let r = req(
            json!({"to": {"user_id": "u1", "email": "a@x.org"}, "content": {"title": "Hi {{name}}", "body": "to {{profile.email}} {{data.name}}"},
                   "routing": {"method": "single", "channels": ["sms", "email"]}}),
            json!({"email": "p@x.org"}),
        );
        let p = Prepared::from_request(&r);
        assert_eq!(p.recipient, "u1");
        assert_eq!(p.template_status, "inline");
        assert_eq!(p.channels, vec!["sms", "email"]);
        assert_eq!(
            p.content("email"),
            ("Hi Ada".into(), "to p@x.org Ada".into())
        );
        let providers = vec![provider("mail", Kind::Smtp, &["email"])];
        match route(&p, &providers) {
            Route::Targets(t) => {
                assert_eq!(t.len(), 1);
                assert_eq!(t[0].channel, "email");
                assert_eq!(t[0].address, "a@x.org");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reasons() {
        let r = req(
            json!({"to": {"user_id": "u1"}, "content": {"body": "x"}, "routing": {"channels": ["email", "sms"]}}),
            json!({}),
        );
        let p = Prepared::from_request(&r);
        assert!(matches!(
            route(&p, &[]),
            Route::Unroutable {
                reason: "NO_PROVIDERS",
                ..
            }
        ));
        let providers = vec![provider("mail", Kind::Smtp, &["email"])];
        assert!(matches!(
            route(&p, &providers),
            Route::Unroutable {
                reason: "NO_CHANNELS",
                ..
            }
        ));
        let r = req(
            json!({"to": {"user_id": "u1", "phone_number": "+1555"}, "content": {"body": "x"}, "routing": {"channels": ["sms"]}}),
            json!({}),
        );
        let p = Prepared::from_request(&r);
        assert!(matches!(
            route(&p, &providers),
            Route::Unroutable {
                reason: "NO_PROVIDERS",
                ..
            }
        ));
        let mut r = req(json!({}), json!({}));
        r.template = "T".into();
        r.template_status = "missing".into();
        assert!(matches!(
            route(&Prepared::from_request(&r), &providers),
            Route::Unmapped(_)
        ));
        r.template_status = "unpublished".into();
        assert!(matches!(
            route(&Prepared::from_request(&r), &providers),
            Route::Unroutable {
                reason: "UNPUBLISHED",
                ..
            }
        ));
    }

    #[test]
    fn method_all_uses_every_reachable_channel() {
        let r = req(
            json!({"to": {"user_id": "u1", "email": "a@x.org"}, "content": {"body": "x"}, "routing": {"method": "all", "channels": ["email", "webhook", "sms"]}}),
            json!({}),
        );
        let p = Prepared::from_request(&r);
        let providers = vec![
            provider("mail", Kind::Smtp, &["email"]),
            provider("hook", Kind::Webhook, &["webhook"]),
        ];
        match route(&p, &providers) {
            Route::Targets(t) => assert_eq!(
                t.iter().map(|t| t.channel.as_str()).collect::<Vec<_>>(),
                ["email", "webhook"]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_template_routing_gives_order_and_method_unless_the_message_says() {
        let mut r = req(
            json!({"to": {"user_id": "u1", "email": "a@x.org"}}),
            json!({}),
        );
        r.template = "T".into();
        r.notification = json!({"published": true,
            "routing": {"method": "ALL", "channels": ["inbox", "email"]},
            "channels": {"email": {"body": "e"}, "inbox": {"body": "i"}}})
        .to_string()
        .into_bytes()
        .into();
        let p = Prepared::from_request(&r);
        assert_eq!(p.channels, ["inbox", "email"]);
        assert_eq!(p.method, Method::All);
        // The send's own routing wins.
        r.routing_method = "single".into();
        r.channels = vec!["EMAIL".into()];
        let p = Prepared::from_request(&r);
        assert_eq!(p.channels, ["email"]);
        assert_eq!(p.method, Method::Single);
    }

    #[test]
    fn single_lists_every_routable_channel_as_a_fallback() {
        let r = req(
            json!({"to": {"user_id": "u1", "email": "a@x.org"}, "content": {"body": "x"},
                   "routing": {"method": "single", "channels": ["sms", "webhook", "email", "inbox"]}}),
            json!({}),
        );
        let p = Prepared::from_request(&r);
        let providers = vec![
            provider("mail", Kind::Smtp, &["email"]),
            provider("hook", Kind::Webhook, &["webhook"]),
        ];
        match route(&p, &providers) {
            // sms: no address; inbox: no provider.
            Route::Targets(t) => assert_eq!(
                t.iter().map(|t| t.channel.as_str()).collect::<Vec<_>>(),
                ["webhook", "email"]
            ),
            other => panic!("{other:?}"),
        }
        for m in ["", "single", "bogus"] {
            assert_eq!(Method::parse(m), Method::Single, "{m}");
        }
        assert_eq!(Method::parse(" All "), Method::All);
    }
}
