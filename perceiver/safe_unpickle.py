"""A pickle reader that can only build data: memory-safe by construction.

`pickle.Unpickler`, even with `find_class` restricted, hands the file's own
arguments to the real objects it may call: a BUILD on a `numpy.dtype` can give
a dtype a layout that disagrees with its item size, after which numpy views
memory far past the file's buffer. This module never does that. It runs the
pickle opcodes itself, on a machine that knows only:

- plain values: None, bools, ints, floats, str, bytes (as `bytearray`), tuples,
  lists, and dicts whose keys are str;
- the few globals a caller registers (`Reader(handlers=...)`); a handler gets
  already-built plain values and returns one, and a global is never called or
  modified by the file directly. A handler may return an `AttributedDict`,
  the one mapping that also takes a BUILD (of named attributes, kept apart).

Everything else (INST/OBJ/NEWOBJ, extension codes, persistent ids unless a
hook is given, out-of-band buffers, sets) is refused with `UnpicklingError`;
bytes that break the format itself (cut short, unknown opcodes, a malformed
stack) with its subclass `MalformedPickle`. Work is bounded: opcodes, container items, key length,
memo size, and the text of every message (`short`).
"""

import codecs
import struct
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

MAX_OPS = 2_000_000  # The published files need under 50,000.
MAX_ITEMS = 1_000_000  # Container entries built in one file.
MAX_KEY_CHARS = 1024  # Parameter names are a few dozen characters.
MAX_MESSAGE_CHARS = 200  # Of the file's content, in any message.


class UnpicklingError(ValueError):
    """The bytes are not a pickle this reader builds; nothing from them ran."""


class MalformedPickle(UnpicklingError):
    """The bytes break the pickle format itself (cut short, unknown opcode, bad structure)."""


