//! The CEL budget: a worst-case cost model of an expression, computed before it runs.
//!
//! `cel-interpreter` counts nothing and cannot be interrupted (nor can its successor, the
//! `cel` crate 0.15: cel-rust/cel-rust#56 is open), and one condition with nested `map`s
//! over a literal list kept a core busy for a minute. So the work of an expression is
//! bounded *before* it runs: [`estimate`] walks the parsed expression (its macros already
//! expanded into comprehensions) the way the interpreter will, and answers an upper bound
//! of
//! - the work, in units of about one node evaluated, one list element copied or
//!   compared, or 8 bytes of text processed (10 to 50 ns each in a release build), and
//! - the length of every list or map the expression builds.
//!
//! Each value is described by a [`Shape`]: bounds of its length, of its text, of the
//! work to walk it, and of the shape of its elements. Literals have exact shapes.
//! Variables have exact shapes at run time (measured on the values bound) and unknown
//! ones at definition, where each counts as a single small element: the definition check
//! refuses what is too expensive whatever the data, and the run-time check, on the real
//! sizes, refuses the rest before anything is evaluated.
//!
//! Cost rules, mirroring what `cel-interpreter` 0.10 does:
//! - a comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) over `n` elements
//!   costs `n` times its loop condition and step; `map` and `filter` copy the list built
//!   so far at each step (`accu + [x]`), so they are quadratic: about `n²/2`;
//! - `+` on lists or text copies both operands; `==`, `<`... walk the smaller operand;
//!   `in` and `contains` walk the container;
//! - a function call clones its argument expressions, and evaluates its first argument
//!   twice when it has one or two (the interpreter's operator fast path, then the call);
//! - `matches` compiles its pattern (charged by the size of the compiled automaton; a
//!   literal pattern once per evaluation) and costs `states × text bytes` to run, the
//!   bound of a backtracking-free regex engine over an automaton of that many states
//!   (about 15 ns each, measured, when the engine cannot use its DFA). A pattern the
//!   expression computes is charged as the largest pattern allowed.
//! - binding the variables the expression names copies them: their size.

use std::collections::HashMap;
use std::rc::Rc;

use cel_parser::ast::{CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, operators};
use cel_parser::reference::Val;
use regex_automata::nfa::thompson;
use serde_json::{Map, Value};

/// Bounds on the work of one CEL expression (settings `celMaxCost`, `celMaxListSize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CelBudget {
    /// Most estimated work units one expression may cost.
    pub max_cost: u64,
    /// Most elements (or entries) of any list or map an expression may build.
    pub max_list_size: u64,
}

impl Default for CelBudget {
    /// About 50 ms of one core in a release build at most.
    fn default() -> Self {
        CelBudget {
            max_cost: 1_000_000,
            max_list_size: 10_000,
        }
    }
}

impl CelBudget {
    /// Whether an estimate fits; the error names the limit it exceeds.
    pub(crate) fn admits(&self, e: &Estimate) -> Result<(), String> {
        if e.cost > self.max_cost {
            return Err(format!(
                "estimated cost {} is above the CEL budget (celMaxCost = {}); each \
                 comprehension (all, exists, exists_one, map, filter) multiplies the cost of \
                 its body by the size of its range, and map and filter also copy the list \
                 built so far at each step",
                e.cost, self.max_cost
            ));
        }
        if e.largest_list > self.max_list_size {
            return Err(format!(
                "it may build a list or map of {} elements, above the CEL budget \
                 (celMaxListSize = {})",
                e.largest_list, self.max_list_size
            ));
        }
        Ok(())
    }
}

/// Upper bounds of what evaluating an expression does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    pub cost: u64,
    /// Elements of the largest list or map built.
    pub largest_list: u64,
}

/// Size limit of a compiled `matches` pattern (bytes of automaton); also what a pattern
/// unknown before evaluation is charged as.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Compiling: one unit per byte of automaton (about 20 ns each, measured).
const REGEX_MAX_COMPILE: u64 = REGEX_SIZE_LIMIT as u64;
/// An automaton state takes at least 16 bytes.
const REGEX_MAX_STATES: u64 = (REGEX_SIZE_LIMIT / 16) as u64;

/// Estimate `expr`. `vars` are the variables it will see (`None` at definition: every
/// variable then counts as one small element); converting them for the interpreter is
/// part of the cost. Stops compiling patterns once the cost is known to be over
/// `limit`, so that estimating stays cheap too.
pub(crate) fn estimate(expr: &IdedExpr, vars: Option<&Map<String, Value>>, limit: u64) -> Estimate {
    let mut e = Estimator {
        vars,
        bound: Vec::new(),
        shapes: HashMap::new(),
        patterns: HashMap::new(),
        scalar: Rc::new(Shape::SCALAR),
        once: 0,
        largest_list: 0,
        limit,
    };
    for v in vars.into_iter().flat_map(|m| m.values()) {
        let converting = e.shape_of(v).size;
        e.once = e.once.saturating_add(converting);
    }
    let (cost, _) = e.expr(expr);
    Estimate {
        cost: cost.saturating_add(e.once),
        largest_list: e.largest_list,
    }
}

