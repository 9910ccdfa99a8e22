"""Loops that run in C for the pure path's bulk builders: a build of 100,000 regions made a
region at a time would spend most of its time in the interpreter. A builder computes each
field for all its objects at once (`map` over `operator` functions) and sets it with one
loop over the field's slot setter (`set_each`).

A slot's member descriptor `__set__` stores straight into the slot: no `__setattr__`
override and no attribute lookup along the class's MRO, so it also sets the fields a
class refuses to assign after construction (which is why only builders use it, on
objects they have just made and nobody else has seen).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import repeat, starmap
from types import MemberDescriptorType
from typing import Any, Final, TypeVar, cast

_T = TypeVar("_T")
_R = TypeVar("_R")

SlotSetter = Callable[[Any, Any], None]

consume: Final[Callable[[Iterable[object]], None]] = deque[object](maxlen=0).extend
"""Run an iterator to its end, keeping nothing (the loop stays in C)."""


def slot_setter(cls: type, name: str) -> SlotSetter:
    """The bound `__set__` of the slot `name` of `cls` (defined by `cls` or a base)."""
    for klass in cls.__mro__:
        descriptor = vars(klass).get(name)
        if descriptor is not None:
            if type(descriptor) is not MemberDescriptorType:
                raise TypeError(f"{klass.__name__}.{name} is not a slot")
            setter: SlotSetter = descriptor.__set__
            return setter
    raise AttributeError(f"{cls.__name__} has no slot {name!r}")


def each(function: Callable[..., _R], *iterables: Iterable[Any]) -> Iterator[_R]:
    """`map(function, *iterables)` for a callable that takes its arguments as a tuple (a
    slot setter, `object.__new__`, a type such as `slice` or `weakref.ref`): `map` makes
    a new tuple for each call, where `zip` hands its own back once the call has let go
    of it (a third less time per call for a slot setter)."""
    return starmap(function, zip(*iterables, strict=False))


def set_each(setter: SlotSetter, objects: Iterable[Any], values: Iterable[Any]) -> None:
    """`setter(obj, value)` for each object and the value beside it, in order, up to the
    end of the shorter of the two."""
    consume(each(setter, objects, values))


def make_each(cls: type[_T], setters: Mapping[str, SlotSetter], count: int,
              fields: Mapping[str, Iterable[Any]]) -> list[_T]:
    """`count` new objects of `cls` (made by `object.__new__`, no `__init__`), each field
    of `fields` set on all of them in turn with its setter in `setters`; every field of
    `setters` must be given (a slot never set would be an object missing a field)."""
    if fields.keys() != setters.keys():
        raise ValueError(f"make_each: fields {sorted(fields)}, setters {sorted(setters)}")
    objects = cast("list[_T]", list(each(object.__new__, repeat(cls, count))))
    for name, values in fields.items():
        set_each(setters[name], objects, values)
    return objects
