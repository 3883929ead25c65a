"""Where Monty answers differently from CPython: the table of known divergences, and
the two ways of recognising one.

Each `Divergence` names a construct, what Monty does with it, what CPython does, the
pydantic-monty version it was seen in, and how it is recognised:

- **statically** (`detect()`, on the parse the policy's static checks already make, so
  it costs one more walk of a tree that is already built): the planner sends such code
  straight to a container when AUTO may fall back, and warns in the result otherwise;
- **by its error** (`spurious_error()`, from Monty's raised exception and where it was
  raised): backends/monty/outcome.py reports it as UNSUPPORTED when a container follows
  (so AUTO moves), as the code's RUNTIME_ERROR with the doubt named otherwise.

Why here, beside the Monty backend: the table describes Monty, changes when
pydantic-monty does, and outcome.py (the one place Monty's signals become a failure
kind) reads it. Standard library only: the static checker processes
(sandbox/policy/static_check.py) import it, and they must start in milliseconds.

The static rules over-approximate on purpose: code they flag runs in a container, which
is slower but right; code they miss may get a wrong answer that nobody sees. Each rule's
docstring says what it cannot see."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

# The pydantic-monty release the table was last checked against (tests/backends/monty/
# test_divergence_table.py runs every example and fails when a release fixes or changes one).
CHECKED_MONTY_VERSION = "1.4.0"


@dataclass(frozen=True, kw_only=True)
class Divergence:
    id: str
    construct: str
    monty: str  # what Monty does
    cpython: str  # what CPython does
    monty_version: str
    # "static": detect() finds it in the source; "error": spurious_error() knows Monty's
    # error for it; "timeout": AUTO moves a Monty TIMEOUT to a container.
    detection: tuple[Literal["static", "error", "timeout"], ...]
    kind: Literal["silent", "spurious error", "slower"]
    example: str  # a program whose stdout differs (tests run it in both backends)


TABLE: tuple[Divergence, ...] = (
    Divergence(
        id="set-order",
        construct="iterating a set or frozenset (for, list(), tuple(), join, print, pop)",
        monty="iterates in its own order (often insertion order)",
        cpython="iterates in hash-table order",
        monty_version="1.4.0",
        detection=("static",),
        kind="silent",
        example="print(tuple(set((3, 4, 5, 6)) & set((5, 7, 4, 10))))",
    ),
    Divergence(
        id="eager-iterator",
        construct="generator expressions and zip/map/filter/enumerate/reversed results "
        "used as iterators (next(), a second pass, side effects, short-circuiting)",
        monty="builds them as lists, eagerly: next() raises TypeError \"'list' object is "
        'not an iterator", a second pass sees every item again, side effects run at once',
        cpython="lazy, single-pass iterators",
        monty_version="1.4.0",
        detection=("static", "error"),
        kind="spurious error",
        example="xs = [1, 2, 3, 4]\nprint(next((x for x in xs if x % 2 == 0), -1))",
    ),
    Divergence(
        id="list-iadd-iterable",
        construct="`a_list += iterable` with a tuple, str, range or other non-list",
        monty='raises TypeError: can only concatenate list (not "tuple") to list',
        cpython="extends the list (list.__iadd__ takes any iterable)",
        monty_version="1.4.0",
        detection=("static", "error"),
        kind="spurious error",
        example="xs = [1]\nxs += (2, 3)\nprint(xs)",
    ),
    Divergence(
        id="re-group-reference",
        construct=r"a group reference followed by a letter, digit or _ in a re.sub "
        r"replacement (r'\1_\2')",
        monty=r"reads \1_ as a reference to a group named '1_', which is empty",
        cpython=r"group 1 followed by '_'",
        monty_version="1.4.0",
        detection=("static",),
        kind="silent",
        example="import re\nprint(re.sub('(.)([A-Z])', r'\\1_\\2', 'aB'))",
    ),
    Divergence(
        id="missing-method",
        construct="a method of Counter or defaultdict taken as a value (key=counts.get)",
        monty="raises AttributeError: 'Counter' object has no attribute 'get' (calling "
        "counts.get(k) works); now UNSUPPORTED even when the code imported the type "
        "itself, since that import is the real type",
        cpython="a bound method",
        monty_version="1.4.0",
        detection=("error",),
        kind="spurious error",
        example="from collections import Counter\nc = Counter('abca')\nprint(max(c, key=c.get))",
    ),
    Divergence(
        id="slower",
        construct="CPU-heavy loops",
        monty="several times slower than CPython: hits the time limit where CPython finishes",
        cpython="finishes within the budget",
        monty_version="1.4.0",
        detection=("timeout",),
        kind="slower",
        # 0.3-0.4 s in CPython, 2.3 to 4 times that in Monty (measured on 2 busy cores).
        example="def d(n):\n    return sum([f for f in range(1, n) if n % f == 0])\n"
        "print(sum(n for n in range(2, 2500) if d(d(n)) == n and d(n) != n))",
    ),
)
BY_ID = {entry.id: entry for entry in TABLE}


def reason(id: str, line: int = 0) -> str:
    """One line naming divergence `id` (seen at `line`, when known): what Monty does and
    what CPython does."""
    entry = BY_ID[id]
    where = f" (line {line})" if line else ""
    return f"{entry.construct}{where}: Monty {entry.monty}; CPython: {entry.cpython}"


def warning(id: str, line: int = 0) -> str:
    """The result's fidelity_warning for a Monty run that met divergence `id`."""
    return f"Monty may answer differently from CPython here [{id}]: {reason(id, line)}"


