//! BOSH ops files (the BOSH CLI's go-patch) on JSON values, so `-o` files change the manifest
//! here exactly as they do in `bosh deploy`.
//!
//! Operations: `replace` (`path`, `value`), `remove` (`path`), `test` (`path` with `value` or
//! `absent: true`); an optional `error` replaces the failure message. Paths: `/a/b` (map keys),
//! `/0`, `/-1` (array indexes, negative from the end), `/-` (after the last item),
//! `/name=x` (the one array item whose `name` is `x`), `?` (this and every later segment is
//! optional: missing maps and `name=x` items are created by `replace`, and `remove` does
//! nothing), modifiers `:prev`, `:next` (indexes) and `:before`, `:after` (insert instead of
//! replace), and the escapes `~0` (`~`), `~1` (`/`), `~7` (`:`). Error messages are go-patch's.

use serde_json::{Map, Value};

/// One operation of an ops file, ready to apply.
#[derive(Debug, Clone)]
pub struct Op {
    kind: OpKind,
    path: Pointer,
    /// The path as written, for messages.
    raw_path: String,
    /// The file's `error` text, shown instead of the generic prefix when the op fails.
    error: Option<String>,
}

#[derive(Debug, Clone)]
enum OpKind {
    Replace(Value),
    Remove,
    TestValue(Value),
    TestAbsent,
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
    let kind_name = text("type")?.unwrap_or_default();
    let raw_path = text("path")?.ok_or_else(|| format!("{} operation: Missing path", op_name(&kind_name)))?;
    let path = Pointer::parse(&raw_path).map_err(|e| format!("Invalid path '{raw_path}': {e}"))?;
    let kind = match kind_name.as_str() {
        "replace" => OpKind::Replace(value.ok_or("Replace operation: Missing value")?),
        "remove" if value.is_some() => return Err("Remove operation: Cannot specify value".into()),
        "remove" => OpKind::Remove,
        "test" => match (value, def.get("absent").and_then(Value::as_bool)) {
            (_, Some(true)) => OpKind::TestAbsent,
            (Some(value), _) => OpKind::TestValue(value),
            (None, _) => return Err("Test operation: Missing value or absent".into()),
        },
        other => return Err(format!("Unknown operation with type '{other}' (replace, remove or test)")),
    };
    Ok(Op { kind, path, raw_path, error: text("error")? })
}

fn op_name(kind: &str) -> &str {
    match kind {
        "replace" => "Replace",
        "remove" => "Remove",
        "test" => "Test",
        _ => "An",
    }
}

impl Op {
    /// Applies the operation to `doc` in place.
    pub fn apply(&self, doc: &mut Value) -> Result<(), String> {
        let result = match &self.kind {
            OpKind::Replace(value) => replace(doc, &self.path, value.clone()),
            OpKind::Remove => remove(doc, &self.path),
            OpKind::TestValue(expected) => match find(doc, &self.path) {
                Ok(found) if &found == expected => Ok(()),
                Ok(_) => Err(PatchError::Other("Found value does not match expected value".into())),
                Err(e) => Err(e),
            },
            OpKind::TestAbsent => match find(doc, &self.path) {
                Ok(_) => Err(PatchError::Other(format!("Expected to not find '{}'", self.path))),
                Err(PatchError::Missing { path, .. }) if path == self.path.to_string() => Ok(()),
                Err(e) => Err(e),
            },
        };
        result.map_err(|e| match &self.error {
            Some(text) => format!("Error '{text}': {e}"),
            None => format!("{} {}: {e}", self.kind_name(), self.raw_path),
        })
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            OpKind::Replace(_) => "replace",
            OpKind::Remove => "remove",
            OpKind::TestValue(_) | OpKind::TestAbsent => "test",
        }
    }
}

