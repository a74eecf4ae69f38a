//! CEL expressions, gated and budgeted.
//!
//! `cel-interpreter` 0.10 is not safe on hostile input: its ANTLR-based parser panics on
//! many syntax errors (`1 +`, `(`, `'abc`, a stray `é`, ...), overflows the stack on
//! modest nesting (about 14 nested parentheses, or 60 chained `+`, on a 2 MiB thread in
//! a debug build), and its evaluator panics on message construction (`Foo{a: 1}`) and
//! on a comprehension over a value that is neither a list nor a map.
//!
//! So every expression first goes through [`check`], a strict recognizer of the CEL
//! grammar written here (a lexer plus a recursive-descent parser that only measures, it
//! builds nothing). It refuses what CEL refuses, what `cel-interpreter` does not
//! support (message construction, optional syntax `.?`/`[?`, escaped identifiers,
//! leading-dot names), and any expression whose nesting would cost more stack than
//! [`MAX_NESTING_COST`]. Only then is the expression handed to the real parser; both
//! the parse and the evaluation still run under `catch_unwind` as a second line of
//! defence, turning a library panic into an ordinary error.
//!
//! Nor does the library bound the work of an evaluation: the parsed expression is
//! estimated ([`super::budget`]) before it runs, at definition and again on the values
//! of each evaluation, and refused over its [`CelBudget`].

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use cel_interpreter::extractors::This;
use cel_interpreter::objects::{Key, Map as CelMap};
use cel_interpreter::{Context, ExecutionError, FunctionContext, Value as CelValue};
use cel_parser::Expression;
use serde_json::Value;

use super::budget::{self, CelBudget};
use super::condition::ConditionError;
use super::scope::Scope;

/// Stack cost of one nested group (parentheses, a list or map literal, call arguments,
/// an index): the parser re-enters its whole precedence ladder for each.
const GROUP: u32 = 5;
/// Stack cost of one chained node (binary operator, member selection, method call,
/// ternary, unary operator).
const LINK: u32 = 1;
/// Budget of nesting cost along any path of a CEL expression. One unit is about 34 KiB
/// of stack in a debug build (measured), so the worst accepted expression runs in 1 MiB,
/// half of a 2 MiB thread stack (tokio's default), and in far less in release builds.
/// A group (parentheses, list or map literal, call arguments, index) costs 5, any other
/// nesting (operator, field, method call, ternary) 1; `&&`/`||` chains cost log2 of
/// their length. `size(steps["a"].outputs.items) > 0 && x.y == 1` costs 16.
pub const MAX_NESTING_COST: u32 = 24;

/// A parsed expression, ready to be estimated and evaluated.
#[derive(Debug)]
pub(crate) struct Program {
    expr: Expression,
    /// The identifiers it names: only those variables are bound.
    names: Vec<String>,
    /// The literal patterns of its `matches` calls...
    patterns: Vec<String>,
    /// ...compiled at its first evaluation, then shared by all.
    regexes: OnceLock<Arc<Patterns>>,
}

type Patterns = HashMap<String, Result<regex::Regex, String>>;

impl Program {
    /// Whether its worst case, whatever the values of the variables, fits `budget`
    /// (each variable counts as one small element).
    pub(crate) fn fits(&self, budget: &CelBudget) -> Result<(), String> {
        budget.admits(&budget::estimate(&self.expr, None, budget.max_cost))
    }

    #[cfg(test)]
    pub(crate) fn expr(&self) -> &Expression {
        &self.expr
    }

    fn regexes(&self) -> Arc<Patterns> {
        self.regexes
            .get_or_init(|| {
                let compiled = self
                    .patterns
                    .iter()
                    .map(|p| (p.clone(), budget::build_regex(p)))
                    .collect();
                Arc::new(compiled)
            })
            .clone()
    }
}

/// Compile `source` after the safety check. Errors are human-readable.
pub(crate) fn compile(source: &str) -> Result<Program, String> {
    check(source)?;
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        cel_parser::Parser::default()
            .parse(source)
            .map_err(|e| e.to_string())
    }));
    match parsed {
        Ok(Ok(expr)) => {
            let mut patterns = Vec::new();
            budget::literal_patterns(&expr, &mut patterns);
            let mut names = Vec::new();
            budget::identifiers(&expr, &mut names);
            Ok(Program {
                expr,
                names,
                patterns,
                regexes: OnceLock::new(),
            })
        }
        Ok(Err(message)) => Err(message),
        Err(_) => Err("the CEL parser could not handle this expression".to_owned()),
    }
}

