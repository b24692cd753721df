//! A small evaluator for the CEL rules of `x-kubernetes-validations`: literals, `self`
//! and field access, `has()`, `size()`, comparison, arithmetic, `&&`, `||`, `!`,
//! the conditional operator, `in`, list literals and the `all`, `exists`, `exists_one`
//! macros. Enough for the rules lode's CRDs carry and the usual ones; anything else is
//! an error naming what is not supported (the write is refused, never waved through).

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Str(String),
    Ident(String),
    Op(&'static str),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    const OPS: [&str; 20] = [
        "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "?", ":", "(", ")", "[", "]", ",", ".",
        "+", "-", "*",
    ];
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    'outer: while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i] as char).is_ascii_digit() {
                i += 1;
            }
            out.push(Tok::Int(s[start..i].parse().map_err(|e| format!("{e}"))?));
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[start..i].into()));
            continue;
        }
        if c == '\'' || c == '"' {
            let q = b[i];
            i += 1;
            let mut lit = String::new();
            while i < b.len() && b[i] != q {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                lit.push(b[i] as char);
                i += 1;
            }
            if i >= b.len() {
                return Err("unterminated string".into());
            }
            i += 1;
            out.push(Tok::Str(lit));
            continue;
        }
        for op in OPS {
            if s[i..].starts_with(op) {
                out.push(Tok::Op(op));
                i += op.len();
                continue 'outer;
            }
        }
        return Err(format!("unexpected character {c:?}"));
    }
    Ok(out)
}

#[derive(Clone, Debug)]
enum Expr {
    Lit(Value),
    Var(String),
    Field(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    Has(Box<Expr>, String),
    Call(String, Option<Box<Expr>>, Vec<Expr>),
    Macro(String, Box<Expr>, String, Box<Expr>),
    Unary(&'static str, Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(format!("expected {op:?} at token {}", self.pos))
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let c = self.binary(0)?;
        if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            return Ok(Expr::Cond(Box::new(c), Box::new(a), Box::new(b)));
        }
        Ok(c)
    }

    fn binary(&mut self, level: usize) -> Result<Expr, String> {
        const LEVELS: [&[&str]; 5] = [
            &["||"],
            &["&&"],
            &["==", "!=", "<", "<=", ">", ">=", "in"],
            &["+", "-"],
            &["*"],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.binary(level + 1)?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) if LEVELS[level].contains(o) => *o,
                Some(Tok::Ident(i)) if i == "in" && LEVELS[level].contains(&"in") => "in",
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.binary(level + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Unary("!", Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(Expr::Unary("-", Box::new(self.unary()?)));
        }
        self.postfix()
    }

    fn args(&mut self) -> Result<Vec<Expr>, String> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Some(Tok::Ident(name)) = self.peek().cloned() else {
                    return Err("expected a field name after '.'".into());
                };
                self.pos += 1;
                if self.eat("(") {
                    if matches!(name.as_str(), "all" | "exists" | "exists_one") {
                        let Some(Tok::Ident(var)) = self.peek().cloned() else {
                            return Err(format!("{name}() needs a variable"));
                        };
                        self.pos += 1;
                        self.expect(",")?;
                        let body = self.expr()?;
                        self.expect(")")?;
                        e = Expr::Macro(name, Box::new(e), var, Box::new(body));
                    } else {
                        let args = self.args()?;
                        e = Expr::Call(name, Some(Box::new(e)), args);
                    }
                } else {
                    e = Expr::Field(Box::new(e), name);
                }
            } else if self.eat("[") {
                let i = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let t = self.peek().cloned().ok_or("unexpected end of rule")?;
        self.pos += 1;
        Ok(match t {
            Tok::Int(i) => Expr::Lit(Value::from(i)),
            Tok::Str(s) => Expr::Lit(Value::String(s)),
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                e
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Expr::List(items)
            }
            Tok::Ident(i) => match i.as_str() {
                "true" => Expr::Lit(Value::Bool(true)),
                "false" => Expr::Lit(Value::Bool(false)),
                "null" => Expr::Lit(Value::Null),
                "has" if self.eat("(") => {
                    let arg = self.postfix()?;
                    self.expect(")")?;
                    match arg {
                        Expr::Field(obj, f) => Expr::Has(obj, f),
                        _ => return Err("has() needs a field selection".into()),
                    }
                }
                _ if self.eat("(") => Expr::Call(i, None, self.args()?),
                _ => Expr::Var(i),
            },
            Tok::Op(o) => return Err(format!("unexpected {o:?}")),
        })
    }
}

type Env<'a> = Vec<(String, &'a Value)>;

