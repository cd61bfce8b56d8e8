//! Template rendering: `{{data.x}}`, `{{profile.email}}`, bare `{{x}}` (data first, then the
//! profile), dotted paths into objects and array indexes (`{{data.items.0.name}}`).
//!
//! Rules: a missing variable renders as the empty string; strings render raw, numbers and
//! booleans as text, objects/arrays as compact JSON, `null` as empty. There is no HTML escaping
//! (bodies are sent as text). A `{{` without a closing `}}` is kept literally: rendering never
//! fails and never panics.

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

pub fn render(template: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                if let Some(v) = resolve(vars, name) {
                    out.push_str(&to_text(v));
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
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
}