/// Evaluate a compiled program with the variables of `scope` bound; the result must be
/// a bool. Refused without running when its estimate on these values is over `budget`.
pub(crate) fn evaluate(
    program: &Program,
    scope: &Scope<'_>,
    budget: &CelBudget,
) -> Result<bool, ConditionError> {
    let vars = scope.cel_variables(Some(&program.names));
    let estimate = budget::estimate(&program.expr, Some(&vars), budget.max_cost);
    budget.admits(&estimate).map_err(|e| {
        ConditionError::new(format!(
            "CEL expression not evaluated: with this execution's values, {e}"
        ))
    })?;
    let regexes = program.regexes();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut context = Context::default();
        // The library's `matches` compiles its pattern at every call, up to 10 MiB of
        // automaton: this one takes literal patterns compiled once, and a smaller limit.
        context.add_function(
            "matches",
            move |ftx: &FunctionContext,
                  This(text): This<Arc<String>>,
                  pattern: Arc<String>|
                  -> Result<bool, ExecutionError> {
                match regexes.get(pattern.as_str()) {
                    Some(Ok(re)) => Ok(re.is_match(&text)),
                    Some(Err(e)) => Err(ftx.error(e)),
                    None => budget::build_regex(&pattern)
                        .map(|re| re.is_match(&text))
                        .map_err(|e| ftx.error(e)),
                }
            },
        );
        for (name, value) in &vars {
            context.add_variable_from_value(name.clone(), to_cel(value));
        }
        CelValue::resolve(&program.expr, &context)
    }));
    match outcome {
        Ok(Ok(CelValue::Bool(b))) => Ok(b),
        Ok(Ok(other)) => Err(ConditionError::new(format!(
            "CEL expression must evaluate to a bool, got {}",
            other.type_of()
        ))),
        Ok(Err(e)) => Err(ConditionError::new(format!("CEL evaluation failed: {e}"))),
        Err(_) => Err(ConditionError::new(
            "CEL evaluation failed: unsupported operation (e.g. a macro over a value that is \
             neither a list nor a map)",
        )),
    }
}

/// JSON to CEL: integers become `int` when they fit (else `uint`), other numbers
/// `double`; objects become maps with string keys.
pub(crate) fn to_cel(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                CelValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                CelValue::UInt(u)
            } else {
                CelValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, CelValue> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            CelValue::Map(CelMap { map: Arc::new(map) })
        }
    }
}

// ---------------------------------------------------------------------------------------
// The recognizer.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Ident,
    /// A literal other than a signed number: string, bytes, uint, bool, null.
    Literal,
    /// An int or double literal (may follow a `-` as a signed literal).
    Number,
    In,
    /// `==` `!=` `<` `<=` `>=` `>` `+` `*` `/` `%` (and `in`, kept apart above).
    BinOp,
    Minus,
    Not,
    AndAnd,
    OrOr,
    Question,
    Colon,
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Eof,
}

impl Tok {
    fn describe(self) -> &'static str {
        match self {
            Tok::Ident => "an identifier",
            Tok::Literal | Tok::Number => "a literal",
            Tok::In => "'in'",
            Tok::BinOp => "an operator",
            Tok::Minus => "'-'",
            Tok::Not => "'!'",
            Tok::AndAnd => "'&&'",
            Tok::OrOr => "'||'",
            Tok::Question => "'?'",
            Tok::Colon => "':'",
            Tok::Dot => "'.'",
            Tok::Comma => "','",
            Tok::LParen => "'('",
            Tok::RParen => "')'",
            Tok::LBracket => "'['",
            Tok::RBracket => "']'",
            Tok::LBrace => "'{'",
            Tok::RBrace => "'}'",
            Tok::Eof => "the end of the expression",
        }
    }
}

/// Check that `source` is CEL that `cel-interpreter` handles safely.
pub(crate) fn check(source: &str) -> Result<(), String> {
    if nesting_cost(source)? > MAX_NESTING_COST {
        return Err(too_deep());
    }
    Ok(())
}

