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

/// Deepest nesting of a patched profile: below serde_json's parse limit of 128, so what is
/// stored always reads back.
pub const MAX_DEPTH: usize = 100;

/// Bounds on one patch: checked as it is applied, before any value is built.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Operations in one patch.
    pub max_ops: usize,
    /// Size of the patched document, as compact JSON.
    pub max_bytes: usize,
    /// Nesting of the patched document (the stored profile must parse again: serde_json
    /// refuses more than 128 levels).
    pub max_depth: usize,
}

impl Limits {
    /// Bytes the whole patch may copy, remove or compare: copy and move make work
    /// proportional to the document, so 1,000 of them must not each walk the largest one.
    fn work_budget(&self) -> usize {
        self.max_bytes.saturating_mul(16)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchError {
    /// The patch cannot apply to this document (400).
    Invalid(String),
    /// The patch, or the document it would make, passes a bound (413).
    TooLarge(String),
}

/// Counts the bytes of compact JSON without building it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Length of `v` as compact JSON (what the store keeps).
pub fn json_len<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    let mut c = Counter(0);
    // Writing to a counter cannot fail, and a Value always serializes.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Nesting depth: 0 for a scalar. Only called on values whose depth is already bounded
/// (parsed with serde_json's limit, or part of a bounded document).
fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn lookup<'a>(doc: &'a Value, pointer: &str) -> Result<&'a Value, String> {
    tokens(pointer)?;
    doc.pointer(pointer)
        .ok_or_else(|| format!("path {pointer:?} does not exist"))
}

/// The document being patched, with its compact-JSON size kept up to date per operation.
struct Doc {
    value: Value,
    len: usize,
    work: usize,
    limits: Limits,
}

/// Charges `bytes` of copying, moving or comparing to the patch's work budget.
fn spend(work: &mut usize, limits: &Limits, bytes: usize) -> Result<(), PatchError> {
    *work = work.saturating_add(bytes);
    if *work > limits.work_budget() {
        return Err(PatchError::TooLarge(format!(
            "the patch copies, moves or compares more than {} bytes",
            limits.work_budget()
        )));
    }
    Ok(())
}

impl Doc {
    /// Adds `value` (of compact length `vlen`) at `pointer`; refuses before inserting when the
    /// document would pass `max_bytes` or `max_depth`.
    fn add(&mut self, pointer: &str, value: Value, vlen: usize) -> Result<(), PatchError> {
        let toks = tokens(pointer).map_err(PatchError::Invalid)?;
        if toks.len() + depth(&value) > self.limits.max_depth {
            return Err(PatchError::TooLarge(format!(
                "the profile would nest deeper than {} levels",
                self.limits.max_depth
            )));
        }
        let max = self.limits.max_bytes;
        let too_large = |new_len: usize| {
            PatchError::TooLarge(format!(
                "the patched profile would be {new_len} bytes, more than {max}"
            ))
        };
        let Some((last, init)) = toks.split_last() else {
            if vlen > max {
                return Err(too_large(vlen));
            }
            self.value = value;
            self.len = vlen;
            return Ok(());
        };
        let current = self.len;
        match parent(&mut self.value, init).map_err(PatchError::Invalid)? {
            Value::Object(m) => {
                let new_len = match m.get(last) {
                    Some(old) => (current + vlen).saturating_sub(json_len(old)),
                    None => {
                        current + json_len(last.as_str()) + 1 + vlen + usize::from(!m.is_empty())
                    }
                };
                if new_len > max {
                    return Err(too_large(new_len));
                }
                m.insert(last.clone(), value);
                self.len = new_len;
                Ok(())
            }
            Value::Array(a) => {
                let i = index(last, a.len(), true).map_err(PatchError::Invalid)?;
                let new_len = current + vlen + usize::from(!a.is_empty());
                if new_len > max {
                    return Err(too_large(new_len));
                }
                a.insert(i, value);
                self.len = new_len;
                Ok(())
            }
            _ => Err(PatchError::Invalid(format!(
                "cannot add under {pointer:?}: parent is not a container"
            ))),
        }
    }

