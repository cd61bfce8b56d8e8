//! The `if` expression language of steps, bounded for untrusted input.
//!
//! ```text
//! expr    := or
//! or      := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | compare
//! compare := primary ( ("==" | "!=" | ">" | ">=" | "<" | "<=") primary )?
//! primary := "(" expr ")" | string | number | "true" | "false" | "null" | path
//! path    := ident ( "." ident )*       (a leading "refs." is optional)
//! ```
//!
//! Strings use double or single quotes. A bare path is truthy unless it is missing, null, false,
//! 0, "" or an empty array/object. `==`/`!=` compare JSON values (numbers numerically);
//! ordering compares numbers, or strings lexically; anything else is false.
//!
//! Bounds, checked before any work: the source is at most [`MAX_EXPR_BYTES`], and parentheses
//! plus `!` nest at most [`MAX_EXPR_DEPTH`] deep. `&&` / `||` chains are n-ary nodes (not a
//! left-leaning tree), so the tree is never deeper than that nesting; paths are bounded like
//! `$ref` paths (see [`super::check_ref_path`]), and parsing, evaluating
//! and dropping it recurse at most a few frames per level: no input can overflow the stack.

use serde_json::Value;

use super::check_ref_path;

/// Longest `if` expression, in bytes.
pub const MAX_EXPR_BYTES: usize = 1024;
/// Deepest nesting of `(` and `!` in an expression.
pub const MAX_EXPR_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    /// A dotted path into the run context, without `refs.`.
    Path(String),
    Not(Box<Expr>),
    /// Every operand is true (two or more).
    And(Vec<Expr>),
    /// Some operand is true (two or more).
    Or(Vec<Expr>),
    Cmp(Box<Expr>, Op, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(f64),
    Ident(String),
    Op(&'static str),
}

const TWO_CHAR_OPS: [&str; 6] = ["==", "!=", ">=", "<=", "&&", "||"];
const ONE_CHAR_OPS: [&str; 5] = ["!", ">", "<", "(", ")"];

/// Tokens of `src` (at most [`MAX_EXPR_BYTES`] long, so at most that many tokens).
fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if let Some(op) = TWO_CHAR_OPS
            .into_iter()
            .find(|op| bytes[i..].starts_with(op.as_bytes()))
        {
            out.push(Tok::Op(op));
            chars.next();
            chars.next();
            continue;
        }
        if let Some(op) = ONE_CHAR_OPS.into_iter().find(|op| op.starts_with(c)) {
            out.push(Tok::Op(op));
            chars.next();
            continue;
        }
        if c == '"' || c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".into()),
                    Some((_, '\\')) => {
                        if let Some((_, n)) = chars.next() {
                            s.push(n);
                        }
                    }
                    Some((_, ch)) if ch == c => break,
                    Some((_, ch)) => s.push(ch),
                }
            }
            out.push(Tok::Str(s));
            continue;
        }
        let digit_at = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_digit);
        if c.is_ascii_digit() || (c == '-' && digit_at(i + 1)) {
            chars.next();
            let mut end = i + 1;
            while let Some(&(j, d)) = chars.peek() {
                if !(d.is_ascii_digit() || d == '.') {
                    break;
                }
                chars.next();
                end = j + 1;
            }
            let text = &src[i..end];
            let n = text
                .parse::<f64>()
                .map_err(|_| format!("bad number {text:?}"))?;
            out.push(Tok::Num(n));
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut end = i;
            while let Some(&(j, d)) = chars.peek() {
                if !(d.is_alphanumeric() || matches!(d, '_' | '.' | '-' | '$')) {
                    break;
                }
                chars.next();
                end = j + d.len_utf8();
            }
            out.push(Tok::Ident(src[i..end].to_string()));
            continue;
        }
        return Err(format!("unexpected character {c:?}"));
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    /// Current nesting of `(` and `!`.
    depth: usize,
}