/// The nesting cost of a syntactically valid expression (see [`MAX_NESTING_COST`]).
/// Recognition stops early, with an error, once the budget is exceeded.
fn nesting_cost(source: &str) -> Result<u32, String> {
    let tokens = lex(source)?;
    let mut p = Recognizer {
        toks: &tokens,
        pos: 0,
    };
    let cost = p.expr(0)?;
    p.expect(Tok::Eof)?;
    Ok(cost)
}

fn too_deep() -> String {
    format!(
        "expression nests too deeply (nesting cost above {MAX_NESTING_COST}; split it or \
         use logical conditions)"
    )
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let at = |j: usize| b.get(j).copied().unwrap_or(0);
        let tok = match c {
            b' ' | b'\t' | b'\r' | b'\n' | 0x0c => {
                i += 1;
                continue;
            }
            b'/' if at(i + 1) == b'/' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'0'..=b'9' => {
                i = lex_number(b, i);
                if matches!(at(i), b'u' | b'U') && !is_float(&b[start..i]) {
                    i += 1;
                    Tok::Literal
                } else {
                    Tok::Number
                }
            }
            b'.' if at(i + 1).is_ascii_digit() => {
                i = lex_number(b, i);
                Tok::Number
            }
            b'"' | b'\'' => {
                i = lex_string(src, i, false)?;
                Tok::Literal
            }
            b'r' | b'R' if matches!(at(i + 1), b'"' | b'\'') => {
                i = lex_string(src, i + 1, true)?;
                Tok::Literal
            }
            b'b' | b'B' if matches!(at(i + 1), b'"' | b'\'') => {
                i = lex_string(src, i + 1, false)?;
                Tok::Literal
            }
            b'b' | b'B'
                if matches!(at(i + 1), b'r' | b'R') && matches!(at(i + 2), b'"' | b'\'') =>
            {
                i = lex_string(src, i + 2, true)?;
                Tok::Literal
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                match &src[start..i] {
                    "in" => Tok::In,
                    "true" | "false" | "null" => Tok::Literal,
                    _ => Tok::Ident,
                }
            }
            b'=' if at(i + 1) == b'=' => {
                i += 2;
                Tok::BinOp
            }
            b'!' if at(i + 1) == b'=' => {
                i += 2;
                Tok::BinOp
            }
            b'<' | b'>' => {
                i += if at(i + 1) == b'=' { 2 } else { 1 };
                Tok::BinOp
            }
            b'&' if at(i + 1) == b'&' => {
                i += 2;
                Tok::AndAnd
            }
            b'|' if at(i + 1) == b'|' => {
                i += 2;
                Tok::OrOr
            }
            b'`' => {
                return Err(format!(
                    "escaped identifiers (`...`) are not supported (at offset {i}); use index \
                 syntax such as steps[\"verify-user\"]"
                ));
            }
            _ => {
                i += 1;
                match c {
                    b'+' | b'*' | b'/' | b'%' => Tok::BinOp,
                    b'-' => Tok::Minus,
                    b'!' => Tok::Not,
                    b'?' => Tok::Question,
                    b':' => Tok::Colon,
                    b'.' => Tok::Dot,
                    b',' => Tok::Comma,
                    b'(' => Tok::LParen,
                    b')' => Tok::RParen,
                    b'[' => Tok::LBracket,
                    b']' => Tok::RBracket,
                    b'{' => Tok::LBrace,
                    b'}' => Tok::RBrace,
                    _ => {
                        let ch = src[start..].chars().next().unwrap_or('?');
                        return Err(format!("unexpected character {ch:?} at offset {start}"));
                    }
                }
            }
        };
        out.push((tok, start));
    }
    out.push((Tok::Eof, b.len()));
    Ok(out)
}

fn is_float(lexeme: &[u8]) -> bool {
    lexeme.iter().any(|c| matches!(c, b'.' | b'e' | b'E'))
        && !(lexeme.len() > 1 && lexeme[0] == b'0' && lexeme[1] == b'x')
}