    /// Removes the value at `pointer`, returning it with its compact length.
    fn remove(&mut self, pointer: &str) -> Result<(Value, usize), PatchError> {
        let toks = tokens(pointer).map_err(PatchError::Invalid)?;
        let Some((last, init)) = toks.split_last() else {
            return Err(PatchError::Invalid(
                "cannot remove the whole document".into(),
            ));
        };
        let (removed, freed) = match parent(&mut self.value, init).map_err(PatchError::Invalid)? {
            Value::Object(m) => {
                let was = m.len();
                let v = m.remove(last).ok_or_else(|| {
                    PatchError::Invalid(format!("path {pointer:?} does not exist"))
                })?;
                let vlen = json_len(&v);
                let freed = json_len(last.as_str()) + 1 + vlen + usize::from(was > 1);
                (v, (vlen, freed))
            }
            Value::Array(a) => {
                let i = index(last, a.len(), false).map_err(PatchError::Invalid)?;
                let was = a.len();
                let v = a.remove(i);
                let vlen = json_len(&v);
                (v, (vlen, vlen + usize::from(was > 1)))
            }
            _ => {
                return Err(PatchError::Invalid(format!(
                    "path {pointer:?} does not exist"
                )));
            }
        };
        let (vlen, freed) = freed;
        self.len = self.len.saturating_sub(freed);
        spend(&mut self.work, &self.limits, vlen)?;
        Ok((removed, vlen))
    }
}

/// Applies every operation in order; on any failure nothing is applied. Work and result are
/// bounded by `limits` (operation count, document size and depth, bytes copied or compared),
/// each checked before the value is built.
pub fn apply(doc: &Value, ops: &[Operation], limits: Limits) -> Result<Value, PatchError> {
    apply_tracked(doc, ops, limits).map(|d| d.value)
}

