//! Typed automation steps. Parsing a step document into a [`Step`] is its validation: every
//! field has a type that refuses what it must not hold (a duration over the limit, an
//! expression over its bounds, a `refs.` path too long), and the error starts with the JSON
//! path of the field (`steps[3].template: required`).
//!
//! The wire shape is Courier's: an object tagged by `action`, with the optional `if`
//! (expression) and `ref` (name of the step's result in the run context). A new step type is
//! one struct and one line in the [`actions!`] list; each crate's `match` on [`Action`] then
//! lists what is missing.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{MAX_REF_BYTES, MAX_STEPS, check_ref_path, expr, is_ref, parse_duration, parse_until};

/// Checks that span fields (`duration` or `until`, `template` unless `message`), run after the
/// fields parsed; `path` is the step's.
pub trait Check {
    fn check(&self, _path: &str) -> Result<(), String> {
        Ok(())
    }
}

macro_rules! actions {
    ($($variant:ident($ty:ident) = $name:literal,)*) => {
        /// What a step does: the `action` tag and the fields of that action.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "action")]
        pub enum Action {
            $(#[serde(rename = $name)] $variant($ty),)*
        }

        /// Every `action` name, in documentation order.
        pub const ACTIONS: &[&str] = &[$($name),*];

        impl Action {
            /// The `action` tag (timeline entries, metrics).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Action::$variant(_) => $name,)*
                }
            }

            fn parse(name: &str, v: &Value, path: &str) -> Option<Result<Action, String>> {
                match name {
                    $($name => Some(typed::<$ty>(v, path).map(Action::$variant)),)*
                    _ => None,
                }
            }
        }
    };
}

actions! {
    Send(Send) = "send",
    SendList(SendList) = "send-list",
    Delay(Delay) = "delay",
    Cancel(Cancel) = "cancel",
    UpdateProfile(UpdateProfile) = "update-profile",
    Invoke(Invoke) = "invoke",
    FetchData(FetchData) = "fetch-data",
}

/// One step: the common `if` and `ref`, and its action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub name: Option<RefName>,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Deserialize)]
struct Common {
    #[serde(rename = "if", default)]
    condition: Option<Condition>,
    #[serde(rename = "ref", default)]
    name: Option<RefName>,
}

impl Check for Common {}

impl Step {
    /// Parses (validates) one step document; errors start with `path` (`steps[2]`). The
    /// caller has bounded the document's nesting ([`super::check_document`]).
    pub fn parse(v: &Value, path: &str) -> Result<Step, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{path}: must be an object"))?;
        let action = obj
            .get("action")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{path}.action: required string"))?;
        check_refs(v, path)?;
        let common: Common = typed(v, path)?;
        let action = Action::parse(action, v, path).ok_or_else(|| {
            format!(
                "{path}.action: unknown action {action:?} (one of {})",
                ACTIONS.join(", ")
            )
        })??;
        Ok(Step {
            condition: common.condition,
            name: common.name,
            action,
        })
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        super::check_document(&v, "step", super::MAX_AUTOMATION_BYTES).map_err(D::Error::custom)?;
        Step::parse(&v, "step").map_err(D::Error::custom)
    }
}

/// Parses a step list (at most [`MAX_STEPS`]); errors start with `path` (`steps[2].duration`).
/// The caller has bounded the document's nesting ([`super::check_document`]).
pub fn parse_steps(steps: &Value, path: &str) -> Result<Vec<Step>, String> {
    let list = steps
        .as_array()
        .ok_or_else(|| format!("{path}: must be an array of steps"))?;
    if list.len() > MAX_STEPS {
        return Err(format!(
            "{path}: {} steps; the limit is {MAX_STEPS}",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, step)| Step::parse(step, &format!("{path}[{i}]")))
        .collect()
}

/// Deserializes `T` from `v`, the error naming the field's path under `path`, then runs its
/// [`Check`].
fn typed<T: DeserializeOwned + Check>(v: &Value, path: &str) -> Result<T, String> {
    let t: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let at = match e.path().to_string() {
            root if root == "." => String::new(),
            p => format!(".{p}"),
        };
        let inner = e.into_inner().to_string();
        match inner
            .strip_prefix("missing field `")
            .and_then(|f| f.strip_suffix('`'))
        {
            Some(field) => format!("{path}{at}.{field}: required"),
            None => format!("{path}{at}: {inner}"),
        }
    })?;
    t.check(path)?;
    Ok(t)
}