/// A go-patch path.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointer {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Index { index: i64, modifiers: Vec<Modifier> },
    AfterLast,
    Matching { key: String, value: String, optional: bool, modifiers: Vec<Modifier> },
    Key { key: String, optional: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Modifier {
    Prev,
    Next,
    Before,
    After,
}

impl Pointer {
    /// Parses `/a/name=x?/0:before/-`.
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
            let is_last = i == pieces.len() - 1;
            let mut parts = piece.split(':');
            let raw = parts.next().unwrap_or_default();
            let modifiers = parts
                .map(|m| match m {
                    "prev" => Ok(Modifier::Prev),
                    "next" => Ok(Modifier::Next),
                    "before" => Ok(Modifier::Before),
                    "after" => Ok(Modifier::After),
                    other => Err(format!(
                        "Expected to find one of the following modifiers: 'prev', 'next', 'before', or 'after' but found '{other}'"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let tok = unescape(raw);
            if is_last && tok == "-" {
                if !modifiers.is_empty() {
                    return Err("Expected not to find any modifiers with after last index token".into());
                }
                tokens.push(Token::AfterLast);
                continue;
            }
            if let Ok(index) = tok.parse::<i64>() {
                tokens.push(Token::Index { index, modifiers });
                continue;
            }
            if tok.ends_with('?') {
                optional = true;
            }
            if let Some((key, value)) = tok.split_once('=') {
                tokens.push(Token::Matching {
                    key: key.to_owned(),
                    value: value.strip_suffix('?').unwrap_or(value).to_owned(),
                    optional,
                    modifiers,
                });
                continue;
            }
            if !modifiers.is_empty() {
                return Err("Expected not to find any modifiers with key token".into());
            }
            tokens.push(Token::Key { key: tok.strip_suffix('?').unwrap_or(&tok).to_owned(), optional });
        }
        Ok(Pointer { tokens })
    }

    /// The path of the first `n` tokens, as go-patch prints it.
    fn prefix(&self, n: usize) -> String {
        let mut out = String::new();
        let mut optional_shown = false;
        let mut mark = |optional: bool, s: &mut String| {
            if optional && !optional_shown {
                s.push('?');
                optional_shown = true;
            }
        };
        for token in &self.tokens[..n.min(self.tokens.len())] {
            out.push('/');
            match token {
                Token::Index { index, modifiers } => {
                    out += &index.to_string();
                    out += &modifiers_text(modifiers);
                }
                Token::AfterLast => out.push('-'),
                Token::Matching { key, value, optional, modifiers } => {
                    out += &format!("{}={}", escape(key), escape(value));
                    mark(*optional, &mut out);
                    out += &modifiers_text(modifiers);
                }
                Token::Key { key, optional } => {
                    out += &escape(key);
                    mark(*optional, &mut out);
                }
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

fn modifiers_text(modifiers: &[Modifier]) -> String {
    modifiers
        .iter()
        .map(|m| match m {
            Modifier::Prev => ":prev",
            Modifier::Next => ":next",
            Modifier::Before => ":before",
            Modifier::After => ":after",
        })
        .collect()
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

/// Why an operation failed; `Missing` is told apart for `test` with `absent`.
#[derive(Debug)]
enum PatchError {
    Missing { path: String, message: String },
    Other(String),
}

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatchError::Missing { message, .. } | PatchError::Other(message) => f.write_str(message),
        }
    }
}

fn mismatch(expected: &str, path: String, found: &Value) -> PatchError {
    PatchError::Other(format!(
        "Expected to find {expected} at path '{path}' but found {}",
        super::kind_of(found)
    ))
}

fn missing_key(key: &str, path: String, map: &Map<String, Value>) -> PatchError {
    let siblings = if map.is_empty() {
        "found no other map keys".to_owned()
    } else {
        format!("found map keys: '{}'", map.keys().cloned().collect::<Vec<_>>().join("', '"))
    };
    let message = format!("Expected to find a map key '{key}' for path '{path}' ({siblings})");
    PatchError::Missing { path, message }
}

/// An index with `:prev`/`:next` applied, checked, negative ones counted from the end.
fn concrete_index(index: i64, modifiers: &[Modifier], len: usize, path: String) -> Result<usize, PatchError> {
    let mut result = index;
    for modifier in modifiers {
        match modifier {
            Modifier::Prev => result -= 1,
            Modifier::Next => result += 1,
            other => {
                return Err(PatchError::Other(format!(
                    "Expected to find one of the following modifiers: 'prev', 'next', but found modifier '{other:?}'"
                )))
            }
        }
    }
    let len_i = len as i64;
    if result >= len_i || -result > len_i {
        let message = format!(
            "Expected to find array index '{result}' but found array of length '{len}' for path '{path}'"
        );
        return Err(PatchError::Missing { path, message });
    }
    Ok(if result < 0 { (len_i + result) as usize } else { result as usize })
}

/// Where a replace at an index writes: the position, and whether it inserts (`:before`/`:after`).
fn insertion(
    index: i64,
    modifiers: &[Modifier],
    len: usize,
    path: String,
) -> Result<(usize, bool), PatchError> {
    let (mut before, mut after) = (false, false);
    let mut rest = Vec::new();
    for modifier in modifiers {
        if before || after {
            let which = if before { "before" } else { "after" };
            return Err(PatchError::Other(format!(
                "Expected to not find any modifiers after '{which}' modifier, but found modifier '{modifier:?}'"
            )));
        }
        match modifier {
            Modifier::Before => before = true,
            Modifier::After => after = true,
            other => rest.push(*other),
        }
    }
    let mut number = concrete_index(index, &rest, len, path)?;
    if after && number != len {
        number += 1;
    }
    Ok((number, before || after))
}

/// The indexes of the array items that are maps whose `key` is the string `value`.
fn matching(items: &[Value], key: &str, value: &str) -> Vec<usize> {
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.get(key).and_then(Value::as_str) == Some(value))
        .map(|(i, _)| i)
        .collect()
}

fn not_exactly_one(path: String, found: usize) -> PatchError {
    PatchError::Other(format!(
        "Expected to find exactly one matching array item for path '{path}' but found {found}"
    ))
}

fn replace(doc: &mut Value, pointer: &Pointer, value: Value) -> Result<(), PatchError> {
    let tokens = &pointer.tokens;
    if tokens.is_empty() {
        *doc = value;
        return Ok(());
    }
    let mut node = doc;
    for (i, token) in tokens.iter().enumerate() {
        let is_last = i == tokens.len() - 1;
        let path = pointer.prefix(i + 1);
        match token {
            Token::Index { index, modifiers } => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                if is_last {
                    let (at, insert) = insertion(*index, modifiers, items.len(), path)?;
                    if insert {
                        items.insert(at, value);
                    } else {
                        items[at] = value;
                    }
                    return Ok(());
                }
                let at = concrete_index(*index, modifiers, items.len(), path)?;
                node = &mut items[at];
            }
            Token::AfterLast => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                if !is_last {
                    return Err(PatchError::Other(format!(
                        "Expected after last index token to be last in path '{pointer}'"
                    )));
                }
                items.push(value);
                return Ok(());
            }
            Token::Matching { key, value: wanted, optional, modifiers } => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                let found = matching(items, key, wanted);
                if *optional && found.is_empty() {
                    if is_last {
                        items.push(value);
                        return Ok(());
                    }
                    let mut item = Map::new();
                    item.insert(key.clone(), Value::String(wanted.clone()));
                    items.push(Value::Object(item));
                    node = items.last_mut().expect("just pushed");
                    continue;
                }
                if found.len() != 1 {
                    return Err(not_exactly_one(path, found.len()));
                }
                if is_last {
                    let (at, insert) = insertion(found[0] as i64, modifiers, items.len(), path)?;
                    if insert {
                        items.insert(at, value);
                    } else {
                        items[at] = value;
                    }
                    return Ok(());
                }
                let at = concrete_index(found[0] as i64, modifiers, items.len(), path)?;
                node = &mut items[at];
            }
            Token::Key { key, optional } => {
                let Value::Object(map) = node else { return Err(mismatch("a map", path, node)) };
                let found = map.contains_key(key);
                if !found && !optional {
                    return Err(missing_key(key, path, map));
                }
                if is_last {
                    map.insert(key.clone(), value);
                    return Ok(());
                }
                if !found {
                    let empty = match tokens[i + 1] {
                        Token::AfterLast | Token::Matching { .. } => Value::Array(Vec::new()),
                        Token::Key { .. } => Value::Object(Map::new()),
                        Token::Index { .. } => {
                            return Err(PatchError::Other(format!(
                                "Expected to find key, matching index or after last index token at path '{}'",
                                pointer.prefix(i + 2)
                            )))
                        }
                    };
                    map.insert(key.clone(), empty);
                }
                node = map.get_mut(key).expect("present or just inserted");
            }
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, pointer: &Pointer) -> Result<(), PatchError> {
    let tokens = &pointer.tokens;
    if tokens.is_empty() {
        return Err(PatchError::Other("Cannot remove entire document".into()));
    }
    let mut node = doc;
    for (i, token) in tokens.iter().enumerate() {
        let is_last = i == tokens.len() - 1;
        let path = pointer.prefix(i + 1);
        match token {
            Token::Index { index, modifiers } => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                let at = concrete_index(*index, modifiers, items.len(), path)?;
                if is_last {
                    items.remove(at);
                    return Ok(());
                }
                node = &mut items[at];
            }
            Token::Matching { key, value, optional, modifiers } => {
                let Value::Array(items) = node else { return Err(mismatch("a list", path, node)) };
                let found = matching(items, key, value);
                if *optional && found.is_empty() {
                    return Ok(());
                }
                if found.len() != 1 {
                    return Err(not_exactly_one(path, found.len()));
                }
                let at = concrete_index(found[0] as i64, modifiers, items.len(), path)?;
                if is_last {
                    items.remove(at);
                    return Ok(());
                }
                node = &mut items[at];
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
            }
            Token::AfterLast => {
                return Err(PatchError::Other(format!(
                    "Expected to not find token 'AfterLastIndexToken' at path '{path}'"
                )))
            }
        }
    }
    Ok(())
}

/// The value at `pointer` (go-patch's find): optional segments that are missing yield `null`
/// or the `name=x` item they would create.
fn find(doc: &Value, pointer: &Pointer) -> Result<Value, PatchError> {
    let tokens = &pointer.tokens;
    let mut node = doc.clone();
    for (i, token) in tokens.iter().enumerate() {
        let path = pointer.prefix(i + 1);
        node = match (token, &node) {
            (Token::Index { index, modifiers }, Value::Array(items)) => {
                items[concrete_index(*index, modifiers, items.len(), path)?].clone()
            }
            (Token::AfterLast, _) => {
                return Err(PatchError::Other(format!(
                    "Expected not to find after last index token in path '{pointer}' (not supported in find operations)"
                )))
            }
            (Token::Matching { key, value, optional, modifiers }, Value::Array(items)) => {
                let found = matching(items, key, value);
                if *optional && found.is_empty() {
                    let mut item = Map::new();
                    item.insert(key.clone(), Value::String(value.clone()));
                    Value::Object(item)
                } else if found.len() != 1 {
                    return Err(not_exactly_one(path, found.len()));
                } else {
                    items[concrete_index(found[0] as i64, modifiers, items.len(), path)?].clone()
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
                        return Err(PatchError::Other(format!(
                            "Expected to find key or matching index token at path '{}'",
                            pointer.prefix(i + 2)
                        )))
                    }
                },
            },
            (Token::Index { .. } | Token::Matching { .. }, other) => return Err(mismatch("a list", path, other)),
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
                        Token::Index { index, .. } => Token::Key { key: index.to_string(), optional: false },
                        other => other.clone(),
                    })
                    .collect(),
            };
            find(value, &as_keys).map_err(|_| first.to_string())
        }
    }
}

#[cfg(test)]
mod tests;