/// The literal patterns of the `matches` calls of an expression (compiled once per
/// evaluation, before it starts).
pub(crate) fn literal_patterns(expr: &IdedExpr, out: &mut Vec<String>) {
    if let Expr::Call(c) = &expr.expr
        && c.func_name == "matches"
    {
        let pattern = if c.target.is_some() {
            c.args.first()
        } else {
            c.args.get(1)
        };
        if let Some(IdedExpr {
            expr: Expr::Literal(Val::String(p)),
            ..
        }) = pattern
            && !out.contains(p)
        {
            out.push(p.clone());
        }
    }
    for child in children(expr) {
        literal_patterns(child, out);
    }
}

/// The identifiers an expression names (a superset of the variables it reads: only
/// those are bound).
pub(crate) fn identifiers(expr: &IdedExpr, out: &mut Vec<String>) {
    if let Expr::Ident(name) = &expr.expr
        && !out.contains(name)
    {
        out.push(name.clone());
    }
    for child in children(expr) {
        identifiers(child, out);
    }
}

/// Compile a `matches` pattern within [`REGEX_SIZE_LIMIT`].
pub(crate) fn build_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid pattern {pattern:?}: {e}"))
}

/// What is known of a value.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    /// Elements of a list, entries of a map.
    len: u64,
    /// Bytes of a string.
    text: u64,
    /// Bytes of a bytes value.
    raw: u64,
    /// Work to walk the whole value (compare it, copy it deeply): one per node, one per
    /// 8 bytes of text.
    size: u64,
    /// Covers every element of a list, every key and value of a map.
    elem: Option<Rc<Shape>>,
}

impl Shape {
    const SCALAR: Shape = Shape {
        len: 0,
        text: 0,
        raw: 0,
        size: 1,
        elem: None,
    };

    /// A value not known before run time (a variable, at definition).
    fn unknown() -> Shape {
        Shape {
            len: 1,
            text: 1,
            raw: 1,
            size: 1,
            elem: None,
        }
    }

    fn text(bytes: u64) -> Shape {
        Shape {
            text: bytes,
            size: units(bytes),
            ..Shape::SCALAR
        }
    }

    fn raw(bytes: u64) -> Shape {
        Shape {
            raw: bytes,
            size: units(bytes),
            ..Shape::SCALAR
        }
    }

    fn is_scalar(&self) -> bool {
        self.len == 0 && self.text == 0 && self.raw == 0
    }

    fn element(&self) -> Rc<Shape> {
        self.elem
            .clone()
            .unwrap_or_else(|| Rc::new(Shape::unknown()))
    }

    /// `self` bounds `other` too.
    fn covers(&self, other: &Shape) -> bool {
        self.len >= other.len
            && self.text >= other.text
            && self.raw >= other.raw
            && self.size >= other.size
            && match (&self.elem, &other.elem) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(b)) => Rc::ptr_eq(a, b) || a.covers(b),
            }
    }
}

/// A shape bounding both.
fn join(a: &Rc<Shape>, b: &Rc<Shape>) -> Rc<Shape> {
    if Rc::ptr_eq(a, b) || a.covers(b) {
        return a.clone();
    }
    if b.covers(a) {
        return b.clone();
    }
    Rc::new(Shape {
        len: a.len.max(b.len),
        text: a.text.max(b.text),
        raw: a.raw.max(b.raw),
        size: a.size.max(b.size),
        elem: join_opt(&a.elem, &b.elem),
    })
}

fn join_opt(a: &Option<Rc<Shape>>, b: &Option<Rc<Shape>>) -> Option<Rc<Shape>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(join(a, b)),
        (a, None) => a.clone(),
        (None, b) => b.clone(),
    }
}

/// Work to process `bytes` bytes of text.
fn units(bytes: u64) -> u64 {
    1 + bytes / 8
}

/// A value during estimation.
#[derive(Debug, Clone)]
enum Abs<'v> {
    /// Exactly this value of the variables (run time).
    Data(&'v Value),
    /// A literal scalar (map keys, indices, patterns).
    Lit(Value),
    Shape(Rc<Shape>),
}

impl Abs<'_> {
    /// The value, when known exactly.
    fn known(&self) -> Option<&Value> {
        match self {
            Abs::Data(v) => Some(v),
            Abs::Lit(v) => Some(v),
            Abs::Shape(_) => None,
        }
    }
}

struct Estimator<'e, 'v> {
    vars: Option<&'v Map<String, Value>>,
    /// Comprehension variables in scope, innermost last.
    bound: Vec<(&'e str, Abs<'v>)>,
    /// Shapes of the variables' lists and maps, by address.
    shapes: HashMap<usize, Rc<Shape>>,
    /// Compiled patterns: (compile cost, automaton states).
    patterns: HashMap<String, (u64, u64)>,
    scalar: Rc<Shape>,
    /// Work done once per evaluation (compiling literal patterns), and by estimating.
    once: u64,
    largest_list: u64,
    limit: u64,
}