/// Longest number at `i` (digits, `0x` hex, fraction, exponent), as ANTLR's lexer
/// would take it. Returns the end offset.
fn lex_number(b: &[u8], mut i: usize) -> usize {
    let at = |j: usize| b.get(j).copied().unwrap_or(0);
    if at(i) == b'0' && at(i + 1) == b'x' && at(i + 2).is_ascii_hexdigit() {
        i += 2;
        while at(i).is_ascii_hexdigit() {
            i += 1;
        }
        return i;
    }
    while at(i).is_ascii_digit() {
        i += 1;
    }
    if at(i) == b'.' && at(i + 1).is_ascii_digit() {
        i += 1;
        while at(i).is_ascii_digit() {
            i += 1;
        }
    }
    if matches!(at(i), b'e' | b'E') {
        let mut j = i + 1;
        if matches!(at(j), b'+' | b'-') {
            j += 1;
        }
        if at(j).is_ascii_digit() {
            while at(j).is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    i
}

/// A string literal whose opening quote is at `q`. Returns the end offset.
fn lex_string(src: &str, q: usize, raw: bool) -> Result<usize, String> {
    let b = src.as_bytes();
    let quote = b[q];
    let triple = b.get(q + 1) == Some(&quote) && b.get(q + 2) == Some(&quote);
    let mut i = if triple { q + 3 } else { q + 1 };
    loop {
        let Some(&c) = b.get(i) else {
            return Err(format!(
                "unterminated string literal starting at offset {q}"
            ));
        };
        if c == quote && (!triple || (b.get(i + 1) == Some(&quote) && b.get(i + 2) == Some(&quote)))
        {
            return Ok(i + if triple { 3 } else { 1 });
        }
        if !triple && (c == b'\n' || c == b'\r') {
            return Err(format!(
                "unterminated string literal starting at offset {q}"
            ));
        }
        if c == b'\\' && !raw {
            i = lex_escape(b, i)?;
        } else {
            i += 1;
        }
    }
}

/// An escape sequence starting with the backslash at `i`. Returns the end offset.
fn lex_escape(b: &[u8], i: usize) -> Result<usize, String> {
    let at = |j: usize| b.get(j).copied().unwrap_or(0);
    let hex = |from: usize, n: usize| (from..from + n).all(|j| at(j).is_ascii_hexdigit());
    let end = match at(i + 1) {
        b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v' | b'"' | b'\'' | b'\\' | b'?' | b'`' => {
            Some(i + 2)
        }
        b'0'..=b'3' if matches!(at(i + 2), b'0'..=b'7') && matches!(at(i + 3), b'0'..=b'7') => {
            Some(i + 4)
        }
        b'x' | b'X' if hex(i + 2, 2) => Some(i + 4),
        b'u' if hex(i + 2, 4) => Some(i + 6),
        b'U' if hex(i + 2, 8) => Some(i + 10),
        _ => None,
    };
    end.ok_or_else(|| format!("invalid escape sequence at offset {i}"))
}

struct Recognizer<'t> {
    toks: &'t [(Tok, usize)],
    pos: usize,
}

