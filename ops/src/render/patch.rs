//! BOSH ops files (the BOSH CLI's go-patch) on JSON values, so `-o` files change the manifest
//! here as they do in `bosh deploy`: the part of go-patch that this release's ops files and an
//! operator's own need, checked against `bosh int` for every shipped ops file
//! (ops/tests/it/render_bosh_int.rs).
//!
//! Supported: `replace` (`path`, `value`) and `remove` (`path`). Paths: `/a/b` (map keys), `/0`,
//! `/-1` (array indexes, negative from the end), `/-` (after the last item, `replace` only),
//! `/name=x` (the one array item whose `name`, or any other key, is `x`), `?` (this and every
//! later segment is optional: missing maps and `name=x` items are created by `replace`, and
//! `remove` does nothing), and the escapes `~0` (`~`), `~1` (`/`), `~7` (`:`). Error messages
//! are go-patch's. Refused with a message naming the feature, before anything is applied:
//! `test` operations, the `error` field, and the `:prev`, `:next`, `:before`, `:after`
//! modifiers. Supporting one means adding it here and an ops file using it to the `bosh int`
//! comparison.

use serde_json::{Map, Value};

/// One operation of an ops file, ready to apply.
#[derive(Debug, Clone)]
pub struct Op {
    /// `Some(value)` for `replace`, `None` for `remove`.
    value: Option<Value>,
    path: Pointer,
    /// The path as written, for messages.
    raw_path: String,
}

/// Parses an ops file's operations (a YAML list already converted to JSON); `what` names the
/// file in errors.
pub fn parse_ops(doc: &Value, what: &str) -> Result<Vec<Op>, String> {
    let items = match doc {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(format!("{what} is not a list of operations")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_op(item).map_err(|e| format!("{what}: operation [{i}]: {e}")))
        .collect()
}

fn parse_op(item: &Value) -> Result<Op, String> {
    let def = item.as_object().ok_or("is not a map with type and path")?;
    let text = |key: &str| match def.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("'{key}' must be a string")),
    };
    // A `value: null` is no value, as in go-patch.
    let value = def.get("value").filter(|v| !v.is_null()).cloned();
    let kind = text("type")?.unwrap_or_default();
    let name = match kind.as_str() {
        "replace" => "Replace",
        "remove" => "Remove",
        "test" => return Err(unsupported("'test' operations")),
        other => return Err(format!("Unknown operation with type '{other}' (replace or remove)")),
    };
    if def.contains_key("error") {
        return Err(unsupported("the 'error' field"));
    }
    let raw_path = text("path")?.ok_or_else(|| format!("{name} operation: Missing path"))?;
    let path = Pointer::parse(&raw_path).map_err(|e| format!("Invalid path '{raw_path}': {e}"))?;
    let value = match (name, value) {
        ("Replace", None) => return Err("Replace operation: Missing value".into()),
        ("Remove", Some(_)) => return Err("Remove operation: Cannot specify value".into()),
        (_, value) => value,
    };
    Ok(Op { value, path, raw_path })
}

/// The message for a go-patch feature this implementation leaves out.
fn unsupported(feature: &str) -> String {
    format!(
        "{feature} are not supported by etcd-broker-ops (it implements replace and remove with keys, \
         indexes, name=value, '-' and '?'; see docs/rendering.md)"
    )
}

impl Op {
    /// Applies the operation to `doc` in place.
    pub fn apply(&self, doc: &mut Value) -> Result<(), String> {
        let (kind, result) = match &self.value {
            Some(value) => ("replace", replace(doc, &self.path, value.clone())),
            None => ("remove", remove(doc, &self.path)),
        };
        result.map_err(|e| format!("{kind} {}: {e}", self.raw_path))
    }
}

/// A go-patch path.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointer {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Index(i64),
    AfterLast,
    Matching { key: String, value: String, optional: bool },
    Key { key: String, optional: bool },
}

