"""`instantiate` for config nodes that also carry descriptive keys (name, recipe, ...) the target does not take."""

from __future__ import annotations

import importlib
import inspect
import os
import types
import typing
from enum import Enum
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from binexp.errors import ConfigError

DESCRIPTIVE_KEYS = ("name",)


def build(node: DictConfig, drop: tuple[str, ...] = (), named: bool = True, later: tuple[str, ...] = (),
          expect: type | None = None, **kwargs: Any) -> Any:
    """The object `node` describes, its keys checked against the target's parameters; the keys in `drop` are not
    passed, nor, for a config group's option (`named`), its `name`, which says which option it is. A callback or a
    logger is not named: its `name` is a parameter (TensorBoardLogger's). A `_partial_` node's object is called
    later with the parameters named in `later` (an optimizer's params); it needs all its other ones now. An object
    that is not an `expect` (a `schedule._target_` naming another class) is refused naming the key."""
    spec = OmegaConf.to_container(node, resolve=True)
    if not isinstance(spec.get("_target_"), str):
        where = node._get_full_key("_target_").rpartition(".")[0] if isinstance(node, DictConfig) else ""
        raise ConfigError(f"{where or 'the config'}: no _target_ (the class to build); its keys: "
                          f"{', '.join(map(str, spec)) or 'none'}")
    if later and spec.get("_partial_") is not True:  # built whole, it would miss what binexp passes it later
        where = node._get_full_key("_target_").rpartition(".")[0] if isinstance(node, DictConfig) else "the config"
        raise ConfigError(f"{where}._partial_={spec.get('_partial_')!r}: allowed is true (binexp passes "
                          f"{', '.join(later)} when it builds it)")
    for key in (*(DESCRIPTIVE_KEYS if named else ()), *drop):
        spec.pop(key, None)
    _check_parameters(node, spec, {**kwargs, **dict.fromkeys(later)})
    built = instantiate(spec, _convert_="all", **kwargs)
    if expect is not None and not isinstance(built, expect):
        key = node._get_full_key("_target_") if isinstance(node, DictConfig) else "_target_"
        raise ConfigError(f"{key}={spec['_target_']}: builds a {type(built).__module__}.{type(built).__qualname__}, "
                          f"not a {expect.__module__}.{expect.__qualname__}")
    return built


def _check_parameters(node: DictConfig, spec: dict, given: dict) -> None:
    """A key the target does not take (added with `+key=...`, or a typo an experiment carried) fails naming the
    full key and the parameters the target has, not as a TypeError inside Hydra's instantiate."""
    target = spec.get("_target_")
    if not isinstance(target, str):
        return
    found = locate_target(target, node._get_full_key("_target_") if isinstance(node, DictConfig) else "_target_")
    try:
        params = parameters_of(found)
    except (ValueError, TypeError):  # a target without a Python signature: instantiate decides
        return
    if params is None:
        return
    passed = [k for k in spec if k in given]
    if passed:  # the caller's keyword wins inside instantiate: the config's value would be dropped unseen
        full_key = node._get_full_key(passed[0]) if isinstance(node, DictConfig) else passed[0]
        raise ConfigError(f"{full_key}: binexp sets it when it builds {target} (from the rest of the run's config), so "
                          f"a value here would be ignored; delete it")
    unknown = [k for k in spec if not str(k).startswith("_") and k not in params and k not in given]
    if unknown:
        full_key = node._get_full_key(unknown[0]) if isinstance(node, DictConfig) else unknown[0]
        takes = [name for name in params if name not in ("self", *given)]
        raise ConfigError(f"{full_key}: not a parameter of {target} (it takes {', '.join(takes) or 'none'})")
    _check_types(found, spec, node, target)
    missing = [name for name in _required(found) if name not in spec and name not in given]
    if missing:
        where = node._get_full_key("_target_").rpartition(".")[0] if isinstance(node, DictConfig) else "the config"
        raise ConfigError(f"{where}: {target} needs {', '.join(missing)}; set it: '{where}.{missing[0]}=...'")