impl<'e, 'v> Estimator<'e, 'v> {
    fn scalar(&self) -> Abs<'v> {
        Abs::Shape(self.scalar.clone())
    }

    fn built(&mut self, len: u64) {
        self.largest_list = self.largest_list.max(len);
    }

    fn shape(&mut self, a: &Abs<'v>) -> Rc<Shape> {
        match a {
            Abs::Data(v) => self.shape_of(v),
            Abs::Lit(Value::String(s)) => Rc::new(Shape::text(s.len() as u64)),
            Abs::Lit(_) => self.scalar.clone(),
            Abs::Shape(s) => s.clone(),
        }
    }

    /// The exact shape of a value of the variables (lists and maps memoized: a variable
    /// used in many places is measured once).
    fn shape_of(&mut self, v: &'v Value) -> Rc<Shape> {
        let key = v as *const Value as usize;
        match v {
            Value::String(s) => Rc::new(Shape::text(s.len() as u64)),
            Value::Array(items) => {
                if let Some(s) = self.shapes.get(&key) {
                    return s.clone();
                }
                let mut size = 1u64;
                let mut elem: Option<Rc<Shape>> = None;
                for item in items {
                    let s = self.shape_of(item);
                    size = size.saturating_add(s.size);
                    elem = Some(match elem {
                        Some(e) => join(&e, &s),
                        None => s,
                    });
                }
                let s = Rc::new(Shape {
                    len: items.len() as u64,
                    size,
                    elem,
                    ..Shape::SCALAR
                });
                self.shapes.insert(key, s.clone());
                s
            }
            Value::Object(m) => {
                if let Some(s) = self.shapes.get(&key) {
                    return s.clone();
                }
                let mut size = 1u64;
                let mut elem: Option<Rc<Shape>> = None;
                for (k, item) in m {
                    let ks = Rc::new(Shape::text(k.len() as u64));
                    let s = self.shape_of(item);
                    size = size.saturating_add(ks.size).saturating_add(s.size);
                    let both = join(&ks, &s);
                    elem = Some(match elem {
                        Some(e) => join(&e, &both),
                        None => both,
                    });
                }
                let s = Rc::new(Shape {
                    len: m.len() as u64,
                    size,
                    elem,
                    ..Shape::SCALAR
                });
                self.shapes.insert(key, s.clone());
                s
            }
            _ => self.scalar.clone(),
        }
    }

    fn lookup(&self, name: &str) -> Abs<'v> {
        if let Some((_, a)) = self.bound.iter().rev().find(|(n, _)| *n == name) {
            return a.clone();
        }
        match self.vars {
            // Undeclared: an evaluation error.
            Some(vars) => vars.get(name).map_or_else(|| self.scalar(), Abs::Data),
            None => Abs::Shape(Rc::new(Shape::unknown())),
        }
    }

    /// `of.key` or `of[key]`: exact when both are known, else any element.
    fn child(&mut self, of: &Abs<'v>, key: Option<&Value>) -> Abs<'v> {
        if let (Abs::Data(v), Some(k)) = (of, key) {
            match (v, k) {
                (Value::Object(m), Value::String(k)) => {
                    return m.get(k).map_or_else(|| self.scalar(), Abs::Data);
                }
                (Value::Array(items), Value::Number(n)) => {
                    return n
                        .as_u64()
                        .and_then(|i| items.get(usize::try_from(i).ok()?))
                        .map_or_else(|| self.scalar(), Abs::Data);
                }
                _ => {}
            }
        }
        let shape = self.shape(of);
        Abs::Shape(shape.element())
    }

    fn expr(&mut self, e: &'e IdedExpr) -> (u64, Abs<'v>) {
        match &e.expr {
            Expr::Literal(val) => match val {
                // Each evaluation copies a literal string.
                Val::String(s) => (units(s.len() as u64), Abs::Lit(Value::String(s.clone()))),
                Val::Bytes(b) => (
                    units(b.len() as u64),
                    Abs::Shape(Rc::new(Shape::raw(b.len() as u64))),
                ),
                Val::Int(i) => (1, Abs::Lit(Value::from(*i))),
                Val::UInt(u) => (1, Abs::Lit(Value::from(*u))),
                Val::Boolean(_) | Val::Double(_) | Val::Null => (1, self.scalar()),
            },
            Expr::Ident(name) => (1, self.lookup(name)),
            Expr::Select(s) => {
                let (c, of) = self.expr(&s.operand);
                if s.test {
                    // `has()` walks the keys.
                    let shape = self.shape(&of);
                    (c.saturating_add(1 + shape.size), self.scalar())
                } else {
                    let field = Value::String(s.field.clone());
                    (c.saturating_add(1), self.child(&of, Some(&field)))
                }
            }
            Expr::List(l) => {
                let n = l.elements.len() as u64;
                let mut cost = 1 + n;
                let mut size = 1u64;
                let mut elem = None;
                for item in &l.elements {
                    let (c, a) = self.expr(item);
                    let s = self.shape(&a);
                    cost = cost.saturating_add(c);
                    size = size.saturating_add(s.size);
                    elem = join_opt(&elem, &Some(s));
                }
                self.built(n);
                let shape = Shape {
                    len: n,
                    size,
                    elem,
                    ..Shape::SCALAR
                };
                (cost, Abs::Shape(Rc::new(shape)))
            }
            Expr::Map(m) => {
                let n = m.entries.len() as u64;
                let mut cost = 1 + n;
                let mut size = 1u64;
                let mut elem = None;
                for entry in &m.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        // Message construction: refused by the syntax check.
                        continue;
                    };
                    for part in [&entry.key, &entry.value] {
                        let (c, a) = self.expr(part);
                        let s = self.shape(&a);
                        cost = cost.saturating_add(c);
                        size = size.saturating_add(s.size);
                        elem = join_opt(&elem, &Some(s));
                    }
                }
                self.built(n);
                let shape = Shape {
                    len: n,
                    size,
                    elem,
                    ..Shape::SCALAR
                };
                (cost, Abs::Shape(Rc::new(shape)))
            }
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Call(c) => self.call(c),
            Expr::Struct(_) | Expr::Unspecified => (1, self.scalar()),
        }
    }

    /// The loop of a macro: `accu = init; for x in range { if !cond break; accu = step }
    /// result`.
    fn comprehension(&mut self, c: &'e ComprehensionExpr) -> (u64, Abs<'v>) {
        let (cost_range, range) = self.expr(&c.iter_range);
        let (cost_init, init) = self.expr(&c.accu_init);
        let range = self.shape(&range);
        let init = self.shape(&init);
        let n = range.len;
        let mut cost = 1u64.saturating_add(cost_range).saturating_add(cost_init);
        let mut last = init.clone();
        if n > 0 {
            self.bound.push((&c.iter_var, Abs::Shape(range.element())));
            // The step's cost grows with the accumulator (map and filter copy it), which
            // grows by the same amount each iteration: the total is n times the mean of
            // the first and the last step.
            self.bound.push((&c.accu_var, Abs::Shape(init.clone())));
            let (cost_first, first) = self.expr(&c.loop_step);
            self.bound.pop();
            let first = self.shape(&first);
            let before_last = grown(&init, &first, n - 1);
            self.bound
                .push((&c.accu_var, Abs::Shape(before_last.clone())));
            let (cost_cond, _) = self.expr(&c.loop_cond);
            let (cost_last, after) = self.expr(&c.loop_step);
            self.bound.pop();
            self.bound.pop();
            let after = self.shape(&after);
            last = join(&before_last, &after);
            if !last.is_scalar() {
                self.built(last.len);
            }
            // Each iteration binds two variables (allocating their names, hashing
            // them): measured at several hundred ns, far more than one unit.
            let per_iteration = ITERATION
                .saturating_add(cost_cond)
                .saturating_add(cost_first.saturating_add(cost_last).div_ceil(2));
            cost = cost.saturating_add(n.saturating_mul(per_iteration));
        }
        self.bound.push((&c.accu_var, Abs::Shape(last)));
        let (cost_result, result) = self.expr(&c.result);
        self.bound.pop();
        (cost.saturating_add(cost_result), result)
    }

    fn call(&mut self, c: &'e CallExpr) -> (u64, Abs<'v>) {
        let name = c.func_name.as_str();
        let args = &c.args;
        if args.len() == 3 && name == operators::CONDITIONAL {
            let (c0, _) = self.expr(&args[0]);
            let (c1, a1) = self.expr(&args[1]);
            let (c2, a2) = self.expr(&args[2]);
            let (s1, s2) = (self.shape(&a1), self.shape(&a2));
            let cost = 1u64.saturating_add(c0).saturating_add(c1.max(c2));
            return (cost, Abs::Shape(join(&s1, &s2)));
        }
        if args.len() == 2 && BINARY.contains(&name) {
            return self.binary(name, &args[0], &args[1]);
        }
        if args.len() == 1
            && [
                operators::LOGICAL_NOT,
                operators::NEGATE,
                operators::NOT_STRICTLY_FALSE,
            ]
            .contains(&name)
        {
            let (c0, _) = self.expr(&args[0]);
            return (c0.saturating_add(1), self.scalar());
        }
        self.function(c)
    }

    fn binary(&mut self, name: &str, a: &'e IdedExpr, b: &'e IdedExpr) -> (u64, Abs<'v>) {
        let (c0, a0) = self.expr(a);
        let (c1, a1) = self.expr(b);
        let base = 1u64.saturating_add(c0).saturating_add(c1);
        match name {
            operators::INDEX => {
                let key = a1.known().cloned();
                (base, self.child(&a0, key.as_ref()))
            }
            operators::LOGICAL_AND => (base, self.scalar()),
            operators::SUBSTRACT | operators::MULTIPLY | operators::DIVIDE | operators::MODULO => {
                (base, self.scalar())
            }
            _ => {
                let (s0, s1) = (self.shape(&a0), self.shape(&a1));
                match name {
                    operators::ADD => {
                        let len = s0.len.saturating_add(s1.len);
                        let text = s0.text.saturating_add(s1.text);
                        let raw = s0.raw.saturating_add(s1.raw);
                        let mut work = len;
                        if text > 0 {
                            work = work.saturating_add(units(text));
                        }
                        if raw > 0 {
                            work = work.saturating_add(units(raw));
                        }
                        if len == 0 && text == 0 && raw == 0 {
                            return (base, self.scalar());
                        }
                        self.built(len);
                        let shape = Shape {
                            len,
                            text,
                            raw,
                            size: s0.size.saturating_add(s1.size),
                            elem: join_opt(&s0.elem, &s1.elem),
                        };
                        (base.saturating_add(work), Abs::Shape(Rc::new(shape)))
                    }
                    // `||` answers one of its operands as it is.
                    operators::LOGICAL_OR => (base, Abs::Shape(join(&s0, &s1))),
                    operators::IN => {
                        let work = s0.size.saturating_add(s1.size).saturating_add(s1.len);
                        (base.saturating_add(work), self.scalar())
                    }
                    // Comparisons walk the smaller operand at most.
                    _ => (base.saturating_add(s0.size.min(s1.size)), self.scalar()),
                }
            }
        }
    }

    fn function(&mut self, c: &'e CallExpr) -> (u64, Abs<'v>) {
        // The call clones its argument expressions.
        let mut cost = 1u64;
        for a in &c.args {
            cost = cost.saturating_add(ast_size(a));
        }
        let target = match &c.target {
            Some(t) => {
                let (ct, at) = self.expr(t);
                cost = cost.saturating_add(ct);
                Some(at)
            }
            None => None,
        };
        let mut values = Vec::with_capacity(c.args.len());
        for (k, a) in c.args.iter().enumerate() {
            let (ca, aa) = self.expr(a);
            cost = cost.saturating_add(ca);
            // The interpreter's operator fast path evaluates the first of one or two
            // arguments before it finds the function, which evaluates it again.
            if k == 0 && matches!(c.args.len(), 1 | 2) {
                cost = cost.saturating_add(ca);
            }
            values.push(aa);
        }
        let (this, rest): (Option<Abs<'v>>, &[Abs<'v>]) = match target {
            Some(t) => (Some(t), &values[..]),
            None => (values.first().cloned(), values.get(1..).unwrap_or(&[])),
        };
        let this_shape = match &this {
            Some(a) => self.shape(a),
            None => self.scalar.clone(),
        };
        let arg_shape = match rest.first() {
            Some(a) => self.shape(a),
            None => self.scalar.clone(),
        };
        match c.func_name.as_str() {
            "contains" => {
                let work = this_shape
                    .size
                    .saturating_add(this_shape.len)
                    .saturating_add(units(this_shape.text.saturating_add(arg_shape.text)))
                    // Bytes search every window: length times needle.
                    .saturating_add(units(this_shape.raw.saturating_mul(arg_shape.raw.max(1))));
                (cost.saturating_add(work), self.scalar())
            }
            "startsWith" | "endsWith" => {
                (cost.saturating_add(units(arg_shape.text)), self.scalar())
            }
            "matches" => {
                let (compile, states) = self.pattern(rest.first());
                let run = this_shape.text.max(1).saturating_mul(states.max(1));
                (
                    cost.saturating_add(compile).saturating_add(1 + run),
                    self.scalar(),
                )
            }
            "string" => {
                // Invalid UTF-8 becomes U+FFFD, 3 bytes for one.
                let text = this_shape
                    .text
                    .max(this_shape.raw.saturating_mul(3))
                    .max(64);
                (
                    cost.saturating_add(units(this_shape.raw)),
                    Abs::Shape(Rc::new(Shape::text(text))),
                )
            }
            "bytes" => (
                cost.saturating_add(units(this_shape.text)),
                Abs::Shape(Rc::new(Shape::raw(this_shape.text))),
            ),
            "int" | "uint" | "double" | "duration" | "timestamp" => {
                (cost.saturating_add(units(this_shape.text)), self.scalar())
            }
            "max" | "min" => {
                // All arguments, or the elements of a single list argument.
                let mut work = 0u64;
                let mut result: Option<Rc<Shape>> = None;
                for a in &values {
                    let s = self.shape(a);
                    work = work.saturating_add(s.size);
                    let candidate = if values.len() == 1 {
                        join(&s.element(), &s)
                    } else {
                        s
                    };
                    result = join_opt(&result, &Some(candidate));
                }
                let result = result.unwrap_or_else(|| self.scalar.clone());
                (cost.saturating_add(work), Abs::Shape(result))
            }
            // `size` is O(1); the timestamp accessors too; anything else is an error.
            _ => (cost, self.scalar()),
        }
    }

    /// Compile cost and automaton states of a `matches` pattern. A literal is compiled
    /// once per evaluation; a pattern known only at run time at each call.
    fn pattern(&mut self, pattern: Option<&Abs<'v>>) -> (u64, u64) {
        let (text, literal) = match pattern {
            Some(Abs::Lit(Value::String(p))) => (p.as_str(), true),
            Some(Abs::Data(Value::String(p))) => (p.as_str(), false),
            _ => return (REGEX_MAX_COMPILE, REGEX_MAX_STATES),
        };
        let (compile, states) = match self.patterns.get(text) {
            Some(&known) => known,
            None => {
                // Measuring compiles the pattern: estimating costs that much too.
                let measured = if self.once > self.limit {
                    (REGEX_MAX_COMPILE, REGEX_MAX_STATES)
                } else {
                    measure_pattern(text)
                };
                self.once = self.once.saturating_add(measured.0);
                if literal {
                    self.once = self.once.saturating_add(measured.0);
                }
                self.patterns.insert(text.to_owned(), measured);
                measured
            }
        };
        if literal {
            (0, states)
        } else {
            (compile, states)
        }
    }
}