impl Pointer {
    /// Parses `/a/name=x?/0/-`.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { tokens: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err("Expected to start with '/'".into());
        };
        let pieces: Vec<&str> = rest.split('/').collect();
        let mut tokens = Vec::with_capacity(pieces.len());
        let mut optional = false;
        for (i, piece) in pieces.iter().enumerate() {
            if let Some((_, modifier)) = piece.split_once(':') {
                return Err(unsupported(&format!("modifiers like ':{modifier}'")));
            }
            let tok = unescape(piece);
            if i == pieces.len() - 1 && tok == "-" {
                tokens.push(Token::AfterLast);
                continue;
            }
            if let Ok(index) = tok.parse::<i64>() {
                tokens.push(Token::Index(index));
                continue;
            }
            if tok.ends_with('?') {
                optional = true;
            }
            let tok = tok.strip_suffix('?').unwrap_or(&tok);
            tokens.push(match tok.split_once('=') {
                Some((key, value)) => {
                    Token::Matching { key: key.to_owned(), value: value.to_owned(), optional }
                }
                None => Token::Key { key: tok.to_owned(), optional },
            });
        }
        Ok(Pointer { tokens })
    }

    /// The path of the first `n` tokens, as go-patch prints it.
    fn prefix(&self, n: usize) -> String {
        let mut out = String::new();
        let mut optional_shown = false;
        for token in &self.tokens[..n.min(self.tokens.len())] {
            out.push('/');
            let optional = match token {
                Token::Index(index) => {
                    out += &index.to_string();
                    false
                }
                Token::AfterLast => {
                    out.push('-');
                    false
                }
                Token::Matching { key, value, optional } => {
                    out += &format!("{}={}", escape(key), escape(value));
                    *optional
                }
                Token::Key { key, optional } => {
                    out += &escape(key);
                    *optional
                }
            };
            if optional && !optional_shown {
                out.push('?');
                optional_shown = true;
            }
        }
        out
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix(self.tokens.len()))
    }
}

/// RFC 6901 plus go-patch's `~7`, replaced left to right in one pass.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('~', Some('0')) => {
                out.push('~');
                chars.next();
            }
            ('~', Some('1')) => {
                out.push('/');
                chars.next();
            }
            ('~', Some('7')) => {
                out.push(':');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1").replace(':', "~7")
}

fn mismatch(expected: &str, path: String, found: &Value) -> String {
    format!("Expected to find {expected} at path '{path}' but found {}", super::kind_of(found))
}

fn missing_key(key: &str, path: String, map: &Map<String, Value>) -> String {
    let siblings = if map.is_empty() {
        "found no other map keys".to_owned()
    } else {
        format!("found map keys: '{}'", map.keys().cloned().collect::<Vec<_>>().join("', '"))
    };
    format!("Expected to find a map key '{key}' for path '{path}' ({siblings})")
}

/// An index checked against the array's length, negative ones counted from the end.
fn concrete_index(index: i64, len: usize, path: String) -> Result<usize, String> {
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    if index >= len_i || -index > len_i {
        return Err(format!(
            "Expected to find array index '{index}' but found array of length '{len}' for path '{path}'"
        ));
    }
    let at = if index < 0 { len_i + index } else { index };
    Ok(usize::try_from(at).expect("checked against the length"))
}

/// The index of the one array item that is a map whose `key` is the string `value`; `None`
/// when there is none; an error when there are several.
fn matching(items: &[Value], key: &str, value: &str, path: String) -> Result<Option<usize>, String> {
    let found: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.get(key).and_then(Value::as_str) == Some(value))
        .map(|(i, _)| i)
        .collect();
    match found[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(format!(
            "Expected to find exactly one matching array item for path '{path}' but found {}",
            found.len()
        )),
    }
}

fn no_match(path: String) -> String {
    format!("Expected to find exactly one matching array item for path '{path}' but found 0")
}