/// Every `{"$ref": path}` anywhere in `step` (walked without recursion) has a bounded path.
fn check_refs(step: &Value, path: &str) -> Result<(), String> {
    let mut stack = vec![step];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                if is_ref(v)
                    && let Some(Value::String(r)) = o.get("$ref")
                {
                    check_ref_path(r.strip_prefix("refs.").unwrap_or(r))
                        .map_err(|e| format!("{path}: $ref {e}"))?;
                }
                stack.extend(o.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    Ok(())
}

// ---- field types ------------------------------------------------------------------------------

/// An `if` expression, parsed (bounded, see [`expr`]) and kept with its source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Condition {
    pub source: String,
    pub expr: expr::Expr,
}

impl TryFrom<String> for Condition {
    type Error = String;
    fn try_from(source: String) -> Result<Self, String> {
        let expr = expr::parse(&source)?;
        Ok(Condition { source, expr })
    }
}

impl From<Condition> for String {
    fn from(c: Condition) -> String {
        c.source
    }
}

/// A step's `ref`: the name its result gets in the run context.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefName(pub String);

impl TryFrom<String> for RefName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_REF_BYTES || s.contains('.') {
            return Err(format!(
                "must be a non-empty name without dots, at most {MAX_REF_BYTES} bytes"
            ));
        }
        Ok(RefName(s))
    }
}

impl From<RefName> for String {
    fn from(r: RefName) -> String {
        r.0
    }
}

/// A string field that may read the run context: a literal, a designer-style `"refs.<path>"`
/// or `{"$ref": "<path>"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum Text {
    Literal(String),
    /// `"refs.<path>"` (the path kept without `refs.`).
    Refs(String),
    /// `{"$ref": "<path>"}` (as written).
    Ref(String),
}

impl Text {
    /// The context path this field reads, without `refs.`; None for a literal.
    pub fn path(&self) -> Option<&str> {
        match self {
            Text::Literal(_) => None,
            Text::Refs(p) => Some(p),
            Text::Ref(p) => Some(p.strip_prefix("refs.").unwrap_or(p)),
        }
    }
}

impl TryFrom<Value> for Text {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        match v {
            Value::String(s) => match s.strip_prefix("refs.") {
                Some(p) => {
                    check_ref_path(p)?;
                    Ok(Text::Refs(p.to_string()))
                }
                None => Ok(Text::Literal(s)),
            },
            v if is_ref(&v) => match v.get("$ref") {
                Some(Value::String(p)) => Ok(Text::Ref(p.clone())),
                _ => Err("must be a string or a $ref".into()),
            },
            _ => Err("must be a string or a $ref".into()),
        }
    }
}

impl From<Text> for Value {
    fn from(t: Text) -> Value {
        match t {
            Text::Literal(s) => Value::String(s),
            Text::Refs(p) => Value::String(format!("refs.{p}")),
            Text::Ref(p) => serde_json::json!({ "$ref": p }),
        }
    }
}

/// A JSON object (which may hold `{"$ref": …}` values, resolved when the step runs).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct Object(Value);

impl Object {
    pub fn as_value(&self) -> &Value {
        &self.0
    }
}

impl TryFrom<Value> for Object {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        if v.is_object() {
            Ok(Object(v))
        } else {
            Err("must be an object".into())
        }
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Value {
        o.0
    }
}

/// Courier's merge strategies (update-profile `merge`, fetch-data `merge_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeStrategy {
    #[default]
    Replace,
    SoftMerge,
    Overwrite,
    None,
}