/// Compile cost (one unit per byte of automaton) and states of a pattern; an invalid one
/// costs the most to find out.
fn measure_pattern(pattern: &str) -> (u64, u64) {
    let built = thompson::Compiler::new()
        .configure(thompson::Config::new().nfa_size_limit(Some(REGEX_SIZE_LIMIT)))
        .build(pattern);
    match built {
        Ok(nfa) => (1 + nfa.memory_usage() as u64, nfa.states().len() as u64),
        Err(_) => (REGEX_MAX_COMPILE, 0),
    }
}

/// Fixed work of one comprehension iteration, besides its condition and step.
const ITERATION: u64 = 8;

/// Binary operators the interpreter evaluates itself (anything else with two arguments
/// is a function call).
const BINARY: [&str; 15] = [
    operators::ADD,
    operators::SUBSTRACT,
    operators::DIVIDE,
    operators::MULTIPLY,
    operators::MODULO,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::LESS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::GREATER_EQUALS,
    operators::IN,
    operators::LOGICAL_OR,
    operators::LOGICAL_AND,
    operators::INDEX,
];

/// The accumulator after `n` steps that each grow it as the first step did.
fn grown(init: &Rc<Shape>, first: &Rc<Shape>, n: u64) -> Rc<Shape> {
    let grow = |a: u64, b: u64| a.saturating_add(n.saturating_mul(b.saturating_sub(a)));
    Rc::new(Shape {
        len: grow(init.len, first.len),
        text: grow(init.text, first.text),
        raw: grow(init.raw, first.raw),
        size: grow(init.size, first.size),
        elem: join_opt(&init.elem, &first.elem),
    })
}