fn apply_tracked(doc: &Value, ops: &[Operation], limits: Limits) -> Result<Doc, PatchError> {
    if ops.len() > limits.max_ops {
        return Err(PatchError::TooLarge(format!(
            "a patch holds at most {} operations, not {}",
            limits.max_ops,
            ops.len()
        )));
    }
    let mut out = Doc {
        len: json_len(doc),
        value: doc.clone(),
        work: 0,
        limits,
    };
    for (n, op) in ops.iter().enumerate() {
        let value = || {
            op.value.clone().ok_or_else(|| {
                PatchError::Invalid(format!("\"value\" is required for {:?}", op.op))
            })
        };
        let from = || {
            op.from
                .as_deref()
                .ok_or_else(|| PatchError::Invalid(format!("\"from\" is required for {:?}", op.op)))
        };
        let result = match op.op.as_str() {
            "add" => value().and_then(|v| {
                let len = json_len(&v);
                out.add(&op.path, v, len)
            }),
            "remove" => out.remove(&op.path).map(|_| ()),
            "replace" => value().and_then(|v| {
                out.remove(&op.path)?;
                let len = json_len(&v);
                out.add(&op.path, v, len)
            }),
            "copy" => from().and_then(|f| {
                let source = lookup(&out.value, f).map_err(PatchError::Invalid)?;
                // Sized (and bounded) before it is cloned: copy is how a small patch
                // amplifies into a huge document.
                let len = json_len(source);
                spend(&mut out.work, &out.limits, len)?;
                let max = out.limits.max_bytes;
                if out.len.saturating_add(len) > max {
                    return Err(PatchError::TooLarge(format!(
                        "the patched profile would be more than {max} bytes"
                    )));
                }
                let v = source.clone();
                out.add(&op.path, v, len)
            }),
            "move" => from().and_then(|f| {
                if op.path.starts_with(&format!("{f}/")) {
                    return Err(PatchError::Invalid(
                        "cannot move a value into itself".into(),
                    ));
                }
                let (v, len) = out.remove(f)?;
                out.add(&op.path, v, len)
            }),
            "test" => value().and_then(|v| {
                let found = lookup(&out.value, &op.path).map_err(PatchError::Invalid)?;
                spend(&mut out.work, &out.limits, json_len(found))?;
                if *found == v {
                    Ok(())
                } else {
                    Err(PatchError::Invalid(format!("test failed at {:?}", op.path)))
                }
            }),
            other => Err(PatchError::Invalid(format!("unknown op {other:?}"))),
        };
        result.map_err(|e| match e {
            PatchError::Invalid(m) => {
                PatchError::Invalid(format!("patch operation {n} ({}): {m}", op.op))
            }
            PatchError::TooLarge(m) => {
                PatchError::TooLarge(format!("patch operation {n} ({}): {m}", op.op))
            }
        })?;
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

    const LIMITS: Limits = Limits {
        max_ops: 1_000,
        max_bytes: 256 * 1024,
        max_depth: 100,
    };

    fn apply(doc: &Value, ops: &[Operation]) -> Result<Value, PatchError> {
        super::apply(doc, ops, LIMITS)
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

#[cfg(test)]
mod bounds {
    use super::*;
    use serde_json::json;

    #[test]
    fn copy_amplification_is_refused_before_it_is_built() {
        // Each copy of the root into itself doubles the document: 40 ops would make 2^40 x.
        let doc = json!({"a": "x".repeat(1_000)});
        let ops: Vec<Operation> = (0..40)
            .map(|i| Operation {
                op: "copy".into(),
                path: format!("/c{i}"),
                from: Some(String::new()),
                value: None,
            })
            .collect();
        let limits = Limits {
            max_ops: 1_000,
            max_bytes: 256 * 1024,
            max_depth: 100,
        };
        let started = std::time::Instant::now();
        let err = apply(&doc, &ops, limits).unwrap_err();
        assert!(matches!(err, PatchError::TooLarge(_)), "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Too many operations are refused before any is applied.
        let many = vec![ops[0].clone(); 1_001];
        assert!(matches!(
            apply(&doc, &many, limits),
            Err(PatchError::TooLarge(_))
        ));
        // Nesting is bounded too (the stored profile must parse again).
        let mut nested = json!(1);
        for _ in 0..100 {
            nested = json!([nested]);
        }
        let add = |path: &str, value: &Value| Operation {
            op: "add".into(),
            path: path.into(),
            from: None,
            value: Some(value.clone()),
        };
        assert!(matches!(
            apply(&json!({}), &[add("/a", &nested)], limits),
            Err(PatchError::TooLarge(_))
        ));
        assert!(apply(&json!({}), &[add("/a", &nested[0])], limits).is_ok());
    }

    #[test]
    fn tracked_length_is_the_compact_json_length() {
        let doc = json!({"a": [1, 2], "b": {"c": "x\"y"}});
        let ops: Vec<Operation> = serde_json::from_value(json!([
            {"op": "add", "path": "/a/-", "value": {"k": "v"}},
            {"op": "copy", "from": "/b", "path": "/d"},
            {"op": "move", "from": "/a/0", "path": "/e"},
            {"op": "remove", "path": "/b/c"},
            {"op": "replace", "path": "/d/c", "value": [true, null]},
            {"op": "add", "path": "", "value": {"z": 1}},
            {"op": "add", "path": "/y", "value": []},
            {"op": "add", "path": "/y/0", "value": 5}
        ]))
        .unwrap();
        let limits = Limits {
            max_ops: 100,
            max_bytes: 1 << 20,
            max_depth: 100,
        };
        for k in 0..=ops.len() {
            let out = apply_tracked(&doc, &ops[..k], limits).unwrap();
            assert_eq!(
                out.len,
                serde_json::to_vec(&out.value).unwrap().len(),
                "after {k} ops"
            );
        }
    }
}