impl MergeStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            MergeStrategy::Replace => "replace",
            MergeStrategy::SoftMerge => "soft-merge",
            MergeStrategy::Overwrite => "overwrite",
            MergeStrategy::None => "none",
        }
    }
}

/// A `delay` duration (`"1 hour 30 minutes"`), at most [`super::MAX_DELAY_MS`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration {
    pub text: String,
    pub ms: u64,
}

impl TryFrom<String> for Duration {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let ms = parse_duration(&text)?;
        Ok(Duration { text, ms })
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> String {
        d.text
    }
}

/// A `delay` `until` instant (RFC 3339).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Until {
    pub text: String,
    pub epoch_ms: i64,
}

impl TryFrom<String> for Until {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let epoch_ms = parse_until(&text)?;
        Ok(Until { text, epoch_ms })
    }
}

impl From<Until> for String {
    fn from(u: Until) -> String {
        u.text
    }
}

/// A non-empty cancelation token.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Token(pub String);

impl TryFrom<String> for Token {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must be a non-empty string".into());
        }
        Ok(Token(s))
    }
}

impl From<Token> for String {
    fn from(t: Token) -> String {
        t.0
    }
}

/// An `http://` or `https://` URL (the private-address guard is the caller's, see
/// [`fetch_data_urls`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(pub String);

impl TryFrom<String> for HttpUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.starts_with("http://") || s.starts_with("https://") {
            Ok(HttpUrl(s))
        } else {
            Err("required http(s) URL".into())
        }
    }
}

impl From<HttpUrl> for String {
    fn from(u: HttpUrl) -> String {
        u.0
    }
}

/// A fetch-data method (any case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

impl TryFrom<String> for HttpMethod {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Patch,
            HttpMethod::Delete,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(&s))
        .ok_or_else(|| "must be GET, POST, PUT, PATCH or DELETE".into())
    }
}

impl From<HttpMethod> for String {
    fn from(m: HttpMethod) -> String {
        m.as_str().into()
    }
}

// ---- the steps --------------------------------------------------------------------------------

/// `send`: a Courier `message` as is, or a `template` to a `recipient` (default: the run's).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Send {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Object>,
    #[serde(rename = "override", default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Object>,
}

impl Check for Send {
    fn check(&self, path: &str) -> Result<(), String> {
        if self.message.is_none() && self.template.is_none() {
            return Err(format!("{path}.template: required"));
        }
        Ok(())
    }
}

/// `send-list` (Courier's `AutomationSendListStep`): one message per subscriber of `list`;
/// without `template`, the run's.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SendList {
    pub list: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Object>,
    #[serde(rename = "override", default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<Object>,
}

impl Check for SendList {
    fn check(&self, path: &str) -> Result<(), String> {
        match &self.list {
            Text::Literal(s) if s.is_empty() => {
                Err(format!("{path}.list: must be a list id or a $ref"))
            }
            _ => Ok(()),
        }
    }
}

/// `delay`: for a `duration` or until an instant (exactly one of them).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Delay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Until>,
}

impl Delay {
    /// The instant (epoch ms) a delay reached at `now_ms` ends.
    pub fn wake_at(&self, now_ms: i64) -> i64 {
        match (&self.duration, &self.until) {
            (Some(d), _) => now_ms.saturating_add(d.ms as i64),
            (None, Some(u)) => u.epoch_ms,
            (None, None) => now_ms,
        }
    }
}

impl Check for Delay {
    fn check(&self, path: &str) -> Result<(), String> {
        match (&self.duration, &self.until) {
            (Some(_), Some(_)) => Err(format!("{path}: give either duration or until, not both")),
            (None, None) => Err(format!("{path}.duration: required (or until)")),
            _ => Ok(()),
        }
    }
}

/// `cancel`: cancels the other runs registered under the token (both spellings accepted).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Cancel {
    #[serde(alias = "cancellation_token")]
    pub cancelation_token: Token,
}

impl Check for Cancel {}

/// `update-profile`: a profile update request for `recipient_id` (default: the run's).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct UpdateProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_id: Option<Text>,
    pub profile: Object,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeStrategy>,
}