impl Recognizer<'_> {
    fn peek(&self) -> Tok {
        self.toks.get(self.pos).map_or(Tok::Eof, |t| t.0)
    }

    fn peek2(&self) -> Tok {
        self.toks.get(self.pos + 1).map_or(Tok::Eof, |t| t.0)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(0, |t| t.1)
    }

    fn bump(&mut self) {
        self.pos += 1;
    }

    fn eat(&mut self, t: Tok) -> bool {
        if self.peek() == t {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: Tok) -> Result<(), String> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.unexpected(t.describe()))
        }
    }

    fn unexpected(&self, wanted: &str) -> String {
        format!(
            "syntax error at offset {}: expected {wanted}, found {}",
            self.offset(),
            self.peek().describe()
        )
    }

    /// Every descent is charged before it happens, so this recognizer's own recursion
    /// is bounded by the budget too.
    fn enter(prefix: u32) -> Result<(), String> {
        if prefix > MAX_NESTING_COST {
            Err(too_deep())
        } else {
            Ok(())
        }
    }

    /// `expr = or ['?' or ':' expr]`. Returns the nesting cost of the subtree.
    fn expr(&mut self, prefix: u32) -> Result<u32, String> {
        Self::enter(prefix)?;
        let cond = self.or(prefix)?;
        if !self.eat(Tok::Question) {
            return Ok(cond);
        }
        let then = self.or(prefix + LINK)?;
        self.expect(Tok::Colon)?;
        let otherwise = self.expr(prefix + LINK)?;
        Ok(LINK + cond.max(then).max(otherwise))
    }

    /// `&&` / `||` chains are balanced into a tree by the CEL parser: log2 depth.
    fn or(&mut self, prefix: u32) -> Result<u32, String> {
        let mut cost = self.and(prefix)?;
        let mut terms = 1u32;
        while self.eat(Tok::OrOr) {
            cost = cost.max(self.and(prefix)?);
            terms += 1;
        }
        Ok(cost + LINK * log2_ceil(terms))
    }

    fn and(&mut self, prefix: u32) -> Result<u32, String> {
        let mut cost = self.binary(prefix)?;
        let mut terms = 1u32;
        while self.eat(Tok::AndAnd) {
            cost = cost.max(self.binary(prefix)?);
            terms += 1;
        }
        Ok(cost + LINK * log2_ceil(terms))
    }

    /// Relations and arithmetic: left-associative chains. Precedence does not matter
    /// to a recognizer; counting every operator of the chain as one level is a safe
    /// over-estimate of the tree's depth.
    fn binary(&mut self, prefix: u32) -> Result<u32, String> {
        let mut cost = self.unary(prefix)?;
        let mut ops = 0u32;
        while matches!(self.peek(), Tok::BinOp | Tok::In | Tok::Minus) {
            self.bump();
            cost = cost.max(self.unary(prefix)?);
            ops += 1;
            if ops > MAX_NESTING_COST {
                return Err(too_deep());
            }
        }
        Ok(cost + LINK * ops)
    }

    /// `'!'+ member | '-'+ member | member`.
    fn unary(&mut self, prefix: u32) -> Result<u32, String> {
        let op = self.peek();
        if op == Tok::Not || (op == Tok::Minus && self.peek2() != Tok::Number) {
            while self.eat(op) {}
            return Ok(self.member(prefix)? + LINK);
        }
        self.member(prefix)
    }

    /// `primary { '.' IDENT ['(' args ')'] | '[' expr ']' }`.
    fn member(&mut self, prefix: u32) -> Result<u32, String> {
        let mut cost = self.primary(prefix)?;
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.bump();
                    if self.peek() != Tok::Ident {
                        return Err(self.unexpected("a field or method name after '.'"));
                    }
                    self.bump();
                    if self.eat(Tok::LParen) {
                        let args = self.args(prefix + GROUP, Tok::RParen)?;
                        cost = cost.max(args);
                    }
                }
                Tok::LBracket => {
                    self.bump();
                    if self.peek() == Tok::Question {
                        return Err("optional index syntax '[?' is not supported".to_owned());
                    }
                    let index = self.expr(prefix + GROUP)?;
                    self.expect(Tok::RBracket)?;
                    cost = cost.max(GROUP + index);
                }
                _ => return Ok(cost),
            }
            cost += LINK;
            if cost > MAX_NESTING_COST {
                return Err(too_deep());
            }
        }
    }

    fn primary(&mut self, prefix: u32) -> Result<u32, String> {
        match self.peek() {
            Tok::Ident => {
                self.bump();
                match self.peek() {
                    Tok::LParen => {
                        self.bump();
                        Ok(self.args(prefix + GROUP, Tok::RParen)? + LINK)
                    }
                    Tok::LBrace => Err("message construction (Type{...}) is not supported".into()),
                    _ => Ok(0),
                }
            }
            Tok::Literal | Tok::Number => {
                self.bump();
                Ok(0)
            }
            // A signed number literal, e.g. after '!' (`!-1`).
            Tok::Minus if self.peek2() == Tok::Number => {
                self.bump();
                self.bump();
                Ok(0)
            }
            Tok::LParen => {
                self.bump();
                let inner = self.expr(prefix + GROUP)?;
                self.expect(Tok::RParen)?;
                Ok(GROUP + inner)
            }
            Tok::LBracket => {
                self.bump();
                Ok(self.list_items(prefix + GROUP, Tok::RBracket, false)?)
            }
            Tok::LBrace => {
                self.bump();
                Ok(self.list_items(prefix + GROUP, Tok::RBrace, true)?)
            }
            Tok::Dot => Err(format!(
                "leading-dot names are not supported (at offset {})",
                self.offset()
            )),
            _ => Err(self.unexpected("an operand")),
        }
    }

    /// Call arguments: `[expr {',' expr}] ')'` (no trailing comma). Includes GROUP.
    fn args(&mut self, prefix: u32, close: Tok) -> Result<u32, String> {
        let mut cost = 0;
        if self.eat(close) {
            return Ok(GROUP);
        }
        loop {
            cost = cost.max(self.expr(prefix)?);
            if self.eat(close) {
                return Ok(GROUP + cost);
            }
            self.expect(Tok::Comma)?;
        }
    }

    /// List elements or map entries, optional trailing comma. Includes GROUP.
    fn list_items(&mut self, prefix: u32, close: Tok, map: bool) -> Result<u32, String> {
        let mut cost = 0;
        loop {
            if self.eat(close) {
                return Ok(GROUP + cost);
            }
            if self.peek() == Tok::Question {
                return Err("optional entry syntax '?' is not supported".to_owned());
            }
            cost = cost.max(self.expr(prefix)?);
            if map {
                self.expect(Tok::Colon)?;
                cost = cost.max(self.expr(prefix)?);
            }
            if !self.eat(Tok::Comma) {
                self.expect(close)?;
                return Ok(GROUP + cost);
            }
        }
    }
}

