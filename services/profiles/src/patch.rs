//! RFC 6902 JSON Patch (add, remove, replace, copy, move, test) over a JSON document.
//! Small enough to own; errors say which operation failed and why.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
pub struct Operation {
    pub op: String,
    pub path: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
}

fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("path {pointer:?} must be empty or start with '/'"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if token == "-" && allow_end {
        return Ok(len);
    }
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    let i: usize = if valid {
        token
            .parse()
            .map_err(|_| format!("bad array index {token:?}"))?
    } else {
        return Err(format!("bad array index {token:?}"));
    };
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("array index {i} is out of bounds"));
    }
    Ok(i)
}

fn parent<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("{t:?} does not exist"))?,
            Value::Array(a) => {
                let i = index(t, a.len(), false)?;
                &mut a[i]
            }
            _ => return Err(format!("{t:?} does not exist")),
        };
    }
    Ok(cur)
}

fn get(doc: &Value, pointer: &str) -> Result<Value, String> {
    doc.pointer(pointer)
        .cloned()
        .ok_or_else(|| format!("path {pointer:?} does not exist"))
        .and_then(|v| tokens(pointer).map(|_| v))
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let toks = tokens(pointer)?;
    let Some((last, init)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = index(last, a.len(), true)?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!(
            "cannot add under {pointer:?}: parent is not a container"
        )),
    }
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, String> {
    let toks = tokens(pointer)?;
    let Some((last, init)) = toks.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match parent(doc, init)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {pointer:?} does not exist")),
        Value::Array(a) => {
            let i = index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(format!("path {pointer:?} does not exist")),
    }
}

/// Applies every operation in order; on any failure nothing is applied.
pub fn apply(doc: &Value, ops: &[Operation]) -> Result<Value, String> {
    let mut out = doc.clone();
    for (n, op) in ops.iter().enumerate() {
        let value = || {
            op.value
                .clone()
                .ok_or_else(|| format!("\"value\" is required for {:?}", op.op))
        };
        let from = || {
            op.from
                .clone()
                .ok_or_else(|| format!("\"from\" is required for {:?}", op.op))
        };
        let result = match op.op.as_str() {
            "add" => value().and_then(|v| add(&mut out, &op.path, v)),
            "remove" => remove(&mut out, &op.path).map(|_| ()),
            "replace" => value().and_then(|v| {
                remove(&mut out, &op.path)?;
                add(&mut out, &op.path, v)
            }),
            "copy" => from()
                .and_then(|f| get(&out, &f))
                .and_then(|v| add(&mut out, &op.path, v)),
            "move" => from().and_then(|f| {
                if op.path.starts_with(&format!("{f}/")) {
                    return Err("cannot move a value into itself".into());
                }
                let v = remove(&mut out, &f)?;
                add(&mut out, &op.path, v)
            }),
            "test" => value().and_then(|v| {
                if get(&out, &op.path)? == v {
                    Ok(())
                } else {
                    Err(format!("test failed at {:?}", op.path))
                }
            }),
            other => Err(format!("unknown op {other:?}")),
        };
        result.map_err(|e| format!("patch operation {n} ({}): {e}", op.op))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(v: Value) -> Vec<Operation> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rfc6902_operations() {
        let doc = json!({"email":"a","tags":["x"],"n":{"k":1}});
        let out = apply(
            &doc,
            &ops(json!([
                {"op":"replace","path":"/email","value":"b"},
                {"op":"add","path":"/tags/-","value":"y"},
                {"op":"copy","from":"/email","path":"/email2"},
                {"op":"move","from":"/n/k","path":"/k"},
                {"op":"remove","path":"/n"},
                {"op":"test","path":"/k","value":1},
                {"op":"add","path":"/a~1b","value":true}
            ])),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"email":"b","email2":"b","tags":["x","y"],"k":1,"a/b":true})
        );
        assert!(
            apply(
                &doc,
                &ops(json!([{"op":"test","path":"/email","value":"z"}]))
            )
            .is_err()
        );
        assert!(apply(&doc, &ops(json!([{"op":"remove","path":"/nope"}]))).is_err());
        assert!(
            apply(
                &doc,
                &ops(json!([{"op":"replace","path":"/nope","value":1}]))
            )
            .is_err()
        );
        assert_eq!(apply(&doc, &[]).unwrap(), doc);
    }
}