/// Work to clone an expression.
fn ast_size(e: &IdedExpr) -> u64 {
    let own = match &e.expr {
        Expr::Literal(Val::String(s)) => units(s.len() as u64),
        Expr::Literal(Val::Bytes(b)) => units(b.len() as u64),
        _ => 1,
    };
    children(e).fold(own, |acc, c| acc.saturating_add(ast_size(c)))
}

fn children(e: &IdedExpr) -> impl Iterator<Item = &IdedExpr> {
    let mut out: Vec<&IdedExpr> = Vec::new();
    match &e.expr {
        Expr::Call(c) => {
            out.extend(c.target.as_deref());
            out.extend(&c.args);
        }
        Expr::Comprehension(c) => out.extend([
            &*c.iter_range,
            &*c.accu_init,
            &*c.loop_cond,
            &*c.loop_step,
            &*c.result,
        ]),
        Expr::List(l) => out.extend(&l.elements),
        Expr::Map(m) => {
            for entry in &m.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(me) => out.extend([&me.key, &me.value]),
                    EntryExpr::StructField(f) => out.push(&f.value),
                }
            }
        }
        Expr::Select(s) => out.push(&s.operand),
        Expr::Struct(s) => {
            for entry in &s.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(me) => out.extend([&me.key, &me.value]),
                    EntryExpr::StructField(f) => out.push(&f.value),
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
    out.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choreography::cel::{self, compile};
    use crate::choreography::scope::Scope;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(s: &str) -> IdedExpr {
        cel_parser::Parser::default().parse(s).expect("parses")
    }

    fn at_definition(s: &str) -> Estimate {
        estimate(&parse(s), None, u64::MAX)
    }

    fn with(s: &str, vars: &Value) -> Estimate {
        let vars = vars.as_object().cloned().unwrap_or_default();
        estimate(&parse(s), Some(&vars), u64::MAX)
    }

    /// A list literal of `n` one-digit numbers.
    fn literal(n: usize) -> String {
        let items: Vec<String> = (0..n).map(|i| (i % 10).to_string()).collect();
        format!("[{}]", items.join(","))
    }

    /// The two expressions of the report: both under the length cap and through the
    /// syntax gate, both refused at definition by the default budget, naming the limit.
    #[test]
    fn the_reported_attacks_are_refused_at_definition() {
        let l370 = literal(370);
        let nested =
            format!("{l370}.map(x, {l370}.filter(y, {l370}.exists(z, z == x + y))).size() > 0");
        let l300 = literal(300);
        let blowup = format!("{l300}.map(x, {l300}.map(y, {l300})).size() > 0");
        for s in [&nested, &blowup] {
            assert!(s.len() <= 4096, "{} bytes", s.len());
            let program = compile(s).expect("passes the syntax gate");
            let e = program.fits(&CelBudget::default()).expect_err("refused");
            assert!(e.contains("celMaxCost = 1000000"), "{e}");
            assert!(at_definition(s).cost > 10_000_000, "{:?}", at_definition(s));
        }
    }

    #[test]
    fn ordinary_conditions_are_cheap() {
        for (s, most) in [
            ("x == 1", 10),
            ("size(steps[\"verify-user\"].outputs.items) > 0", 30),
            ("user.role in ['admin', 'owner']", 20),
            ("[1, 2, 3].exists(i, i > 2)", 80),
            ("amount > 100 && user.role == 'admin' || !flagged", 30),
            ("items.all(i, i.price < 100)", 30),
            ("email.matches('^[a-z0-9.]+@[a-z0-9.]+$')", 10_000),
        ] {
            let e = at_definition(s);
            assert!(e.cost <= most, "{s}: {e:?}");
            assert!(compile(s).expect(s).fits(&CelBudget::default()).is_ok());
        }
    }

    /// Costs grow with the data as the interpreter's work does: linear for `exists`,
    /// quadratic for `map` (it copies the list built so far at each step), the product
    /// of the sizes for nested comprehensions.
    #[test]
    fn run_time_costs_follow_the_data() {
        let items = |n: usize| json!({"items": (0..n).collect::<Vec<_>>()});
        let exists = |n| with("items.exists(x, x == 7)", &items(n)).cost;
        assert!(exists(1000) > 9 * exists(100) && exists(1000) < 11 * exists(100));
        let map = |n| with("items.map(x, x).size() > 0", &items(n)).cost;
        assert!(map(1000) > 50 * map(100), "{} {}", map(1000), map(100));
        let nested = |n| with("items.exists(x, items.exists(y, x == y + 1))", &items(n)).cost;
        assert!(nested(1000) > 50 * nested(100));
        // A nested comprehension over 1000 elements is over the default budget; the
        // same expression over 10 is not, and is cheap at definition.
        let budget = CelBudget::default();
        let s = "items.exists(x, items.exists(y, x == y + 1))";
        assert!(budget.admits(&with(s, &items(1000))).is_err());
        assert!(budget.admits(&with(s, &items(10))).is_ok());
        assert!(budget.admits(&at_definition(s)).is_ok());
        // Each variable counts as one (small) element at definition.
        let (def, one) = (at_definition(s).cost, with(s, &items(1)).cost);
        assert!(def >= one && def < 2 * one, "{def} {one}");
    }

    /// A path to a value measures that value only, not its neighbours.
    #[test]
    fn paths_are_measured_exactly() {
        let vars = json!({"steps": {
            "a": {"outputs": {"small": [1, 2, 3]}},
            "b": {"outputs": {"big": (0..100_000).collect::<Vec<_>>()}}}});
        // Binding `steps` copies all of it, whatever the path.
        let binding = with("size(steps) > 0", &vars).cost;
        assert!(binding > 100_000, "{binding}");
        let e = with("steps[\"a\"].outputs.small.exists(x, x > 2)", &vars);
        assert!(e.cost < binding + 100, "{e:?}");
        let e = with("steps.b.outputs.big.exists(x, x > 2)", &vars);
        assert!(e.cost > binding + 500_000, "{e:?}");
    }

    #[test]
    fn built_lists_are_bounded() {
        let vars = json!({"items": (0..6000).collect::<Vec<_>>()});
        let e = with("size(items + items) > 0", &vars);
        assert_eq!(e.largest_list, 12_000);
        let refusal = CelBudget::default().admits(&e).expect_err("too long");
        assert!(refusal.contains("celMaxListSize = 10000"), "{refusal}");
        let e = with(
            "items.filter(x, x < 10).size() > 0",
            &json!({"items": [1, 2, 3]}),
        );
        assert_eq!(e.largest_list, 3, "a filter keeps at most its range");
        assert_eq!(
            at_definition(&format!("size({}) > 0", literal(10_001))).largest_list,
            10_001
        );
    }

    #[test]
    fn text_is_charged_by_its_length() {
        let vars = |n: usize| json!({"s": "a".repeat(n)});
        // Beyond binding `s` (which copies it).
        let binding = |n| with("s == null", &vars(n)).cost;
        assert!(binding(80_000) >= 10_000, "{}", binding(80_000));
        let eq = |n| with("s == 'x'", &vars(n)).cost - binding(n);
        assert_eq!(eq(10), eq(100_000), "equality stops at the shorter operand");
        let concat = |n| with("size(s + s) > 0", &vars(n)).cost - binding(n);
        assert!(concat(80_000) >= 20_000, "{}", concat(80_000));
    }

    #[test]
    fn patterns_are_charged_by_automaton_and_text() {
        let text = |n: usize| json!({"s": "a".repeat(n), "items": vec!["a"; 100], "p": "^a+$"});
        // A literal pattern is compiled once, whatever the iterations.
        let once = with("items.all(x, x.matches('^[a-z]+$'))", &text(1)).cost;
        let dynamic = with("items.all(x, 'abc'.matches(x))", &text(1)).cost;
        assert!(once < 20_000, "{once}");
        assert!(dynamic > CelBudget::default().max_cost, "{dynamic}");
        // A pattern from the data is measured at run time.
        assert!(with("s.matches(p)", &text(100)).cost < 20_000);
        // A small pattern with a large automaton over a long text.
        let heavy = with("s.matches('(a{80}){80}')", &text(10_000)).cost;
        assert!(heavy > CelBudget::default().max_cost, "{heavy}");
    }

    /// Refused at run time without being run: were it run, `1 / 0` would answer a
    /// division error instead.
    #[test]
    fn over_budget_is_a_condition_error_without_evaluation() {
        let vars = json!({"items": (0..3000).collect::<Vec<_>>()});
        let layer = vars.as_object().cloned().unwrap_or_default();
        let scope = Scope {
            layers: vec![&layer],
            ..Scope::default()
        };
        let program = compile("items.map(x, x).size() > 0 && 1 / 0 == 1").expect("compiles");
        assert!(program.fits(&CelBudget::default()).is_ok());
        let e = cel::evaluate(&program, &scope, &CelBudget::default()).expect_err("refused");
        assert!(e.message.contains("celMaxCost"), "{e}");
        let roomy = CelBudget {
            max_cost: u64::MAX,
            max_list_size: u64::MAX,
        };
        let e = cel::evaluate(&program, &scope, &roomy).expect_err("runs, then fails");
        assert!(!e.message.contains("celMaxCost"), "{e}");
    }

    proptest! {
        #![proptest_config(crate::choreography::proptest_config(256))]

        /// Whatever the gate accepts, the estimator handles, at definition and on data.
        #[test]
        fn estimating_never_panics(parts in proptest::collection::vec(prop_oneof![
            Just("a"), Just("b.c"), Just("1"), Just("-"), Just("!"), Just("+"), Just("=="),
            Just("<"), Just("in"), Just("&&"), Just("||"), Just("?"), Just(":"), Just("("),
            Just(")"), Just("["), Just("]"), Just("{"), Just("}"), Just(","), Just("."),
            Just("'s'"), Just("2.5"), Just("3u"), Just("f("), Just("a.map(i, "),
            Just("b.c.filter(i, "), Just("a.exists(i, "), Just("i"), Just(".matches("),
            Just("size("), Just("max("), Just("null"), Just("true"), Just(" "),
        ], 0..16)) {
            let s = parts.concat();
            if let Ok(program) = compile(&s) {
                let _ = program.fits(&CelBudget::default());
                let vars = json!({"a": [1, [2, 3], {"k": "v"}], "b": {"c": ["x", "yy"]}});
                let _ = estimate(&program_expr(&program), vars.as_object(), u64::MAX);
            }
        }
    }

    fn program_expr(p: &cel::Program) -> IdedExpr {
        p.expr().clone()
    }
}