fn log2_ceil(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn compiles(s: &str) -> bool {
        compile(s).is_ok()
    }

    #[test]
    fn accepts_ordinary_cel() {
        for s in [
            "true",
            "x > 1 && y < 2 || !z",
            "size(steps[\"verify-user\"].outputs.items) > 0",
            "user.role in ['admin', 'owner']",
            "a ? b : c ? d : e",
            "[1, 2, 3].exists(i, i > 2)",
            "{'a': 1, 'b': [1, 2,]}.a == 1",
            "'abc'.startsWith(\"a\") && r'\\d' != b'x' && '''multi\nline''' != ''",
            "-1 < 0 && !-1 == false && 1u == 1u && 0x1F == 31 && 1.5e3 > .5",
            "has(user.email) // trailing comment",
            "x.y.z[0]['k'].f(1, 2).g()",
            "'\\n\\t\\\\\\'\\u00e9\\x41\\101'",
        ] {
            assert!(check(s).is_ok(), "{s}: {:?}", check(s));
            assert!(compiles(s), "{s}: {:?}", compile(s));
        }
    }

    #[test]
    fn refuses_what_would_panic_or_is_unsupported() {
        for s in [
            "",
            " ",
            "1 +",
            "(",
            ")",
            ".",
            "/",
            "}",
            "]",
            "'abc",
            "\"",
            "{1:}",
            "A{b:}",
            "!!!",
            "in",
            "a in",
            "[1,2].map(x, )",
            "x.exists(y,",
            "\u{0}",
            "é",
            "'\\u'",
            "'\\x'",
            "-",
            "@",
            "#",
            "`a`",
            "true && ",
            "||",
            ",",
            "Foo{a: 1}",
            "a.?b",
            "a[?0]",
            ".a",
            "[?1]",
            "a = b",
            "a & b",
            "a.`b`",
            "1 ? 2",
            "'\n'",
            "a..b",
        ] {
            assert!(check(s).is_err(), "{s:?} should be refused");
            assert!(compile(s).is_err());
        }
    }

    #[test]
    fn nesting_costs() {
        for (s, cost) in [
            ("x", 0),
            ("x.y == 1", 2),
            ("(1)", 5),
            ("f()", 6),
            ("a && b && c && d && e", 3),
            ("!!x", 1),
            ("size(steps[\"a\"].outputs.items) > 0 && x.y == 1", 16),
        ] {
            assert_eq!(nesting_cost(s), Ok(cost), "{s}");
        }
    }

    #[test]
    fn nesting_budget() {
        let parens = |d: usize| format!("{}1{}", "(".repeat(d), ")".repeat(d));
        assert!(check(&parens(4)).is_ok());
        assert!(check(&parens(5)).is_err());
        let chain = |n: usize| vec!["1"; n + 1].join(" + ");
        assert!(check(&chain(24)).is_ok());
        assert!(check(&chain(25)).is_err());
        // `&&` chains are balanced: long ones stay cheap.
        let conj = vec!["a"; 2000].join(" && ");
        assert!(check(&conj).is_ok());
        // Unary chains fold.
        assert!(check(&format!("{}x", "!".repeat(500))).is_ok());
        let members = format!("x{}", ".a".repeat(25));
        assert!(check(&members).is_err());
        let ternary = format!("{}c", "a ? b : ".repeat(30));
        assert!(check(&ternary).is_err());
    }

    /// The worst accepted shapes compile and evaluate on a 2 MiB stack (the size of a
    /// test thread and of a tokio worker) in a debug build.
    #[test]
    fn worst_accepted_shapes_fit_a_small_stack() {
        let shapes = vec![
            format!("{}1{}", "(".repeat(4), ")".repeat(4)) + &" + 1".repeat(4),
            format!("{}1{}", "[".repeat(4), "]".repeat(4)) + " == [1]" + &" + [1]".repeat(3),
            format!("{}1{}", "f(".repeat(4), ")".repeat(4)),
            format!("{}1{}", "{1: ".repeat(4), "}".repeat(4)),
            vec!["1"; 24].join(" + ") + " > 0",
            format!("x{}", ".a".repeat(24)),
            format!("x{}", "[0]".repeat(3)) + &".a".repeat(9),
            format!("{}c", "a ? b : ".repeat(24)),
            format!("{}1{}", "[1].map(x, ".repeat(3), ")".repeat(3))
                + &" + []".repeat(5)
                + " == []",
            format!("{}1 > 0{}", "[1].all(x, ".repeat(3), ")".repeat(3)) + " && true",
        ];
        for s in shapes {
            assert!(check(&s).is_ok(), "{s}: {:?}", check(&s));
            let s2 = s.clone();
            let handle = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let p = compile(&s2)?;
                    let vars = serde_json::json!({"a": false, "b": true, "c": true,
                        "x": {"a": {"a": 1}}});
                    let layer = vars.as_object().cloned().unwrap_or_default();
                    let scope = Scope {
                        layers: vec![&layer],
                        ..Scope::default()
                    };
                    let _ = evaluate(&p, &scope, &CelBudget::default());
                    Ok::<(), String>(())
                })
                .expect("spawn");
            let r = handle.join().expect("no panic, no overflow");
            assert!(r.is_ok(), "{s}: {r:?}");
        }
    }

    #[test]
    fn evaluation_results() {
        let vars = serde_json::json!({"n": 5, "big": u64::MAX, "f": 1.5, "s": "abc",
            "l": [1, 2], "m": {"k": true}});
        let layer = vars.as_object().cloned().unwrap_or_default();
        let scope = Scope {
            layers: vec![&layer],
            ..Scope::default()
        };
        let run = |s: &str| {
            evaluate(
                &compile(s).expect("compiles"),
                &scope,
                &CelBudget::default(),
            )
        };
        assert_eq!(run("n + 1 == 6 && n > 4.5 && big > n && f < 2"), Ok(true));
        assert_eq!(run("s == 'abd' || 3 in l || !m.k"), Ok(false));
        assert!(run("n + 1").is_err(), "non-bool result");
        assert!(run("nope == 1").is_err(), "undeclared variable");
        assert!(
            run("n.all(x, x > 0)").is_err(),
            "library panic becomes an error"
        );
        assert!(run("n / 0 == 1").is_err());
    }

    proptest! {
        #![proptest_config(crate::choreography::proptest_config(256))]

        /// Whatever the gate accepts, the real parser handles without panicking.
        #[test]
        fn gate_and_parser_agree(parts in proptest::collection::vec(prop_oneof![
            Just("a"), Just("b.c"), Just("1"), Just("-"), Just("!"), Just("+"), Just("=="),
            Just("<"), Just("in"), Just("&&"), Just("||"), Just("?"), Just(":"), Just("("),
            Just(")"), Just("["), Just("]"), Just("{"), Just("}"), Just(","), Just("."),
            Just("'s'"), Just("2.5"), Just("3u"), Just("f("), Just("x.map(i, "),
            Just("has("), Just("size("), Just("null"), Just("true"), Just(" "),
        ], 0..16)) {
            let s = parts.concat();
            if check(&s).is_ok() {
                let parsed = catch_unwind(AssertUnwindSafe(|| cel_interpreter::Program::compile(&s).is_ok()));
                prop_assert!(parsed.is_ok(), "gate accepted {s:?} but the parser panicked");
            }
        }

        #[test]
        fn gate_and_parser_agree_on_cel_characters(
            s in "[a-c0-9 ()\\[\\]{}.,:?!<>=&|+*/%'\"\\\\uxrb-]{0,24}"
        ) {
            if check(&s).is_ok() {
                let parsed = catch_unwind(AssertUnwindSafe(|| cel_interpreter::Program::compile(&s).is_ok()));
                prop_assert!(parsed.is_ok(), "gate accepted {s:?} but the parser panicked");
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = compile(&s);
        }
    }
}