@dataclass(frozen=True)
class Hit:
    """Where `detect()` found a construct of the table entry `id` (line 1-based, column
    1-based)."""

    id: str
    line: int
    column: int


def detect(facts: Facts) -> tuple[Hit, ...]:
    """The first place each statically detectable divergence occurs in the walked tree,
    in source order."""
    first: dict[str, Hit] = {}
    for rule, find in _RULES:
        if rule not in facts.may_have:
            continue
        for hit in find(facts):
            seen = first.get(hit.id)
            if seen is None or (hit.line, hit.column) < (seen.line, seen.column):
                first[hit.id] = hit
    return tuple(sorted(first.values(), key=lambda h: (h.line, h.column)))


def detect_source(code: str) -> tuple[Hit, ...]:
    """detect() on `code`; () when the host cannot parse it."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return ()
    return detect(Facts(tree))


# -- by its error ---------------------------------------------------------------------

_NOT_AN_ITERATOR = "'list' object is not an iterator"
_LIST_CONCAT = re.compile(r'^can only concatenate list \(not "(\w+)"\) to list$')


def spurious_error(type_name: str, message: str, source_line: str) -> Divergence | None:
    """The table entry whose error this is, if Monty may have raised it where CPython
    would not: `source_line` is the line it was raised on. The same error from code that
    is wrong in CPython too is not told apart here; a container tells."""
    if type_name != "TypeError":
        return None
    if message == _NOT_AN_ITERATOR:
        return BY_ID["eager-iterator"]
    if _LIST_CONCAT.match(message) and "+=" in source_line:
        return BY_ID["list-iadd-iterable"]
    return None


# -- what the rules know of a tree ----------------------------------------------------


def _hit(id: str, node: ast.AST) -> Hit:
    return Hit(id, getattr(node, "lineno", 0), getattr(node, "col_offset", -1) + 1)


class Facts:
    """One walk's worth of what the rules ask: every node (in walk order), each node's
    parent, the functions the code defines (name -> parameters), and which rules can
    apply at all (most code has no set, no lazy iterator, no `+=`: their rules are
    skipped)."""

    def __init__(self, tree: ast.AST) -> None:
        self.parent: dict[ast.AST, ast.AST] = {}
        self.nodes: list[ast.AST] = [tree]
        self.functions: dict[str, list[str]] = {}
        self.may_have: set[str] = set()
        self.by_type: dict[type[ast.AST], list[ast.AST]] = {}
        self._loads: dict[str, list[ast.Name]] | None = None
        parent = self.parent
        nodes = self.nodes
        by_type = self.by_type
        views = set_operators = False  # d.keys() | other is a set
        for node in nodes:  # breadth first, as ast.walk, in one pass
            for child in ast.iter_child_nodes(node):
                parent[child] = node
                nodes.append(child)
            kind = type(node)
            same = by_type.get(kind)
            if same is None:
                by_type[kind] = [node]
            else:
                same.append(node)
            if kind is ast.Name:
                name = node.id  # type: ignore[attr-defined]
                if name in _SET_NAMES:
                    self.may_have.add("set-order")
                elif name in _LAZY_CALLS:
                    self.may_have.add("eager-iterator")
            elif kind is ast.Attribute:
                views = views or node.attr in _VIEW_METHODS  # type: ignore[attr-defined]
            elif kind is ast.BinOp:
                set_operators = set_operators or isinstance(node.op, _SET_OPS)  # type: ignore[attr-defined]
            elif kind in _SET_NODES:
                self.may_have.add("set-order")
            elif kind is ast.GeneratorExp:
                self.may_have.add("eager-iterator")
            elif kind is ast.AugAssign:
                self.may_have.add("list-iadd-iterable")
            elif kind is ast.Import or kind is ast.ImportFrom:
                self.may_have.add("re-group-reference")
            elif kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                args = node.args  # type: ignore[attr-defined]
                params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                self.functions[node.name] = params  # type: ignore[attr-defined]
        if views and set_operators:
            self.may_have.add("set-order")

    def of_type(self, *types: type[ast.AST]) -> Iterator[ast.AST]:
        """The nodes of exactly these types (not subclasses), by type, in walk order."""
        for kind in types:
            yield from self.by_type.get(kind, ())

    def loads(self) -> dict[str, list[ast.Name]]:
        """Every read of each name (computed once, when a rule first asks)."""
        if self._loads is None:
            self._loads = {}
            for node in self.of_type(ast.Name):
                assert isinstance(node, ast.Name)
                if isinstance(node.ctx, ast.Load):
                    self._loads.setdefault(node.id, []).append(node)
        return self._loads

    def enclosing_function(self, node: ast.AST) -> str:
        """The name of the function `node` is in ("" at module level, or in a lambda)."""
        parent = self.parent.get(node)
        while parent is not None:
            if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef):
                return parent.name
            if isinstance(parent, ast.Lambda):
                return ""
            parent = self.parent.get(parent)
        return ""


_SET_NAMES = frozenset({"set", "frozenset"})
_VIEW_METHODS = frozenset({"keys", "items"})
_SET_NODES = (ast.Set, ast.SetComp)


def _call_name(node: ast.AST) -> str | None:
    """`f` for a call `f(...)`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _bound_names(target: ast.AST) -> Iterator[str]:
    """Names an assignment target binds, attributes as `.attr`."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Attribute):
        yield "." + target.attr
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _bound_names(element)
    elif isinstance(target, ast.Starred):
        yield from _bound_names(target.value)


def _assignments(facts: Facts) -> Iterator[tuple[ast.AST, ast.AST]]:
    """(target, value) of every single-target binding."""
    for node in facts.of_type(ast.Assign, ast.AnnAssign, ast.NamedExpr, ast.AugAssign):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield target, node.value
        elif (
            isinstance(node, ast.AnnAssign | ast.NamedExpr | ast.AugAssign)
            and node.value is not None
        ):
            yield node.target, node.value


# -- set-order ------------------------------------------------------------------------

_SET_OPS = (ast.BitAnd, ast.BitOr, ast.BitXor, ast.Sub)
_SET_RESULT_METHODS = frozenset(
    {"union", "intersection", "difference", "symmetric_difference", "copy"}
)
# Uses of a set whose answer does not depend on its order.
_ORDER_FREE_METHODS = frozenset(
    {
        "add",
        "discard",
        "remove",
        "update",
        "clear",
        "intersection_update",
        "difference_update",
        "symmetric_difference_update",
        "issubset",
        "issuperset",
        "isdisjoint",
        "__len__",
        "__contains__",
    }
    | _SET_RESULT_METHODS
)
# sum is not here: floats summed in another order differ in their last digits.
_ORDER_FREE_CALLS = frozenset(
    {"sorted", "len", "min", "max", "any", "all", "set", "frozenset", "bool", "isinstance"}
)


class _SetValues:
    """Which expressions may be sets: flow- and scope-insensitive (a name ever bound to a
    set is a set everywhere), through assignments, returns of the code's own functions,
    and arguments passed to them; iterated to a fixed point."""

    def __init__(self, facts: Facts) -> None:
        self.facts = facts
        self.names: set[str] = set()  # names, and ".attr" for attributes
        self.functions: set[str] = set()  # the code's functions that may return a set
        bindings = list(_assignments(facts))
        returns = [
            (facts.enclosing_function(node), node.value)
            for node in facts.of_type(ast.Return)
            if isinstance(node, ast.Return) and node.value is not None
        ]
        calls = [node for node in facts.of_type(ast.Call) if _call_name(node) in facts.functions]
        changed = True
        while changed:
            before = (len(self.names), len(self.functions))
            for target, value in bindings:
                if self.is_set(value):
                    self.names.update(_bound_names(target))
            for name, value in returns:
                if self.is_set(value):
                    self.functions.add(name)
            for call in calls:
                assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                params = facts.functions[call.func.id]
                for param, arg in zip(params, call.args, strict=False):
                    if self.is_set(arg):
                        self.names.add(param)
                for keyword in call.keywords:
                    if keyword.arg in params and self.is_set(keyword.value):
                        self.names.add(keyword.arg)
            changed = (len(self.names), len(self.functions)) != before

    def is_set(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Set | ast.SetComp):
            return True
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, ast.Attribute):
            return "." + node.attr in self.names
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name is not None:
                return name in ("set", "frozenset") or name in self.functions
            func = node.func
            return (
                isinstance(func, ast.Attribute)
                and func.attr in _SET_RESULT_METHODS
                and self.is_set(func.value)
            )
        if isinstance(node, ast.BinOp) and isinstance(node.op, _SET_OPS):
            return any(self.is_set(side) or _is_view(side) for side in (node.left, node.right))
        if isinstance(node, ast.IfExp):
            return self.is_set(node.body) or self.is_set(node.orelse)
        if isinstance(node, ast.BoolOp):
            return any(self.is_set(value) for value in node.values)
        return False


def _is_view(node: ast.AST) -> bool:
    """`d.keys()` or `d.items()`: a view whose set operations return sets."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _VIEW_METHODS
    )


