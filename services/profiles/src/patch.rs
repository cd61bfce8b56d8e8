//! RFC 6902 JSON Patch through the `json-patch` crate, applied one operation at a time so the
//! bounds (operation count, document size and depth, bytes copied or compared) are checked
//! before each operation builds anything: a patch of 40 `copy`s of the root would otherwise
//! double the document 40 times before any size check could run.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One operation as the request spells it (decoded into `json_patch` when applied, so the
/// message of a bad one names its index).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Operation {
    pub op: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
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
    /// Bytes the whole patch may copy, move, compare or re-measure: those make work
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

/// Levels a JSON Pointer descends (`""` is the root: 0).
fn levels(pointer: &str) -> usize {
    pointer.bytes().filter(|b| *b == b'/').count()
}

/// The document being patched, with an upper bound of its compact-JSON size kept per
/// operation (re-measured exactly only when the bound passes the limit, charged to the budget).
struct Doc {
    value: Value,
    /// At least the document's compact length.
    upper: usize,
    work: usize,
    limits: Limits,
}

impl Doc {
    /// Charges `bytes` of copying, moving, comparing or measuring to the work budget.
    fn spend(&mut self, bytes: usize) -> Result<(), PatchError> {
        self.work = self.work.saturating_add(bytes);
        if self.work > self.limits.work_budget() {
            return Err(PatchError::TooLarge(format!(
                "the patch copies, moves or compares more than {} bytes",
                self.limits.work_budget()
            )));
        }
        Ok(())
    }

    fn too_large(&self, len: usize) -> PatchError {
        PatchError::TooLarge(format!(
            "the patched profile would be {len} bytes, more than {}",
            self.limits.max_bytes
        ))
    }

    fn too_deep(&self, path: &str, inserted: &Value) -> Result<(), PatchError> {
        if levels(path) + depth(inserted) > self.limits.max_depth {
            return Err(PatchError::TooLarge(format!(
                "the profile would nest deeper than {} levels",
                self.limits.max_depth
            )));
        }
        Ok(())
    }

    /// The value at `pointer`, or why there is none.
    fn at(&self, pointer: &str) -> Result<&Value, PatchError> {
        self.value
            .pointer(pointer)
            .ok_or_else(|| PatchError::Invalid(format!("path {pointer:?} does not exist")))
    }

    /// Checks, before `op` runs, that inserting `grow` bytes under `path` keeps the document
    /// within `max_bytes` (`grow` counts the key and separators too).
    fn make_room(&mut self, grow: usize) -> Result<(), PatchError> {
        let upper = self.upper.saturating_add(grow);
        if upper <= self.limits.max_bytes {
            return Ok(());
        }
        // The bound is loose after removals: measure, paying for it.
        let exact = json_len(&self.value);
        self.spend(exact)?;
        self.upper = exact;
        let upper = exact.saturating_add(grow);
        if upper > self.limits.max_bytes {
            return Err(self.too_large(upper));
        }
        Ok(())
    }

    fn apply(&mut self, op: &Operation) -> Result<(), PatchError> {
        let key_len = |path: &str| path.rsplit('/').next().map_or(0, |k| k.len() + 4);
        let grow = match op.op.as_str() {
            "add" | "replace" => {
                let value = op.value.as_ref().ok_or_else(|| {
                    PatchError::Invalid(format!("\"value\" is required for {:?}", op.op))
                })?;
                self.too_deep(&op.path, value)?;
                json_len(value) + key_len(&op.path)
            }
            "copy" | "move" => {
                let from = op.from.as_deref().ok_or_else(|| {
                    PatchError::Invalid(format!("\"from\" is required for {:?}", op.op))
                })?;
                // Sized (and bounded) before it is cloned: copy is how a small patch
                // amplifies into a huge document.
                let source = self.at(from)?;
                let len = json_len(source);
                self.too_deep(&op.path, source)?;
                self.spend(len)?;
                if op.op == "copy" {
                    len + key_len(&op.path)
                } else {
                    key_len(&op.path)
                }
            }
            "test" => {
                let found = self.at(&op.path)?;
                let len = json_len(found);
                // Compared here too, so the answer says which test failed in our words.
                if op.value.as_ref().is_some_and(|v| v != found) {
                    return Err(PatchError::Invalid(format!("test failed at {:?}", op.path)));
                }
                self.spend(len)?;
                0
            }
            _ => 0,
        };
        self.make_room(grow)?;
        let decoded: json_patch::PatchOperation = serde_json::to_value(op)
            .and_then(serde_json::from_value)
            .map_err(|e| PatchError::Invalid(e.to_string()))?;
        json_patch::patch(&mut self.value, std::slice::from_ref(&decoded))
            .map_err(|e| PatchError::Invalid(e.to_string()))?;
        self.upper = self.upper.saturating_add(grow);
        Ok(())
    }
}

/// Applies every operation in order; on any failure nothing is applied. Work and result are
/// bounded by `limits` (operation count, document size and depth, bytes copied or compared),
/// each checked before the operation builds anything.
pub fn apply(doc: &Value, ops: &[Operation], limits: Limits) -> Result<Value, PatchError> {
    if ops.len() > limits.max_ops {
        return Err(PatchError::TooLarge(format!(
            "a patch holds at most {} operations, not {}",
            limits.max_ops,
            ops.len()
        )));
    }
    let mut out = Doc {
        upper: json_len(doc),
        value: doc.clone(),
        work: 0,
        limits,
    };
    for (n, op) in ops.iter().enumerate() {
        out.apply(op).map_err(|e| match e {
            PatchError::Invalid(m) => {
                PatchError::Invalid(format!("patch operation {n} ({}): {m}", op.op))
            }
            PatchError::TooLarge(m) => {
                PatchError::TooLarge(format!("patch operation {n} ({}): {m}", op.op))
            }
        })?;
    }
    // The upper bound may be loose; the answer is exact.
    let len = json_len(&out.value);
    if len > limits.max_bytes {
        return Err(out.too_large(len));
    }
    Ok(out.value)
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
}