fn replace(doc: &mut Value, pointer: &Pointer, value: Value) -> Result<(), String> {
    let tokens = &pointer.tokens;
    let Some((last, walk)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    let mut node = doc;
    for (i, token) in walk.iter().enumerate() {
        let path = pointer.prefix(i + 1);
        node = match token {
            Token::Index(index) => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                let at = concrete_index(*index, items.len(), path)?;
                &mut items[at]
            }
            Token::AfterLast => unreachable!("parse makes '-' a token only at the end"),
            Token::Matching { key, value: wanted, optional } => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                match matching(items, key, wanted, path.clone())? {
                    Some(at) => &mut items[at],
                    None if *optional => {
                        let mut item = Map::new();
                        item.insert(key.clone(), Value::String(wanted.clone()));
                        items.push(Value::Object(item));
                        items.last_mut().expect("just pushed")
                    }
                    None => return Err(no_match(path)),
                }
            }
            Token::Key { key, optional } => {
                let Value::Object(map) = node else { return Err(mismatch("a map", path, node)) };
                if !map.contains_key(key) {
                    if !optional {
                        return Err(missing_key(key, path, map));
                    }
                    let empty = match tokens[i + 1] {
                        Token::AfterLast | Token::Matching { .. } => Value::Array(Vec::new()),
                        Token::Key { .. } => Value::Object(Map::new()),
                        Token::Index(_) => {
                            return Err(format!(
                                "Expected to find key, matching index or after last index token at path '{}'",
                                pointer.prefix(i + 2)
                            ))
                        }
                    };
                    map.insert(key.clone(), empty);
                }
                map.get_mut(key).expect("present or just inserted")
            }
        };
    }
    let path = pointer.prefix(tokens.len());
    match last {
        Token::Index(index) => {
            let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
            let at = concrete_index(*index, items.len(), path)?;
            items[at] = value;
        }
        Token::AfterLast => {
            let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
            items.push(value);
        }
        Token::Matching { key, value: wanted, optional } => {
            let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
            match matching(items, key, wanted, path.clone())? {
                Some(at) => items[at] = value,
                None if *optional => items.push(value),
                None => return Err(no_match(path)),
            }
        }
        Token::Key { key, optional } => {
            let Value::Object(map) = node else { return Err(mismatch("a map", path, node)) };
            if !optional && !map.contains_key(key) {
                return Err(missing_key(key, path, map));
            }
            map.insert(key.clone(), value);
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, pointer: &Pointer) -> Result<(), String> {
    let tokens = &pointer.tokens;
    if tokens.is_empty() {
        return Err("Cannot remove entire document".into());
    }
    let mut node = doc;
    for (i, token) in tokens.iter().enumerate() {
        let is_last = i == tokens.len() - 1;
        let path = pointer.prefix(i + 1);
        let at = match token {
            Token::Index(index) => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                concrete_index(*index, items.len(), path)?
            }
            Token::Matching { key, value, optional } => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                match matching(items, key, value, path.clone())? {
                    Some(at) => at,
                    None if *optional => return Ok(()),
                    None => return Err(no_match(path)),
                }
            }
            Token::Key { key, optional } => {
                let Value::Object(map) = node else { return Err(mismatch("a map", path, node)) };
                if !map.contains_key(key) {
                    return if *optional { Ok(()) } else { Err(missing_key(key, path, map)) };
                }
                if is_last {
                    map.remove(key);
                    return Ok(());
                }
                node = map.get_mut(key).expect("present");
                continue;
            }
            Token::AfterLast => {
                return Err(format!("Expected to not find token 'AfterLastIndexToken' at path '{path}'"))
            }
        };
        let Value::Array(items) = node else { unreachable!("checked above") };
        if is_last {
            items.remove(at);
            return Ok(());
        }
        node = &mut items[at];
    }
    Ok(())
}

/// The value at `pointer` (go-patch's find): optional segments that are missing yield `null`
/// or the `name=x` item they would create.
fn find(doc: &Value, pointer: &Pointer) -> Result<Value, String> {
    let tokens = &pointer.tokens;
    let mut node = doc.clone();
    for (i, token) in tokens.iter().enumerate() {
        let path = pointer.prefix(i + 1);
        node = match (token, &node) {
            (Token::Index(index), Value::Array(items)) => items[concrete_index(*index, items.len(), path)?].clone(),
            (Token::AfterLast, _) => {
                return Err(format!(
                    "Expected not to find after last index token in path '{pointer}' (not supported in find operations)"
                ))
            }
            (Token::Matching { key, value, optional }, Value::Array(items)) => {
                match matching(items, key, value, path.clone())? {
                    Some(at) => items[at].clone(),
                    None if *optional => {
                        let mut item = Map::new();
                        item.insert(key.clone(), Value::String(value.clone()));
                        Value::Object(item)
                    }
                    None => return Err(no_match(path)),
                }
            }
            (Token::Key { key, optional }, Value::Object(map)) => match map.get(key) {
                Some(value) => value.clone(),
                None if !optional => return Err(missing_key(key, path, map)),
                None => match tokens.get(i + 1) {
                    None => Value::Null,
                    Some(Token::Matching { .. }) => Value::Array(Vec::new()),
                    Some(Token::Key { .. }) => Value::Object(Map::new()),
                    Some(_) => {
                        return Err(format!(
                            "Expected to find key or matching index token at path '{}'",
                            pointer.prefix(i + 2)
                        ))
                    }
                },
            },
            (Token::Index(_) | Token::Matching { .. }, other) => return Err(mismatch("a list", path, other)),
            (Token::Key { .. }, other) => return Err(mismatch("a map", path, other)),
        };
    }
    Ok(node)
}

/// Looks up `a.b.c` inside a variable's value the way the BOSH CLI does for `((name.b.c))`:
/// as the path `/b/c`, retried with numeric segments taken as map keys.
pub fn find_in_variable(value: &Value, keys: &[&str]) -> Result<Value, String> {
    let path = format!("/{}", keys.join("/"));
    let pointer = Pointer::parse(&path)?;
    match find(value, &pointer) {
        Ok(found) => Ok(found),
        Err(first) => {
            let as_keys = Pointer {
                tokens: pointer
                    .tokens
                    .iter()
                    .map(|t| match t {
                        Token::Index(index) => Token::Key { key: index.to_string(), optional: false },
                        other => other.clone(),
                    })
                    .collect(),
            };
            find(value, &as_keys).map_err(|_| first)
        }
    }
}

#[cfg(test)]
mod tests;
