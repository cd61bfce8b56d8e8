//! Template rendering: `{{data.x}}`, `{{profile.email}}`, bare `{{x}}` (data first, then the
//! profile), dotted paths into objects and array indexes (`{{data.items.0.name}}`).
//!
//! Rules: a missing variable renders as the empty string; strings render raw, numbers and
//! booleans as text, objects/arrays as compact JSON, `null` as empty. There is no HTML escaping
//! (bodies are sent as text). A `{{` without a closing `}}` is kept literally: rendering never
//! fails and never panics.
//!
//! Bounded: a 64 KiB template repeating `{{profile.big}}` over a 256 KiB field would otherwise
//! render a gigabyte. Output stops at [`MAX_RENDERED_BYTES`], ending with [`TRUNCATED`].

use serde_json::Value;

pub struct Vars<'a> {
    pub data: &'a Value,
    pub profile: &'a Value,
}

fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = root;
    for part in path.split('.') {
        if part.is_empty() {
            return None;
        }
        cur = match cur {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn resolve<'v>(vars: &'v Vars<'_>, name: &str) -> Option<&'v Value> {
    if let Some(rest) = name.strip_prefix("data.") {
        return lookup(vars.data, rest);
    }
    if let Some(rest) = name.strip_prefix("profile.") {
        return lookup(vars.profile, rest);
    }
    lookup(vars.data, name).or_else(|| lookup(vars.profile, name))
}

fn to_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Bound on one rendered title or body.
pub const MAX_RENDERED_BYTES: usize = 256 * 1024;
/// Ends a rendering cut at [`MAX_RENDERED_BYTES`], so the cut is visible to the reader.
pub const TRUNCATED: &str = "…[truncated: the rendered content passed 262144 bytes]";

pub fn render(template: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(template.len().min(MAX_RENDERED_BYTES));
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if !push_bounded(&mut out, &rest[..start]) {
            return out;
        }
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                if let Some(v) = resolve(vars, name)
                    && !push_bounded(&mut out, &to_text(v))
                {
                    return out;
                }
                rest = &after[end + 2..];
            }
            None => {
                push_bounded(&mut out, &rest[start..]);
                return out;
            }
        }
    }
    push_bounded(&mut out, rest);
    out
}

/// Appends `s` when it fits under the bound; otherwise appends what fits (on a char boundary)
/// and the truncation marker, and answers false.
fn push_bounded(out: &mut String, s: &str) -> bool {
    let room = MAX_RENDERED_BYTES.saturating_sub(out.len());
    if s.len() <= room {
        out.push_str(s);
        return true;
    }
    let mut cut = room;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    out.push_str(&s[..cut]);
    out.push_str(TRUNCATED);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_data_profile_and_bare_names() {
        let data = json!({"name": "Ada", "order": {"total": 42.5, "items": [{"sku": "A1"}]}});
        let profile = json!({"email": "ada@example.org", "name": "Profile Ada", "plan": "team"});
        let v = Vars {
            data: &data,
            profile: &profile,
        };
        assert_eq!(
            render(
                "Hi {{name}} <{{profile.email}}>, total {{ data.order.total }}, sku {{data.order.items.0.sku}}, plan {{plan}}, {{profile.name}}",
                &v
            ),
            "Hi Ada <ada@example.org>, total 42.5, sku A1, plan team, Profile Ada"
        );
    }

    #[test]
    fn missing_and_malformed_never_fail() {
        let data = json!({"a": 1});
        let profile = json!(null);
        let v = Vars {
            data: &data,
            profile: &profile,
        };
        assert_eq!(render("x{{missing}}y{{data.a.b}}z", &v), "xyz");
        assert_eq!(render("open {{a", &v), "open {{a");
        assert_eq!(render("{{}}{{.}}{{a..b}}}}", &v), "}}");
        assert_eq!(render("é{{a}}ü", &v), "é1ü");
        assert_eq!(render("", &v), "");
    }

    #[test]
    fn amplification_is_bounded() {
        let data = json!({});
        let profile = json!({"big": "é".repeat(128 * 1024)});
        let v = Vars {
            data: &data,
            profile: &profile,
        };
        // 64 KiB of template naming a 256 KiB field: a gigabyte unbounded.
        let template = "{{profile.big}}".repeat(64 * 1024 / 15);
        let out = render(&template, &v);
        assert!(
            out.len() <= MAX_RENDERED_BYTES + TRUNCATED.len(),
            "{}",
            out.len()
        );
        assert!(out.ends_with(TRUNCATED));
        // Under the bound nothing changes.
        assert_eq!(render("{{profile.big}}", &v).len(), 256 * 1024);
    }
}