#[cfg(test)]
mod calibration {
    //! `cargo test --release -p maestro-core calibration -- --ignored --nocapture`:
    //! nanoseconds per estimated unit on adversarial shapes (should stay under ~50).
    use super::*;
    use crate::choreography::cel::{compile, evaluate};
    use crate::choreography::scope::Scope;
    use serde_json::json;

    #[test]
    #[ignore]
    fn ns_per_unit() {
        let n = |k: usize| (0..k as i64).collect::<Vec<_>>();
        let lit = |k: usize| {
            format!(
                "[{}]",
                (0..k)
                    .map(|i| (i % 10).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let big_map: Map<String, Value> =
            (0..10_000).map(|i| (format!("key{i}"), json!(i))).collect();
        let vars = json!({
            "L": n(300), "L1k": n(1000), "L100k": n(100_000),
            "S": "a".repeat(100_000), "T": "a".repeat(100_000),
            "M": big_map.clone(), "M2": big_map,
            "objs": (0..1000).map(|i| json!({"id": i, "tags": ["x", "y", "z"], "n": {"k": i}})).collect::<Vec<_>>(),
        });
        let layer = vars.as_object().cloned().unwrap_or_default();
        let scope = Scope {
            layers: vec![&layer],
            ..Scope::default()
        };
        let roomy = CelBudget {
            max_cost: u64::MAX,
            max_list_size: u64::MAX,
        };
        let l100 = lit(100);
        let long = "b".repeat(2000);
        let cases = vec![
            "L.map(x, L.map(y, y)).size() > 0".to_owned(),
            "L.exists(x, L.exists(y, x == y + 100000))".to_owned(),
            format!(
                "{l100}.map(x, {l100}.filter(y, {l100}.exists(z, z == x + y + 100))).size() > 0"
            ),
            format!("L1k.map(x, '{long}').size() > 0"),
            "L1k.map(x, {'a': x, 'b': [x, x, x]}).size() > 0".to_owned(),
            "L1k.all(x, size(string(x)) > 0)".to_owned(),
            "L.exists(x, S.contains('zz'))".to_owned(),
            "L.exists(x, S != T)".to_owned(),
            "L.exists(x, M != M2)".to_owned(),
            "L1k.exists(x, x + 100000 in L1k)".to_owned(),
            "L1k.filter(x, x % 2 == 0).size() > 0".to_owned(),
            "S.matches('(a{80}){80}b')".to_owned(),
            "L1k.all(x, 'abcdef'.matches('^[a-z]+$'))".to_owned(),
            "size(string(string(S))) > 0".to_owned(),
            "L1k.all(x, has(M.key5))".to_owned(),
            "max(L100k) > 0".to_owned(),
            "L1k.map(x, L1k).size() > 0".to_owned(),
            "M.exists(k, M[k] == -1)".to_owned(),
            "objs.exists(o, o.tags.exists(t, t == 'w') || o.n.k < 0)".to_owned(),
            "L1k.exists(x, S + 'b' == T)".to_owned(),
            "L.exists(x, objs == objs.map(o, o))".to_owned(),
        ];
        // The reported expressions: refused at definition, and how long refusing takes.
        let (l370, l300) = (lit(370), lit(300));
        for s in [
            format!("{l370}.map(x, {l370}.filter(y, {l370}.exists(z, z == x + y))).size() > 0"),
            format!("{l300}.map(x, {l300}.map(y, {l300})).size() > 0"),
        ] {
            let t = std::time::Instant::now();
            let program = compile(&s).expect("compiles");
            let parsed = t.elapsed();
            let t = std::time::Instant::now();
            let refused = program.fits(&CelBudget::default());
            println!(
                "parsed in {parsed:?}, refused in {:?}: {}",
                t.elapsed(),
                refused.unwrap_err().split(';').next().unwrap_or_default()
            );
        }
        for s in cases {
            let p = compile(&s).expect(&s);
            let mut names = Vec::new();
            identifiers(p.expr(), &mut names);
            let vars_map = scope.cel_variables(Some(&names));
            let est = estimate(p.expr(), Some(&vars_map), u64::MAX);
            let t = std::time::Instant::now();
            let r = evaluate(&p, &scope, &roomy);
            let ns = t.elapsed().as_nanos() as f64;
            println!(
                "{:>8.1} ns/unit  cost {:>12}  {:>10.3} ms  {:?}  {}",
                ns / est.cost as f64,
                est.cost,
                ns / 1e6,
                r.is_ok(),
                &s[..s.len().min(70)]
            );
        }
    }
}
