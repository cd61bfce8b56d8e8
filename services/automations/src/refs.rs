//! `refs`: reading the run context, `{"$ref": "…"}` substitution and merge strategies.
//!
//! The context is a JSON object: `data`, `profile`, `brand`, `template`, `recipient`, plus one
//! entry per step `ref` (the step's result). A path is dotted (`data.order.total`, array indices
//! as numbers: `data.items.0.sku`), optionally prefixed `refs.`.

use rc_common::automation::MAX_JSON_DEPTH;
use rc_common::automation::steps::{MergeStrategy, Object, Text};
use serde_json::{Map, Value};

/// The value at `path` in `ctx`, `null` when any segment is missing.
pub fn lookup(ctx: &Value, path: &str) -> Value {
    let path = path.strip_prefix("refs.").unwrap_or(path);
    let mut cur = ctx;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        cur = match cur {
            Value::Object(o) => match o.get(seg) {
                Some(v) => v,
                None => return Value::Null,
            },
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(v) => v,
                None => return Value::Null,
            },
            _ => return Value::Null,
        };
    }
    cur.clone()
}

/// Replaces every `{"$ref": "path"}` object (exactly one key) in `v` by its value in `ctx`.
/// Recursion is bounded: below [`MAX_JSON_DEPTH`] levels (deeper than any validated step can
/// be) values are copied as they are.
pub fn resolve(v: &Value, ctx: &Value) -> Value {
    resolve_at(v, ctx, 1)
}

fn resolve_at(v: &Value, ctx: &Value, depth: usize) -> Value {
    if depth > MAX_JSON_DEPTH {
        return v.clone();
    }
    match v {
        Value::Object(o) => {
            if o.len() == 1
                && let Some(Value::String(path)) = o.get("$ref")
            {
                return lookup(ctx, path);
            }
            Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), resolve_at(v, ctx, depth + 1)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| resolve_at(v, ctx, depth + 1)).collect()),
        other => other.clone(),
    }
}

/// A designer-style string field (`recipient`, `recipient_id`, `template`, `brand`): a string
/// starting with `refs.` is read from the context; anything else is taken literally.
pub fn resolve_str_field(v: &Value, ctx: &Value) -> Value {
    match v {
        Value::String(s) if s.starts_with("refs.") => lookup(ctx, s),
        other => resolve(other, ctx),
    }
}

/// A typed string field's value in `ctx`: the literal, or the string at its path (empty when
/// the path names nothing or no string).
pub fn text(t: &Text, ctx: &Value) -> String {
    match (t, t.path()) {
        (Text::Literal(s), _) => s.clone(),
        (_, Some(p)) => lookup(ctx, p).as_str().unwrap_or_default().to_string(),
        (_, None) => String::new(),
    }
}

/// An optional typed string field: None when absent or resolving to "".
pub fn opt_text(t: Option<&Text>, ctx: &Value) -> Option<String> {
    t.map(|t| text(t, ctx)).filter(|s| !s.is_empty())
}

/// An optional object field with its `$ref`s resolved (null when absent).
pub fn object(o: Option<&Object>, ctx: &Value) -> Value {
    o.map(|o| resolve(o.as_value(), ctx)).unwrap_or(Value::Null)
}

/// Courier merge strategies, applied to `old` with `new`.
pub fn merge(old: &Value, new: &Value, strategy: MergeStrategy) -> Value {
    use MergeStrategy as M;
    let empty = |v: &Value| v.is_null() || v.as_object().is_some_and(Map::is_empty);
    match (strategy, old, new) {
        (M::None, o, n) => {
            if empty(o) {
                n.clone()
            } else {
                o.clone()
            }
        }
        (M::SoftMerge, Value::Object(o), Value::Object(n)) => {
            let mut out = o.clone();
            for (k, v) in n {
                out.entry(k.clone()).or_insert_with(|| v.clone());
            }
            Value::Object(out)
        }
        (M::Overwrite, Value::Object(o), Value::Object(n)) => {
            let mut out = o.clone();
            for (k, v) in n {
                out.insert(k.clone(), v.clone());
            }
            Value::Object(out)
        }
        (M::SoftMerge, o, _) if !empty(o) => o.clone(),
        (_, _, n) => n.clone(),
    }
}

/// Shallow object merge where `new`'s keys win (null/non-object sides are ignored).
pub fn overlay(old: &Value, new: &Value) -> Value {
    merge(
        &if old.is_object() {
            old.clone()
        } else {
            Value::Object(Map::new())
        },
        &if new.is_object() {
            new.clone()
        } else {
            Value::Object(Map::new())
        },
        MergeStrategy::Overwrite,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_resolve_anywhere() {
        let ctx = json!({"data": {"days": 3, "items": [{"sku": "a"}]}, "recipient": "u1", "lookup": {"x": 1}});
        let v = json!({"a": {"$ref": "data.days"}, "b": [{"$ref": "data.items.0.sku"}], "c": {"$ref": "lookup.x"}, "d": {"$ref": "data.nope"}});
        assert_eq!(
            resolve(&v, &ctx),
            json!({"a": 3, "b": ["a"], "c": 1, "d": null})
        );
        assert_eq!(
            resolve_str_field(&json!("refs.recipient"), &ctx),
            json!("u1")
        );
        assert_eq!(resolve_str_field(&json!("u2"), &ctx), json!("u2"));
    }

    #[test]
    fn merge_strategies() {
        let (old, new) = (json!({"a": 1, "b": 1}), json!({"b": 2, "c": 2}));
        use MergeStrategy as M;
        assert_eq!(merge(&old, &new, M::Replace), new);
        assert_eq!(
            merge(&old, &new, M::SoftMerge),
            json!({"a": 1, "b": 1, "c": 2})
        );
        assert_eq!(
            merge(&old, &new, M::Overwrite),
            json!({"a": 1, "b": 2, "c": 2})
        );
        assert_eq!(merge(&old, &new, M::None), old);
        assert_eq!(merge(&json!({}), &new, M::None), new);
    }
}