fn eval(e: &Expr, env: &Env<'_>) -> Result<Value, String> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Var(n) => env
            .iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| (*v).clone())
            .ok_or_else(|| format!("undeclared reference to {n:?}"))?,
        Expr::Field(o, f) => {
            let o = eval(o, env)?;
            o.get(f)
                .filter(|v| !v.is_null())
                .cloned()
                .ok_or_else(|| format!("no such key: {f}"))?
        }
        Expr::Index(o, i) => {
            let o = eval(o, env)?;
            let i = eval(i, env)?;
            match (&o, &i) {
                (Value::Array(a), Value::Number(n)) => n
                    .as_u64()
                    .and_then(|n| a.get(n as usize))
                    .cloned()
                    .ok_or("index out of range")?,
                (Value::Object(m), Value::String(k)) => m
                    .get(k)
                    .cloned()
                    .ok_or_else(|| format!("no such key: {k}"))?,
                _ => return Err("unsupported index".into()),
            }
        }
        Expr::List(items) => Value::Array(
            items
                .iter()
                .map(|i| eval(i, env))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Has(o, f) => {
            let o = eval(o, env)?;
            Value::Bool(o.get(f).is_some_and(|v| !v.is_null()))
        }
        Expr::Call(name, recv, args) => {
            let mut vals = Vec::new();
            if let Some(r) = recv {
                vals.push(eval(r, env)?);
            }
            for a in args {
                vals.push(eval(a, env)?);
            }
            match (name.as_str(), vals.as_slice()) {
                ("size", [Value::String(s)]) => Value::from(s.chars().count() as i64),
                ("size", [Value::Array(a)]) => Value::from(a.len() as i64),
                ("size", [Value::Object(m)]) => Value::from(m.len() as i64),
                ("startsWith", [Value::String(s), Value::String(p)]) => {
                    Value::Bool(s.starts_with(p.as_str()))
                }
                ("endsWith", [Value::String(s), Value::String(p)]) => {
                    Value::Bool(s.ends_with(p.as_str()))
                }
                ("matches", [Value::String(s), Value::String(p)]) => {
                    Value::Bool(regex::Regex::new(p).map_err(|e| e.to_string())?.is_match(s))
                }
                _ => return Err(format!("function {name}() is not supported here")),
            }
        }
        Expr::Macro(name, list, var, body) => {
            let list = eval(list, env)?;
            let items: Vec<Value> = match list {
                Value::Array(a) => a,
                Value::Object(m) => m.keys().map(|k| Value::String(k.clone())).collect(),
                _ => return Err(format!("{name}() needs a list or map")),
            };
            let mut hits = 0;
            for item in &items {
                let mut env2 = env.clone();
                env2.push((var.clone(), item));
                if truthy(&eval(body, &env2)?)? {
                    hits += 1;
                }
            }
            Value::Bool(match name.as_str() {
                "all" => hits == items.len(),
                "exists" => hits > 0,
                _ => hits == 1,
            })
        }
        Expr::Unary(op, x) => {
            let x = eval(x, env)?;
            match *op {
                "!" => Value::Bool(!truthy(&x)?),
                _ => Value::from(-x.as_i64().ok_or("'-' needs a number")?),
            }
        }
        Expr::Binary(op, a, b) => {
            let a_val = eval(a, env)?;
            match *op {
                "&&" => return Ok(Value::Bool(truthy(&a_val)? && truthy(&eval(b, env)?)?)),
                "||" => return Ok(Value::Bool(truthy(&a_val)? || truthy(&eval(b, env)?)?)),
                _ => {}
            }
            let b_val = eval(b, env)?;
            binary(op, &a_val, &b_val)?
        }
        Expr::Cond(c, x, y) => {
            if truthy(&eval(c, env)?)? {
                eval(x, env)?
            } else {
                eval(y, env)?
            }
        }
    })
}