def _check_types(found: Any, spec: dict, node: DictConfig, target: str) -> None:
    """A value that does not fit the type the target's __init__ declares for it fails naming the key: binexp's own
    options have schemas, but a method or schedule kept outside binexp has only its signature (a `bool` given
    `maybe` would be true, an Enum value outside its members passed on as it is)."""
    for key, value in spec.items():
        hint = _declared_type(found, str(key))
        if hint is None or _fits(value, hint):
            continue
        full_key = node._get_full_key(key) if isinstance(node, DictConfig) else key
        raise ConfigError(f"{full_key}={value!r}: {target} takes {_describe(hint)}")


def _declared_type(found: Any, name: str) -> Any:
    inits = [c.__dict__["__init__"] for c in found.__mro__ if "__init__" in c.__dict__] if inspect.isclass(found) else [found]
    for init in inits:
        try:
            if name in inspect.signature(init).parameters:
                return typing.get_type_hints(init).get(name)
        except Exception:  # an annotation that does not resolve (a name imported only for type checking)
            return None
    return None


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` (as the config gives it) is one of the type `hint` names; types it cannot judge pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if inspect.isclass(hint) and issubclass(hint, os.PathLike):  # a path: the config gives a string
        return isinstance(value, (str, os.PathLike))
    if inspect.isclass(hint) and issubclass(hint, Enum):
        return isinstance(value, hint) or value in {m.value for m in hint}
    if origin in (list, tuple) or hint in (list, tuple):  # the config gives a list for either
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, str]: one type per place
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    return True  # dicts, tensors, classes: their constructor decides


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if inspect.isclass(hint) and issubclass(hint, Enum):
        return "one of " + ", ".join(str(m.value) for m in hint)
    if origin in (list, tuple) or hint in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)}: " + ", ".join(_describe(a) for a in args)
        each = _describe(args[0]) if args else ""
        return f"a list of {each.removeprefix('a ')}s" if each.startswith("a ") else f"a list ({each} each)" if each else "a list"
    if inspect.isclass(hint) and issubclass(hint, os.PathLike):
        return "a path"
    return {type(None): "null", bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _required(target: Any) -> list[str]:
    """The parameters `target` cannot be called without."""
    try:
        params = inspect.signature(target).parameters
    except (ValueError, TypeError):
        return []
    return [n for n, p in params.items() if p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]


def locate_target(path: str, key: str) -> Any:
    """The object a `_target_` names, or a ConfigError naming the key and why it does not import. A method (or any
    class) defined outside binexp is found only where Python finds modules, and Hydra's own message for it is a
    logged ERROR and a hint to set HYDRA_FULL_ERROR."""
    parts = path.split(".")
    found: Any = None
    for i, part in enumerate(parts):
        if found is not None and hasattr(found, part):
            found = getattr(found, part)
            continue
        if found is not None and not inspect.ismodule(found):
            raise ConfigError(f"{key}={path}: {'.'.join(parts[:i])} has no {part}")
        module_name = ".".join(parts[: i + 1])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # the module exists; something it imports does not
                raise ConfigError(f"{key}={path}: importing {module_name} failed: {err}") from None
            if i == 0:
                raise ConfigError(f"{key}={path}: no module {module_name!r} on Python's path; a class defined outside "
                                  "binexp needs its folder on PYTHONPATH (or its package installed)") from None
            raise ConfigError(f"{key}={path}: {'.'.join(parts[:i])} has no {part}") from None
        except Exception as err:  # the module's own code fails
            raise ConfigError(f"{key}={path}: importing {module_name} failed: {type(err).__name__}: {err}") from None
    return found


def parameters_of(target: Any) -> list[str] | None:
    """The keyword parameters `target` takes; a class passing **kwargs on to its base's __init__ (a dataset's to
    ImageData's) takes those of the chain up to the first __init__ without **kwargs. None: it takes anything."""
    inits = [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__] if inspect.isclass(target) else [target]
    names: list[str] = []
    for init in inits:
        if init is object.__init__:  # a class without an __init__ of its own (Constant) takes nothing
            return names
        params = inspect.signature(init).parameters
        names += [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in names]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return names
    return None