impl Parser {
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Op(o)) if *o == op)
    }

    /// Every recursive cycle of the grammar passes through here, so recursion is bounded.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        if self.depth >= MAX_EXPR_DEPTH {
            return Err(format!(
                "nested deeper than {MAX_EXPR_DEPTH} levels of parentheses and \"!\""
            ));
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn or(&mut self) -> Result<Expr, String> {
        let first = self.and()?;
        if !self.peek_op("||") {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.peek_op("||") {
            self.pos += 1;
            terms.push(self.and()?);
        }
        Ok(Expr::Or(terms))
    }

    fn and(&mut self) -> Result<Expr, String> {
        let first = self.unary()?;
        if !self.peek_op("&&") {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.peek_op("&&") {
            self.pos += 1;
            terms.push(self.unary()?);
        }
        Ok(Expr::And(terms))
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_op("!") {
            self.pos += 1;
            return self.nested(|p| Ok(Expr::Not(Box::new(p.unary()?))));
        }
        let left = self.primary()?;
        let op = match self.toks.get(self.pos) {
            Some(Tok::Op("==")) => Op::Eq,
            Some(Tok::Op("!=")) => Op::Ne,
            Some(Tok::Op(">")) => Op::Gt,
            Some(Tok::Op(">=")) => Op::Ge,
            Some(Tok::Op("<")) => Op::Lt,
            Some(Tok::Op("<=")) => Op::Le,
            _ => return Ok(left),
        };
        self.pos += 1;
        Ok(Expr::Cmp(Box::new(left), op, Box::new(self.primary()?)))
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let tok = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of expression")?;
        self.pos += 1;
        match tok {
            Tok::Op("(") => {
                let e = self.nested(Self::or)?;
                if !self.peek_op(")") {
                    return Err("missing \")\"".into());
                }
                self.pos += 1;
                Ok(e)
            }
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Num(n) => Ok(Expr::Lit(serde_json::json!(n))),
            Tok::Ident(id) => Ok(match id.as_str() {
                "true" => Expr::Lit(Value::Bool(true)),
                "false" => Expr::Lit(Value::Bool(false)),
                "null" => Expr::Lit(Value::Null),
                _ => {
                    let path = id.strip_prefix("refs.").unwrap_or(&id);
                    check_ref_path(path)?;
                    Expr::Path(path.to_string())
                }
            }),
            Tok::Op(op) => Err(format!("unexpected {op:?}")),
        }
    }
}

/// Parses an `if` expression; refuses (without parsing) one longer than [`MAX_EXPR_BYTES`].
pub fn parse(src: &str) -> Result<Expr, String> {
    if src.len() > MAX_EXPR_BYTES {
        return Err(format!(
            "expression is {} bytes; the limit is {MAX_EXPR_BYTES}",
            src.len()
        ));
    }
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        depth: 0,
    };
    if p.toks.is_empty() {
        return Err("empty expression".into());
    }
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected token at position {}", p.pos + 1));
    }
    Ok(e)
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn value(e: &Expr, lookup: &dyn Fn(&str) -> Value) -> Value {
    match e {
        Expr::Lit(v) => v.clone(),
        Expr::Path(p) => lookup(p),
        other => Value::Bool(eval(other, lookup)),
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Evaluates `e`; `lookup` resolves a dotted path (without `refs.`) in the run context.
/// Recursion follows the tree, whose depth [`parse`] bounds.
pub fn eval(e: &Expr, lookup: &dyn Fn(&str) -> Value) -> bool {
    match e {
        Expr::Lit(_) | Expr::Path(_) => truthy(&value(e, lookup)),
        Expr::Not(inner) => !eval(inner, lookup),
        Expr::And(terms) => terms.iter().all(|t| eval(t, lookup)),
        Expr::Or(terms) => terms.iter().any(|t| eval(t, lookup)),
        Expr::Cmp(a, op, b) => {
            let (a, b) = (value(a, lookup), value(b, lookup));
            let ord = match (&a, &b) {
                (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => x.partial_cmp(&y),
                    _ => None,
                },
                (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                _ => None,
            };
            use std::cmp::Ordering::*;
            match op {
                Op::Eq => json_eq(&a, &b),
                Op::Ne => !json_eq(&a, &b),
                Op::Gt => ord == Some(Greater),
                Op::Ge => matches!(ord, Some(Greater | Equal)),
                Op::Lt => ord == Some(Less),
                Op::Le => matches!(ord, Some(Less | Equal)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str) -> bool {
        let ctx = json!({"data": {"plan": "pro", "days_left": 3, "on": true}});
        let lookup = |p: &str| {
            ctx.pointer(&format!("/{}", p.replace('.', "/")))
                .cloned()
                .unwrap_or(Value::Null)
        };
        eval(&parse(src).unwrap(), &lookup)
    }

    #[test]
    fn evaluates() {
        assert!(run(r#"data.plan == "pro""#));
        assert!(run("refs.data.days_left > 2"));
        assert!(!run("refs.data.days_left > 3"));
        assert!(run("data.on && !data.missing"));
        assert!(run("data.missing || data.days_left <= 3"));
        assert!(run(
            "(data.plan == 'free' || data.plan == 'pro') && data.days_left != 0"
        ));
        assert!(!run("data.plan == \"free\""));
        assert!(run("data.on && data.on && data.on && data.plan != 'x'"));
        assert!(!run("data.on && data.missing && data.on"));
        assert!(run("data.missing || data.missing || 'é' == 'é'"));
        assert!(run("!!data.on && -1 < 0"));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "data.x ==",
            "(a",
            "a b",
            "a @ b",
            "\"open",
            "1.2.3",
            "()",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_depth_and_length() {
        let ok = format!(
            "{}a{}",
            "(".repeat(MAX_EXPR_DEPTH),
            ")".repeat(MAX_EXPR_DEPTH)
        );
        assert!(parse(&ok).is_ok());
        let deep = format!("({ok})");
        assert!(parse(&deep).unwrap_err().contains("nested deeper than 32"));
        assert!(
            parse(&"!".repeat(MAX_EXPR_DEPTH + 1))
                .unwrap_err()
                .contains("nested")
        );
        let long = "a && ".repeat(300) + "a";
        assert!(parse(&long).unwrap_err().contains("the limit is 1024"));
        // A long flat chain within the length bound is one node, not a deep tree.
        let chain = "a&&".repeat(300) + "a";
        assert!(matches!(parse(&chain), Ok(Expr::And(t)) if t.len() == 301));
    }
}