fn binary(op: &str, a: &Value, b: &Value) -> Result<Value, String> {
    let num = |v: &Value| v.as_f64();
    Ok(match op {
        "==" => Value::Bool(a == b || (num(a).is_some() && num(a) == num(b))),
        "!=" => Value::Bool(!(a == b || (num(a).is_some() && num(a) == num(b)))),
        "in" => Value::Bool(match b {
            Value::Array(items) => items.contains(a),
            Value::Object(m) => a.as_str().is_some_and(|k| m.contains_key(k)),
            _ => return Err("'in' needs a list or map".into()),
        }),
        "+" => match (a, b) {
            (Value::String(x), Value::String(y)) => Value::String(format!("{x}{y}")),
            _ => Value::from(
                a.as_i64().ok_or("'+' needs numbers")? + b.as_i64().ok_or("'+' needs numbers")?,
            ),
        },
        "-" | "*" => {
            let (x, y) = (
                a.as_i64().ok_or("arithmetic needs integers")?,
                b.as_i64().ok_or("arithmetic needs integers")?,
            );
            Value::from(if op == "-" { x - y } else { x * y })
        }
        _ => {
            let ord = match (a, b) {
                (Value::String(x), Value::String(y)) => x.cmp(y),
                _ => num(a)
                    .zip(num(b))
                    .and_then(|(x, y)| x.partial_cmp(&y))
                    .ok_or_else(|| format!("cannot compare {a} and {b}"))?,
            };
            Value::Bool(match op {
                "<" => ord.is_lt(),
                "<=" => ord.is_le(),
                ">" => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
    })
}

fn truthy(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected a bool, got {v}"))
}

/// Evaluates `rule` with `self` bound to `value`.
pub fn eval_rule(rule: &str, value: &Value) -> Result<bool, String> {
    let mut p = Parser {
        toks: lex(rule)?,
        pos: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected trailing input at token {}", p.pos));
    }
    truthy(&eval(&e, &vec![("self".to_string(), value)])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lodes_crd_rules_evaluate_as_cel_does() {
        let sm = json!({"minReplicas": 1, "maxReplicas": 4, "replicas": 2,
            "model": {"uri": "hf://x"}, "engine": {"kind": "vllm"}});
        let rules = [
            "self.minReplicas <= self.maxReplicas",
            "!has(self.replicas) || (self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas)",
            "(has(self.model.pvc) ? 1 : 0) + (has(self.model.image) ? 1 : 0) + (has(self.model.uri) ? 1 : 0) == 1",
            "self.engine.kind != 'custom' || has(self.engine.image)",
        ];
        for r in rules {
            assert_eq!(eval_rule(r, &sm), Ok(true), "{r}");
        }
        let bad = json!({"minReplicas": 5, "maxReplicas": 4, "replicas": 9,
            "model": {"uri": "hf://x", "pvc": "p"}, "engine": {"kind": "custom"}});
        for r in rules {
            assert_eq!(eval_rule(r, &bad), Ok(false), "{r}");
        }
        let unique = "self.all(s, self.exists_one(t, t.serviceId == s.serviceId))";
        assert_eq!(
            eval_rule(unique, &json!([{"serviceId": "a"}, {"serviceId": "b"}])),
            Ok(true)
        );
        assert_eq!(
            eval_rule(unique, &json!([{"serviceId": "a"}, {"serviceId": "a"}])),
            Ok(false)
        );
        let keys = "self.applications.size() <= 1 || has(self.apiKeysSecretRef)";
        assert_eq!(eval_rule(keys, &json!({"applications": ["a"]})), Ok(true));
        assert_eq!(
            eval_rule(
                keys,
                &json!({"applications": ["a", "b"], "apiKeysSecretRef": {"name": "k"}})
            ),
            Ok(true)
        );
        assert_eq!(
            eval_rule(keys, &json!({"applications": ["a", "b"]})),
            Ok(false)
        );
        assert_eq!(
            eval_rule("size(self) > 1 && 'a' in self", &json!(["a", "b"])),
            Ok(true)
        );
        let gguf = "self.engine.kind != 'llamacpp' || has(self.model.file)";
        let gpu = "!has(self.gpus) || self.gpus.count > 0 || self.engine.kind == 'llamacpp' || self.engine.kind == 'custom'";
        for (sm, file_ok, gpu_ok) in [
            (json!({"engine": {"kind": "vllm"}, "model": {}}), true, true),
            (
                json!({"engine": {"kind": "vllm"}, "model": {}, "gpus": {"count": 0}}),
                true,
                false,
            ),
            (
                json!({"engine": {"kind": "llamacpp"}, "model": {}, "gpus": {"count": 0}}),
                false,
                true,
            ),
            (
                json!({"engine": {"kind": "llamacpp"}, "model": {"file": "m.gguf"}, "gpus": {"count": 1}}),
                true,
                true,
            ),
        ] {
            assert_eq!(eval_rule(gguf, &sm), Ok(file_ok), "{sm}");
            assert_eq!(eval_rule(gpu, &sm), Ok(gpu_ok), "{sm}");
        }
        assert!(eval_rule("self.x.format('y')", &json!({"x": "a"})).is_err());
        assert!(eval_rule("self.missing > 1", &json!({})).is_err());
    }
}