def _set_order(facts: Facts) -> Iterator[Hit]:
    """A set whose order may reach the output: every use of a set-valued expression that
    is not known to ignore order. What it cannot see: a set inside another container
    (a list of sets iterated later) or one made by a library call it does not know."""
    sets = _SetValues(facts)
    names = sets.names
    for node in facts.of_type(ast.Name, ast.Attribute, *_MAY_BE_SETS):
        kind = type(node)
        if kind is ast.Name:
            if node.id not in names:  # type: ignore[attr-defined]
                continue
        elif kind is ast.Attribute:
            if "." + node.attr not in names:  # type: ignore[attr-defined]
                continue
        elif kind not in _MAY_BE_SETS:
            continue
        if sets.is_set(node) and not _order_free(node, facts):
            yield _hit("set-order", node)


# The expressions is_set() can say yes to, besides names and attributes.
_MAY_BE_SETS = (ast.Set, ast.SetComp, ast.Call, ast.BinOp, ast.IfExp, ast.BoolOp)


def _order_free(node: ast.AST, facts: Facts) -> bool:
    parent = facts.parent.get(node)
    if parent is None:
        return True
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, _SET_OPS):
        return True  # the result is a set itself, judged on its own
    if isinstance(parent, ast.Compare | ast.UnaryOp | ast.BoolOp | ast.IfExp):
        # membership, equality, subsets, truth; a BoolOp or IfExp's value is judged itself
        return True
    if isinstance(parent, ast.If | ast.While | ast.Assert) and parent.test is node:
        return True
    if isinstance(parent, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
        return True  # the name it binds is followed instead
    if isinstance(parent, ast.Return):
        return True  # the calls of the function are followed instead
    if isinstance(parent, ast.Expr):
        return True  # a bare statement; the last one's value is converted on the host
    if isinstance(parent, ast.Attribute) and parent.value is node:
        return parent.attr in _ORDER_FREE_METHODS
    if isinstance(parent, ast.Call) and node in parent.args:
        name = _call_name(parent)
        if name in ("list", "tuple"):
            # sorted(list(s)), len(tuple(s)): a sequence in the set's order, unseen.
            outer = facts.parent.get(parent)
            return isinstance(outer, ast.Call) and _call_name(outer) in _ORDER_FREE_CALLS
        return name in _ORDER_FREE_CALLS or name in facts.functions
    if isinstance(parent, ast.keyword):
        call = facts.parent.get(parent)
        return call is not None and _call_name(call) in facts.functions
    if isinstance(parent, ast.comprehension) and parent.iter is node:
        comprehension = facts.parent.get(parent)
        if isinstance(comprehension, ast.SetComp):
            return True
        consumer = facts.parent.get(comprehension) if comprehension is not None else None
        return (
            isinstance(comprehension, ast.GeneratorExp | ast.ListComp)
            and isinstance(consumer, ast.Call)
            and _call_name(consumer) in _ORDER_FREE_CALLS
        )
    return False


# -- eager-iterator -------------------------------------------------------------------

_LAZY_CALLS = frozenset({"zip", "map", "filter", "enumerate", "reversed"})
# Consumers that take every item, in order, before doing anything else: an eager list
# gives them the same answer.
_EAGER_CONSUMERS = frozenset(
    {
        "Counter",
        "OrderedDict",
        "deque",
        "dict",
        "frozenset",
        "len",
        "list",
        "max",
        "min",
        "set",
        "sorted",
        "sum",
        "tuple",
    }
)
_SHORT_CIRCUIT = frozenset({"any", "all", "iter"})
_PURE_FUNCTIONS = frozenset(
    {
        "abs",
        "bin",
        "bool",
        "chr",
        "dict",
        "divmod",
        "enumerate",
        "filter",
        "float",
        "frozenset",
        "hex",
        "int",
        "isinstance",
        "len",
        "list",
        "map",
        "max",
        "min",
        "oct",
        "ord",
        "pow",
        "range",
        "repr",
        "reversed",
        "round",
        "set",
        "sorted",
        "str",
        "sum",
        "tuple",
        "type",
        "zip",
    }
)
_PURE_METHODS = frozenset(
    {
        "capitalize",
        "casefold",
        "count",
        "endswith",
        "find",
        "get",
        "index",
        "isalnum",
        "isalpha",
        "isdigit",
        "islower",
        "isspace",
        "isupper",
        "items",
        "join",
        "keys",
        "lower",
        "lstrip",
        "replace",
        "rfind",
        "rsplit",
        "rstrip",
        "split",
        "startswith",
        "strip",
        "title",
        "upper",
        "values",
    }
)


def _is_lazy(node: ast.AST) -> bool:
    return isinstance(node, ast.GeneratorExp) or _call_name(node) in _LAZY_CALLS


def _lazy_parts(node: ast.AST) -> Iterator[ast.AST]:
    """What a lazy iterator evaluates item by item (CPython: as it is consumed; Monty:
    all at once): a generator expression's element, conditions and inner loops (its
    first iterable is evaluated at once in both), the function map and filter call,
    and the same of lazy iterators nested in them."""
    if isinstance(node, ast.GeneratorExp):
        yield node.elt
        first, *rest = node.generators
        yield from first.ifs
        for generator in rest:
            yield generator.iter
            yield from generator.ifs
        if _is_lazy(first.iter):
            yield from _lazy_parts(first.iter)
    elif isinstance(node, ast.Call):
        args = list(node.args)
        if _call_name(node) in ("map", "filter") and args:
            function = args.pop(0)
            if isinstance(function, ast.Lambda):
                yield function.body
            elif not (isinstance(function, ast.Constant) and function.value is None):
                # map(f, xs) calls f item by item: judged as a call of f.
                yield ast.Call(func=function, args=[], keywords=[])
        for arg in args:
            if _is_lazy(arg):
                yield from _lazy_parts(arg)


def _pure(lazy: ast.AST, *, may_raise: bool) -> bool:
    """Whether evaluating `lazy`'s item-by-item parts has no effect an eager list would
    show: no call but to builtins and methods without side effects, no walrus, no yield;
    and, with `may_raise` False, no division by a variable, since a short-circuiting
    consumer may never have reached a zero. (An IndexError or KeyError a short-circuit
    would have skipped is not seen: Monty then reports the code's RUNTIME_ERROR.)"""
    for part in _lazy_parts(lazy):
        for inner in ast.walk(part):
            if isinstance(inner, ast.NamedExpr | ast.Yield | ast.YieldFrom | ast.Await):
                return False
            if isinstance(inner, ast.Call) and not _is_pure_callable(inner.func):
                return False
            if (
                not may_raise
                and isinstance(inner, ast.BinOp)
                and isinstance(inner.op, ast.Div | ast.FloorDiv | ast.Mod)
                and not (isinstance(inner.right, ast.Constant) and inner.right.value)
            ):
                return False
    return True


def _is_pure_callable(func: ast.AST) -> bool:
    if isinstance(func, ast.Name):
        return func.id in _PURE_FUNCTIONS
    return isinstance(func, ast.Attribute) and func.attr in _PURE_METHODS


def _eager_iterators(facts: Facts) -> Iterator[Hit]:
    """A lazy iterator (a generator expression, zip, map, filter, enumerate, reversed)
    used where Monty's eager list answers differently: next() on it, more than one pass
    over a name bound to it, or anything but an eager consumer, a short-circuiting one
    or a loop over items without side effects. What it cannot see: a builtin shadowed
    by the code's own function (it flags that conservatively) and side effects hidden in
    a method it believes pure (a `get` of the code's own class)."""
    for node in facts.of_type(ast.GeneratorExp, ast.Call):
        if not _is_lazy(node):
            continue
        inner = _outermost_wrapper(node, facts)
        if inner is None or not _fine_where_used(inner, inner, facts):
            yield _hit("eager-iterator", node)


def _outermost_wrapper(node: ast.AST, facts: Facts) -> ast.AST | None:
    """The outermost lazy call wrapping `node` (zip(map(...)) is judged where the zip is
    used), or None when `node` is not one of its iterables (map's function, say)."""
    while True:
        parent = facts.parent.get(node)
        if parent is not None and _is_lazy(parent) and isinstance(parent, ast.Call):
            if node not in parent.args:
                return None
            node = parent
            continue
        return node


def _fine_where_used(node: ast.AST, lazy: ast.AST, facts: Facts) -> bool:
    """Whether the lazy expression `lazy`, evaluated where `node` is (itself, or the one
    load of the name it is bound to), gives the answer an eager list gives."""
    parent = facts.parent.get(node)
    if isinstance(parent, ast.Call) and node in parent.args:
        name = _call_name(parent)
        if name in _EAGER_CONSUMERS:
            return True
        if name in _SHORT_CIRCUIT:
            return _pure(lazy, may_raise=False)
        return isinstance(parent.func, ast.Attribute) and parent.func.attr in ("join", "extend")
    if isinstance(parent, ast.comprehension) and parent.iter is node:
        return _pure(lazy, may_raise=True)
    if isinstance(parent, ast.For | ast.AsyncFor) and parent.iter is node:
        stops = any(isinstance(n, ast.Break | ast.Return) for n in ast.walk(parent))
        return _pure(lazy, may_raise=not stops)
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and parent.value is node:
        target = parent.targets[0]
        if not isinstance(target, ast.Name):
            return False
        uses = facts.loads().get(target.id, [])
        # One pass over a name bound once, used where the expression itself would be.
        return len(uses) == 1 and _fine_where_used(uses[0], lazy, facts)
    return False


# -- list-iadd-iterable ---------------------------------------------------------------


def _list_iadd(facts: Facts) -> Iterator[Hit]:
    """`+=` of something that is plainly not a list (a tuple, str or bytes literal, a
    range, a generator expression) to a name the code binds to a list. Other cases are
    caught by their error (spurious_error)."""
    lists = {
        name
        for target, value in _assignments(facts)
        if isinstance(value, ast.List | ast.ListComp) or _call_name(value) == "list"
        for name in _bound_names(target)
    }
    for node in facts.of_type(ast.AugAssign):
        assert isinstance(node, ast.AugAssign)
        if not (isinstance(node.op, ast.Add) and isinstance(node.target, ast.Name)):
            continue
        value = node.value
        not_a_list = (
            isinstance(value, ast.Tuple | ast.GeneratorExp | ast.Set | ast.Dict)
            or (isinstance(value, ast.Constant) and isinstance(value.value, str | bytes))
            or _call_name(value) in ("range", "tuple", "reversed", "map", "zip", "filter")
        )
        if node.target.id in lists and not_a_list:
            yield _hit("list-iadd-iterable", node)


# -- re-group-reference ---------------------------------------------------------------

# \1 then a letter, digit-free identifier character: CPython reads group 1 and the
# character; Monty's regex engine reads a group named "1x".
_GROUP_THEN_WORD = re.compile(r"\\[1-9][0-9]?[A-Za-z_]")


def _group_references(facts: Facts) -> Iterable[Hit]:
    """A string constant holding a numbered group reference followed by an identifier
    character, in code that imports `re`. What it cannot see: a replacement built at
    run time."""
    imports_re = any(
        (isinstance(node, ast.Import) and any(a.name == "re" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and node.module == "re")
        for node in facts.of_type(ast.Import, ast.ImportFrom)
    )
    if not imports_re:
        return ()
    return [
        _hit("re-group-reference", node)
        for node in facts.of_type(ast.Constant)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _GROUP_THEN_WORD.search(node.value)
    ]


_RULES = (
    ("set-order", _set_order),
    ("eager-iterator", _eager_iterators),
    ("list-iadd-iterable", _list_iadd),
    ("re-group-reference", _group_references),
)