impl Check for UpdateProfile {}

/// `invoke`: starts a run of an automation template.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Invoke {
    pub template: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Object>,
}

impl Check for Invoke {}

/// `fetch-data`: calls a webhook and merges its JSON answer into the run's `data`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FetchData {
    pub webhook: Webhook,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_strategy: Option<MergeStrategy>,
}

impl Check for FetchData {}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Webhook {
    pub url: HttpUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Object>,
    /// A string is sent as is; anything else as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// The literal fetch-data URLs of a parsed step list, with their step index, for a caller that
/// knows the outbound policy to check them against the private-address guard
/// (`rc_common::outbound::check_url_str`). URLs built from the context (`{{…}}`) are left to
/// the guard at connect time.
pub fn fetch_data_urls(steps: &[Step]) -> impl Iterator<Item = (usize, &str)> {
    steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| match &step.action {
            Action::FetchData(f) => Some((i, f.webhook.url.0.as_str())),
            _ => None,
        })
        .filter(|(_, url)| !url.contains("{{"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(step: Value) -> Result<Step, String> {
        Step::parse(&step, "steps[0]")
    }

    #[test]
    fn every_action_parses_and_serializes_back() {
        let docs = [
            json!({"action": "send", "template": "T", "recipient": "refs.data.userId", "data": {"a": {"$ref": "data.x"}}}),
            json!({"action": "send", "message": {"to": {"user_id": "u"}}}),
            json!({"action": "send-list", "list": {"$ref": "data.list"}, "override": {"channels": ["email"]}}),
            json!({"action": "delay", "duration": "5 minutes"}),
            json!({"action": "delay", "until": "2030-01-01T00:00:00Z"}),
            json!({"action": "cancel", "cancelation_token": "t"}),
            json!({"action": "update-profile", "profile": {"a": 1}, "merge": "soft-merge"}),
            json!({"action": "invoke", "template": "T", "context": {"data": {}}}),
            json!({"action": "fetch-data", "webhook": {"url": "https://x.test/a", "method": "POST", "body": "raw"}, "merge_strategy": "overwrite"}),
            json!({"action": "delay", "duration": "1s", "if": "data.x == 1", "ref": "wait"}),
        ];
        for doc in docs {
            let step = one(doc.clone()).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(serde_json::to_value(&step).unwrap(), doc);
            let again: Step = serde_json::from_value(doc.clone()).unwrap();
            assert_eq!(again, step);
        }
        // Both token spellings; the method in any case.
        let c = one(json!({"action": "cancel", "cancellation_token": "t"})).unwrap();
        assert!(
            matches!(c.action, Action::Cancel(Cancel { cancelation_token: Token(t) }) if t == "t")
        );
        let f =
            one(json!({"action": "fetch-data", "webhook": {"url": "http://x", "method": "get"}}))
                .unwrap();
        let Action::FetchData(f) = f.action else {
            panic!()
        };
        assert_eq!(f.webhook.method, Some(HttpMethod::Get));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"action": "send"}), "steps[0].template: required"),
            (
                json!({"action": "send", "template": 5}),
                "steps[0].template: must be a string or a $ref",
            ),
            (
                json!({"action": "send", "template": "T", "data": [1]}),
                "steps[0].data: must be an object",
            ),
            (json!({"action": "send-list"}), "steps[0].list: required"),
            (
                json!({"action": "send-list", "list": ""}),
                "steps[0].list: must be a list id or a $ref",
            ),
            (
                json!({"action": "delay"}),
                "steps[0].duration: required (or until)",
            ),
            (
                json!({"action": "delay", "duration": "1s", "until": "2030-01-01T00:00:00Z"}),
                "steps[0]: give either duration or until, not both",
            ),
            (
                json!({"action": "delay", "until": "tomorrow"}),
                "steps[0].until: cannot parse \"tomorrow\" as an ISO 8601 date-time",
            ),
            (
                json!({"action": "cancel"}),
                "steps[0].cancelation_token: required",
            ),
            (
                json!({"action": "cancel", "cancelation_token": ""}),
                "steps[0].cancelation_token: must be a non-empty string",
            ),
            (
                json!({"action": "update-profile"}),
                "steps[0].profile: required",
            ),
            (
                json!({"action": "invoke", "template": "T", "context": 1}),
                "steps[0].context: must be an object",
            ),
            (
                json!({"action": "fetch-data", "webhook": {"url": "ftp://x"}}),
                "steps[0].webhook.url: required http(s) URL",
            ),
            (
                json!({"action": "fetch-data", "webhook": {}}),
                "steps[0].webhook.url: required",
            ),
            (
                json!({"action": "fetch-data", "webhook": {"url": "http://x", "method": "TRACE"}}),
                "steps[0].webhook.method: must be GET, POST, PUT, PATCH or DELETE",
            ),
            (
                json!({"action": "fetch-data", "webhook": {"url": "http://x", "headers": []}}),
                "steps[0].webhook.headers: must be an object",
            ),
            (
                json!({"action": "delay", "duration": "1s", "ref": "a.b"}),
                "steps[0].ref: must be a non-empty name without dots, at most 256 bytes",
            ),
            (
                json!({"action": "fly"}),
                "steps[0].action: unknown action \"fly\" (one of send, send-list, delay, cancel, update-profile, invoke, fetch-data)",
            ),
            (json!({"template": "T"}), "steps[0].action: required string"),
            (json!([1]), "steps[0]: must be an object"),
        ];
        for (doc, want) in cases {
            assert_eq!(one(doc.clone()).unwrap_err(), want, "{doc}");
        }
        let merge =
            one(json!({"action": "update-profile", "profile": {}, "merge": "deep"})).unwrap_err();
        assert!(
            merge.starts_with("steps[0].merge: unknown variant `deep`"),
            "{merge}"
        );
    }

    #[test]
    fn hostile_fields_are_bounded() {
        let long = "a.".repeat(MAX_REF_BYTES);
        let err = one(json!({"action": "send", "template": format!("refs.{long}")})).unwrap_err();
        assert!(err.starts_with("steps[0].template: path is"), "{err}");
        let err = one(json!({"action": "send", "template": "T", "data": {"x": [{"$ref": long}]}}))
            .unwrap_err();
        assert!(err.starts_with("steps[0]: $ref path is"), "{err}");
        let err = one(json!({"action": "delay", "duration": "9".repeat(100)})).unwrap_err();
        assert!(
            err.starts_with("steps[0].duration: duration is 100 bytes"),
            "{err}"
        );
        let err =
            one(json!({"action": "delay", "duration": "1s", "if": "(".repeat(5000)})).unwrap_err();
        assert!(err.starts_with("steps[0].if: "), "{err}");
        let many = Value::Array(vec![
            json!({"action": "delay", "duration": "1s"});
            MAX_STEPS + 1
        ]);
        assert_eq!(
            parse_steps(&many, "steps").unwrap_err(),
            format!("steps: {} steps; the limit is {MAX_STEPS}", MAX_STEPS + 1)
        );
        // Deserializing bounds the document like the API does.
        let deep = (0..40).fold(json!(1), |v, _| json!([v]));
        let err = serde_json::from_value::<Step>(
            json!({"action": "send", "template": "T", "data": {"d": deep}}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nested deeper than"), "{err}");
    }

    #[test]
    fn fetch_urls_of_literal_webhooks() {
        let steps = parse_steps(
            &json!([
                {"action": "delay", "duration": "1s"},
                {"action": "fetch-data", "webhook": {"url": "http://10.0.0.1/x"}},
                {"action": "fetch-data", "webhook": {"url": "http://{{data.host}}/x"}}
            ]),
            "steps",
        )
        .unwrap();
        assert_eq!(
            fetch_data_urls(&steps).collect::<Vec<_>>(),
            vec![(1, "http://10.0.0.1/x")]
        );
    }
}