def short(value: Any, limit: int = MAX_MESSAGE_CHARS // 2) -> str:
    """`repr` of a str/bytes/number clipped to `limit` chars; type name otherwise."""
    if isinstance(value, (str, bytes, bytearray, int, float, bool)) or value is None:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
            return f"an int of {value.bit_length()} bits"
        if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
            value = value[:limit]
            text = repr(value if not isinstance(value, bytearray) else bytes(value))
            return text + f"... ({type(value).__name__} clipped)"
        text = repr(value if not isinstance(value, bytearray) else bytes(value))
        return text if len(text) <= limit else text[:limit] + "..."
    return f"a {type(value).__name__}"


class Global:
    """A global the file named; only ever passed to or called through a handler."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


class Pending:
    """Base of objects a handler returns that may receive one BUILD (`build`)."""

    def build(self, state: Any) -> None:
        raise UnpicklingError(f"{type(self).__name__} takes no BUILD state.")


class AttributedDict(dict, Pending):
    """A dict a handler returns for a mapping class whose pickles may set attributes.

    Pickling a dict subclass's instance writes its items, then its instance
    attributes as one BUILD: `torch.save(model.state_dict())` gives the
    OrderedDict a `_metadata` attribute (module versions) that way. This
    dict takes items as a plain one does, and at most one BUILD whose state
    is a dict of the attribute names allowed; that state is kept apart in
    `attributes`, never among the items. Every other BUILD is refused.

    Args:
      items: the initial items (str keys, checked by the caller).
      allowed: the attribute names a BUILD may set.
    """

    def __init__(self, items: Any = (), allowed: Tuple[str, ...] = ("_metadata",)):
        super().__init__(items)
        self.allowed = frozenset(allowed)
        self.attributes: Optional[Dict[str, Any]] = None

    def build(self, state: Any) -> None:
        if self.attributes is not None:
            raise UnpicklingError("the pickle sets the attributes of a mapping twice.")
        # Only what pickle writes for instance attributes: a dict, not (dict, slots).
        if type(state) is not dict:
            raise UnpicklingError(
                f"the pickle sets the attributes of a mapping from {short(state)}; "
                "only a dict of attribute names is allowed."
            )
        unknown = sorted(set(state) - self.allowed)
        if unknown:
            raise UnpicklingError(
                f"the pickle sets attribute {short(unknown[0])} of a mapping; only "
                f"{', '.join(sorted(self.allowed))} may be set."
            )
        self.attributes = dict(state)


Handler = Callable[[Tuple[Any, ...]], Any]


class Reader:
    """Reads one pickle with a fixed table of globals.

    Args:
      handlers: `(module, name) -> handler`. A REDUCE of that global calls
        `handler(args)` with a tuple of built values. A global that is only
        passed as an argument (a class, say) has a handler too, which is never
        called unless the file tries to: it may raise `UnpicklingError`.
      persistent_load: called with the id of a PERSID/BINPERSID; refused when
        None.
    """

    def __init__(
        self,
        handlers: Mapping[Tuple[str, str], Handler],
        persistent_load: Optional[Callable[[Any], Any]] = None,
    ):
        self._handlers = dict(handlers)
        self._persistent_load = persistent_load

    # -- reading raw bytes ------------------------------------------------

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._data):
            raise MalformedPickle(
                f"the pickle is cut short: {n} bytes wanted at offset {self._pos} "
                f"of {len(self._data)}."
            )
        view = self._data[self._pos : self._pos + n]
        self._pos += n
        return view

    def _line(self) -> bytes:
        end = self._bytes.find(b"\n", self._pos)
        if end < 0:
            raise MalformedPickle(f"the pickle is cut short: no end of line after offset {self._pos}.")
        line = bytes(self._data[self._pos : end])
        self._pos = end + 1
        return line

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "little", signed=False)

    # -- the stack ----------------------------------------------------------

    def _pop(self) -> Any:
        if not self._stack:
            raise MalformedPickle("malformed pickle: the stack is empty.")
        return self._stack.pop()

    def _pop_mark(self) -> List[Any]:
        if not self._marks:
            raise MalformedPickle("malformed pickle: no MARK on the stack.")
        items = self._stack
        self._stack = self._marks.pop()
        return items

    def _count(self, n: int) -> None:
        self._items += n
        if self._items > MAX_ITEMS:
            raise UnpicklingError(f"the pickle builds more than {MAX_ITEMS} container entries.")

    def _set_item(self, target: Any, key: Any, value: Any) -> None:
        if type(target) is not dict and type(target) is not AttributedDict:
            raise UnpicklingError(f"SETITEM on {short(target)}; only dicts take items.")
        if type(key) is not str:
            raise UnpicklingError(f"a dict key is {short(key)}; only str keys are allowed.")
        if len(key) > MAX_KEY_CHARS:
            raise UnpicklingError(f"a dict key is {len(key)} characters long; at most {MAX_KEY_CHARS}.")
        target[key] = value

    def _append(self, target: Any, values: List[Any]) -> None:
        if type(target) is not list:
            raise UnpicklingError(f"APPEND on {short(target)}; only lists take appends.")
        self._count(len(values))
        target.extend(values)

    def _memo_get(self, index: int) -> Any:
        try:
            return self._memo[index]
        except KeyError:
            raise MalformedPickle(f"malformed pickle: memo entry {index} was never stored.") from None

    def _memo_put(self, index: int) -> None:
        if not self._stack:
            raise MalformedPickle("malformed pickle: PUT on an empty stack.")
        if index < 0:
            raise MalformedPickle(f"malformed pickle: negative memo index {index}.")
        self._memo[index] = self._stack[-1]

    def _global(self, module: Any, name: Any) -> Global:
        if type(module) is not str or type(name) is not str:
            raise UnpicklingError("a global's module and name must be str.")
        if (module, name) not in self._handlers:
            raise UnpicklingError(
                f"the pickle refers to {short(module, 80)[1:-1]}.{short(name, 80)[1:-1]}, which is "
                "not allowed; nothing from the file was run."
            )
        return Global(module, name)

    def _reduce(self, func: Any, args: Any) -> Any:
        if not isinstance(func, Global):
            raise UnpicklingError(f"REDUCE calls {short(func)}; only allowed globals can be called.")
        if type(args) is not tuple:
            raise UnpicklingError(f"REDUCE of {func!r} with {short(args)} for arguments.")
        return _call(self._handlers[(func.module, func.name)], args)

    def _build(self, target: Any, state: Any) -> None:
        if not isinstance(target, Pending):
            raise UnpicklingError(
                f"the pickle tries to set the state of {target!r}" if isinstance(target, Global)
                else f"the pickle tries to set the state of {short(target)}"
            )
        _call(target.build, state)

    # -- the opcodes ----------------------------------------------------------

    def load(self, data: bytes) -> Any:
        """The object the pickle `data` describes.

        Raises:
          UnpicklingError: for anything outside what this reader builds, a
            malformed or truncated pickle, or a handler's refusal.
        """
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"data must be bytes; got {type(data).__name__}")
        self._bytes = bytes(data)  # No copy when `data` is bytes already.
        self._data = memoryview(self._bytes)
        self._pos, self._stack, self._marks, self._memo, self._items = 0, [], [], {}, 0
        try:
            return self._run()
        except UnpicklingError:
            raise
        except (ValueError, OverflowError, UnicodeDecodeError, struct.error, MemoryError) as e:
            # Text-mode numbers and strings that do not parse.
            raise MalformedPickle(
                f"malformed pickle near offset {self._pos}: {type(e).__name__}: "
                f"{short(str(e), MAX_MESSAGE_CHARS)}"
            ) from None
        finally:
            self._bytes, self._data = b"", memoryview(b"")
            self._stack, self._marks, self._memo = [], [], {}

    def _run(self) -> Any:
        stack_push = self._push
        for _ in range(MAX_OPS):
            if self._pos >= len(self._data):
                raise MalformedPickle("the pickle is cut short: it ends before its STOP opcode.")
            code = self._data[self._pos]
            self._pos += 1
            op = _OPS.get(code)
            if op is None:
                raise MalformedPickle(
                    f"the pickle uses opcode {bytes([code])!r} at offset {self._pos - 1}, "
                    "which this reader does not build."
                )
            if op is _STOP:
                result = self._pop()
                if self._marks:
                    raise MalformedPickle("malformed pickle: an open MARK at STOP.")
                return result
            op(self, stack_push)
        raise UnpicklingError(f"the pickle runs more than {MAX_OPS} opcodes.")

    def _push(self, value: Any) -> None:
        self._stack.append(value)


def _call(fn: Callable, arg: Any) -> Any:
    try:
        return fn(arg)
    except UnpicklingError:
        raise
    except ValueError as e:  # A handler's refusal, kept apart from parse errors.
        raise UnpicklingError(str(e)) from None


def _decode_str(raw: Any) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")


def _text_string(line: bytes) -> Any:
    # Protocol 0's STRING is a repr-quoted Python 2 str.
    body = line
    if len(body) < 2 or body[0] != body[-1] or body[:1] not in (b'"', b"'"):
        raise MalformedPickle("malformed pickle: an unquoted STRING.")
    raw = codecs.escape_decode(body[1:-1])[0]
    return _py2_string(raw)


def _py2_string(raw: bytes) -> Any:
    # What pickle.Unpickler's default encoding='ASCII' gives.
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise UnpicklingError(
            "the pickle holds a Python 2 byte string that is not ASCII; not supported."
        ) from None


def _text_int(line: bytes) -> Any:
    if line == b"00":
        return False
    if line == b"01":
        return True
    return int(line, 0)


def _refuse(what: str):
    def op(reader: Reader, push) -> None:
        raise UnpicklingError(f"the pickle uses {what}, which this reader does not build.")

    return op


def _op_persid(reader: Reader, push, pid: Any) -> None:
    if reader._persistent_load is None:
        raise UnpicklingError("the pickle uses persistent ids, which this reader does not build.")
    push(reader._persistent_load(pid))


def _make_ops() -> Dict[int, Callable]:
    ops: Dict[int, Callable] = {}

    def op(code: bytes):
        def register(fn):
            ops[code[0]] = fn
            return fn

        return register

    # Framing and protocol.
    op(b"\x80")(lambda r, push: r._take(1))  # PROTO
    op(b"\x95")(lambda r, push: r._take(8))  # FRAME: the whole file is in memory.
    # Constants and numbers.
    op(b"N")(lambda r, push: push(None))
    op(b"\x88")(lambda r, push: push(True))
    op(b"\x89")(lambda r, push: push(False))
    op(b"I")(lambda r, push: push(_text_int(r._line())))
    op(b"J")(lambda r, push: push(int.from_bytes(r._take(4), "little", signed=True)))
    op(b"K")(lambda r, push: push(r._uint(1)))
    op(b"M")(lambda r, push: push(r._uint(2)))
    op(b"L")(lambda r, push: push(int(r._line().rstrip(b"L"), 0)))
    op(b"\x8a")(lambda r, push: push(int.from_bytes(r._take(r._uint(1)), "little", signed=True)))

    @op(b"\x8b")  # LONG4
    def _long4(r, push):
        n = int.from_bytes(r._take(4), "little", signed=True)
        if n > 64:  # No number in a checkpoint needs 512 bits.
            raise UnpicklingError(f"the pickle holds an integer of {n} bytes.")
        push(int.from_bytes(r._take(n), "little", signed=True))

    op(b"F")(lambda r, push: push(float(r._line())))
    op(b"G")(lambda r, push: push(struct.unpack(">d", r._take(8))[0]))
    # Strings and bytes; bytes become bytearrays so that arrays can own them.
    op(b"S")(lambda r, push: push(_text_string(r._line())))
    op(b"T")(lambda r, push: push(_py2_string(bytes(r._take(r._uint(4))))))
    op(b"U")(lambda r, push: push(_py2_string(bytes(r._take(r._uint(1))))))
    op(b"V")(lambda r, push: push(str(r._line(), "raw-unicode-escape")))
    op(b"X")(lambda r, push: push(_decode_str(r._take(r._uint(4)))))
    op(b"\x8c")(lambda r, push: push(_decode_str(r._take(r._uint(1)))))
    op(b"\x8d")(lambda r, push: push(_decode_str(r._take(r._uint(8)))))
    op(b"B")(lambda r, push: push(bytearray(r._take(r._uint(4)))))
    op(b"C")(lambda r, push: push(bytearray(r._take(r._uint(1)))))
    op(b"\x8e")(lambda r, push: push(bytearray(r._take(r._uint(8)))))
    op(b"\x96")(lambda r, push: push(bytearray(r._take(r._uint(8)))))  # BYTEARRAY8
    # Containers.
    op(b"(")(lambda r, push: (r._marks.append(r._stack), setattr(r, "_stack", [])))
    op(b")")(lambda r, push: push(()))
    op(b"]")(lambda r, push: push([]))
    op(b"}")(lambda r, push: push({}))

    @op(b"t")
    def _tuple(r, push):
        items = r._pop_mark()
        r._count(len(items))
        push(tuple(items))

    def _tuple_n(n):
        def fn(r, push):
            if len(r._stack) < n:
                raise MalformedPickle("malformed pickle: the stack is too short for a tuple.")
            items = r._stack[len(r._stack) - n :]
            del r._stack[len(r._stack) - n :]
            r._count(n)
            push(tuple(items))

        return fn

    op(b"\x85")(_tuple_n(1))
    op(b"\x86")(_tuple_n(2))
    op(b"\x87")(_tuple_n(3))

    @op(b"l")
    def _list(r, push):
        items = r._pop_mark()
        r._count(len(items))
        push(items)

    @op(b"d")
    def _dict(r, push):
        items = r._pop_mark()
        if len(items) % 2:
            raise MalformedPickle("malformed pickle: DICT with an odd number of items.")
        r._count(len(items) // 2)
        result: dict = {}
        for i in range(0, len(items), 2):
            r._set_item(result, items[i], items[i + 1])
        push(result)

    @op(b"a")
    def _append(r, push):
        value = r._pop()
        if not r._stack:
            raise MalformedPickle("malformed pickle: APPEND with no list.")
        r._append(r._stack[-1], [value])

    @op(b"e")
    def _appends(r, push):
        items = r._pop_mark()
        if not r._stack:
            raise MalformedPickle("malformed pickle: APPENDS with no list.")
        r._append(r._stack[-1], items)

    @op(b"s")
    def _setitem(r, push):
        value, key = r._pop(), r._pop()
        if not r._stack:
            raise MalformedPickle("malformed pickle: SETITEM with no dict.")
        r._count(1)
        r._set_item(r._stack[-1], key, value)

    @op(b"u")
    def _setitems(r, push):
        items = r._pop_mark()
        if len(items) % 2 or not r._stack:
            raise MalformedPickle("malformed pickle: SETITEMS without a dict or with odd items.")
        r._count(len(items) // 2)
        target = r._stack[-1]
        for i in range(0, len(items), 2):
            r._set_item(target, items[i], items[i + 1])

    # Stack and memo.
    op(b"0")(lambda r, push: r._pop())
    op(b"1")(lambda r, push: r._pop_mark())

    @op(b"2")
    def _dup(r, push):
        if not r._stack:
            raise MalformedPickle("malformed pickle: DUP on an empty stack.")
        push(r._stack[-1])

    op(b"g")(lambda r, push: push(r._memo_get(int(r._line()))))
    op(b"h")(lambda r, push: push(r._memo_get(r._uint(1))))
    op(b"j")(lambda r, push: push(r._memo_get(r._uint(4))))
    op(b"p")(lambda r, push: r._memo_put(int(r._line())))
    op(b"q")(lambda r, push: r._memo_put(r._uint(1)))
    op(b"r")(lambda r, push: r._memo_put(r._uint(4)))
    op(b"\x94")(lambda r, push: r._memo_put(len(r._memo)))  # MEMOIZE

    # Globals, calls and state.
    @op(b"c")
    def _global_text(r, push):
        module = r._line().decode("utf-8")
        name = r._line().decode("utf-8")
        push(r._global(module, name))

    @op(b"\x93")
    def _stack_global(r, push):
        name, module = r._pop(), r._pop()
        push(r._global(module, name))

    @op(b"R")
    def _reduce(r, push):
        args, func = r._pop(), r._pop()
        push(r._reduce(func, args))

    @op(b"b")
    def _build(r, push):
        state = r._pop()
        if not r._stack:
            raise MalformedPickle("malformed pickle: BUILD with no object.")
        r._build(r._stack[-1], state)

    op(b"P")(lambda r, push: _op_persid(r, push, r._line().decode("ascii")))
    op(b"Q")(lambda r, push: _op_persid(r, push, r._pop()))
    op(b"i")(_refuse("INST (building an instance of a class)"))
    op(b"o")(_refuse("OBJ (building an instance of a class)"))
    op(b"\x81")(_refuse("NEWOBJ (building an instance of a class)"))
    op(b"\x92")(_refuse("NEWOBJ_EX (building an instance of a class)"))
    for code in (b"\x82", b"\x83", b"\x84"):
        op(code)(_refuse("extension registry codes"))
    for code in (b"\x8f", b"\x90", b"\x91"):
        op(code)(_refuse("sets"))
    for code in (b"\x97", b"\x98"):
        op(code)(_refuse("out-of-band buffers"))
    ops[b"."[0]] = _STOP
    return ops


def _STOP(reader, push):  # A marker; `_run` handles STOP itself.
    raise AssertionError("unreachable")


_OPS = _make_ops()
