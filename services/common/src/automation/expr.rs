//! The `if` expression language of steps.
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

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Path(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
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

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        if let Some(op) = ["==", "!=", ">=", "<=", "&&", "||"]
            .into_iter()
            .find(|op| *op == two)
        {
            out.push(Tok::Op(op));
            i += 2;
            continue;
        }
        if let Some(op) = ["!", ">", "<", "(", ")"]
            .into_iter()
            .find(|op| op.starts_with(c))
        {
            out.push(Tok::Op(op));
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string".into()),
                    Some('\\') => {
                        if let Some(n) = chars.get(i + 1) {
                            s.push(*n);
                        }
                        i += 2;
                    }
                    Some(ch) if *ch == c => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
            continue;
        }
        if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text
                .parse::<f64>()
                .map_err(|_| format!("bad number {text:?}"))?;
            out.push(Tok::Num(n));
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '-' | '$'))
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
            continue;
        }
        return Err(format!("unexpected character {c:?}"));
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Op(o)) if *o == op)
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_op("||") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek_op("&&") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_op("!") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
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
                let e = self.or()?;
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
                _ => Expr::Path(id.strip_prefix("refs.").unwrap_or(&id).to_string()),
            }),
            Tok::Op(op) => Err(format!("unexpected {op:?}")),
        }
    }
}

pub fn parse(src: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
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
pub fn eval(e: &Expr, lookup: &dyn Fn(&str) -> Value) -> bool {
    match e {
        Expr::Lit(_) | Expr::Path(_) => truthy(&value(e, lookup)),
        Expr::Not(inner) => !eval(inner, lookup),
        Expr::And(a, b) => eval(a, lookup) && eval(b, lookup),
        Expr::Or(a, b) => eval(a, lookup) || eval(b, lookup),
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
        let lookup = |p: &str| crate::refs::lookup(&ctx, p);
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
    }

    #[test]
    fn rejects() {
        for bad in ["", "data.x ==", "(a", "a b", "a @ b", "\"open"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
