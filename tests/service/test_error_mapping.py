"""Every domain error reaches HTTP through ``service/errors.py`` and nowhere else.

The checks import every module of ``models``, ``indexer`` and ``service`` (so every error class is
defined), then: each class under the base ``ERSError`` derives from exactly one layer root, its own
layer's; each concrete class has an entry in ``HTTP_STATUS`` (itself or a non-root ancestor); no
route module catches a domain error (or anything broad enough to catch one) or builds an
``HTTPException``. Each checker is also run on a planted offender, so a checker that finds nothing
cannot pass by accident.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from indexer.errors import IndexerError, InvalidInput, StoreMismatch, StoreUnavailable
from indexer.jobs.errors import ItemError, JobNotFound
from indexer.upgrade.errors import MigrationRefused
from models.core.errors import ERSError, ModelError
from models.training.recipe import TrainingError
from service.errors import HTTP_STATUS, install_error_handlers
from service.runtime.batching import QueueFull
from service.runtime.errors import ServiceError

ROOT = Path(__file__).resolve().parents[2]
ROOTS: dict[str, type[ERSError]] = {"models": ModelError, "indexer": IndexerError, "service": ServiceError}
ErrorTable = Mapping[type[ERSError], int]


# -- the checkers ----------------------------------------------------------------------------
def import_every_module(packages: Iterable[str]) -> dict[str, ModuleType]:
    """Import every module of ``packages``; a module that fails to import fails the test, and a
    ``.py`` file the walk did not reach (a folder without ``__init__``) is named, not skipped."""
    modules: dict[str, ModuleType] = {}
    unreachable: list[str] = []
    for package in packages:
        modules[package] = importlib.import_module(package)
        walk = pkgutil.walk_packages(modules[package].__path__, f"{package}.", onerror=unreachable.append)
        for info in walk:
            modules[info.name] = importlib.import_module(info.name)
        assert not unreachable, f"packages that could not be walked: {unreachable}"
        on_disk = set()
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            on_disk.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        assert on_disk <= set(modules), f"modules the walk missed: {sorted(on_disk - set(modules))}"
    return modules


def subclasses(base: type[ERSError]) -> Iterator[type[ERSError]]:
    for cls in base.__subclasses__():
        yield cls
        yield from subclasses(cls)


def domain_errors(modules: Collection[str]) -> list[type[ERSError]]:
    """Every class under ``ERSError`` defined in one of ``modules`` (classes tests define are not the
    domain's), the layer roots included."""
    return sorted({c for c in subclasses(ERSError) if c.__module__ in modules}, key=lambda c: c.__qualname__)


def unmapped(classes: Iterable[type[ERSError]], table: ErrorTable) -> list[str]:
    """The concrete classes with no entry in ``table``, neither themselves nor a non-root ancestor
    (a root's entry would map every class of its layer at once: it does not count)."""
    roots = set(ROOTS.values())
    missing = []
    for cls in classes:
        if cls in roots:
            continue
        own = [c for c in cls.__mro__ if issubclass(c, ERSError) and c is not ERSError and c not in roots]
        if not any(c in table for c in own):
            missing.append(f"{cls.__module__}.{cls.__qualname__}")
    return missing


def misplaced(classes: Iterable[type[ERSError]]) -> list[str]:
    """Classes that are not under exactly one root, the root of the layer that defines them."""
    wrong = []
    for cls in classes:
        if cls in ROOTS.values():
            continue
        roots = [r for r in ROOTS.values() if issubclass(cls, r)]
        layer = ROOTS.get(cls.__module__.split(".")[0])
        if roots != [layer]:
            names = [r.__name__ for r in roots] or "no root"
            wrong.append(f"{cls.__module__}.{cls.__qualname__} is under {names}, not its layer's root")
    return wrong


def _resolve(node: ast.expr, namespace: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return namespace.get(node.id, getattr(builtins, node.id, None))
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _last_name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def domain_catches(source: str, namespace: Mapping[str, Any]) -> list[str]:
    """Where ``source`` (a route module, its globals ``namespace``) catches a domain error: an
    ``except`` naming an ``ERSError`` class or a class above it (``Exception`` catches them all), a
    bare ``except``, or one the check cannot resolve; and every use of ``HTTPException``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ExceptHandler):
            if node.type is None:
                found.append((node.lineno, "bare except"))
                continue
            names = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            for name in names:
                cls = _resolve(name, namespace)
                if not inspect.isclass(cls):
                    found.append((node.lineno, f"except {ast.unparse(name)} (cannot tell what it catches)"))
                elif issubclass(cls, ERSError) or issubclass(ERSError, cls):
                    found.append((node.lineno, f"except {ast.unparse(name)} catches domain errors"))
        elif _last_name(node) == "HTTPException":
            found.append((getattr(node, "lineno", 0), "HTTPException (raise the domain error instead)"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


# -- the code base ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def modules() -> dict[str, ModuleType]:
    return import_every_module(ROOTS)


@pytest.fixture(scope="module")
def errors(modules: dict[str, ModuleType]) -> list[type[ERSError]]:
    found = domain_errors(modules)
    # the walk reached every layer: a few classes of each, StoreMismatch (once unmapped) included
    for cls in (StoreMismatch, JobNotFound, ItemError, MigrationRefused, TrainingError, QueueFull, *ROOTS.values()):
        assert cls in found, cls
    return found


def test_every_domain_error_has_an_http_status(errors: list[type[ERSError]]) -> None:
    assert unmapped(errors, HTTP_STATUS) == []


def test_every_domain_error_is_under_its_layer_root(errors: list[type[ERSError]]) -> None:
    assert misplaced(errors) == []
    assert not set(HTTP_STATUS) & {ERSError, *ROOTS.values()}, "a root's entry would hide a missing one"
    assert all(400 <= status < 600 for status in HTTP_STATUS.values())


def test_no_route_catches_a_domain_error(modules: dict[str, ModuleType]) -> None:
    routes = {name: m for name, m in modules.items() if name.startswith("service.routes.")}
    assert {"service.routes.migrations", "service.routes.collections", "service.routes.health"} <= set(routes)
    found = {name: domain_catches(inspect.getsource(m), vars(m)) for name, m in routes.items()}
    assert {name: where for name, where in found.items() if where} == {}


# -- the checkers catch what they are for -------------------------------------------------------
class Unmapped(IndexerError):
    """Under the root only: no entry."""


class MappedByAncestor(InvalidInput):
    """Takes InvalidInput's entry."""


class TwoRoots(InvalidInput, ModelError):
    """Under two layers' roots."""


def test_the_mapping_check_fails_on_an_unmapped_class() -> None:
    assert unmapped([Unmapped, MappedByAncestor], HTTP_STATUS) == [f"{__name__}.Unmapped"]
    # an entry for the root does not map its classes
    assert unmapped([Unmapped], {**HTTP_STATUS, IndexerError: 500}) == [f"{__name__}.Unmapped"]
    assert unmapped([Unmapped], {**HTTP_STATUS, Unmapped: 418}) == []
    assert Unmapped not in domain_errors({"indexer.errors"}) and InvalidInput in domain_errors({"indexer.errors"})


def test_the_hierarchy_check_fails_on_a_misplaced_class() -> None:
    assert len(misplaced([TwoRoots, MappedByAncestor])) == 2  # tests is no layer: its classes are misplaced
    TwoRoots.__module__ = "indexer.planted"
    try:
        assert misplaced([TwoRoots]) == ["indexer.planted.TwoRoots is under ['ModelError', 'IndexerError'], "
                                         "not its layer's root"]  # fmt: skip
    finally:
        TwoRoots.__module__ = __name__


PLANTED_ROUTE = """
import json
from fastapi import HTTPException
from indexer import errors
from indexer.errors import InvalidInput

def handler():
    try:
        pass
    except json.JSONDecodeError:
        pass  # not a domain error: fine
    except (ValueError, InvalidInput):
        raise HTTPException(422, "mapped here")
    except errors.NotFoundError:
        pass
    except Exception:
        pass
    except:
        pass
"""


def test_the_route_check_fails_on_a_route_that_maps_errors() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(PLANTED_ROUTE, "planted", "exec"), namespace)
    found = domain_catches(PLANTED_ROUTE, namespace)
    assert found == [
        "line 12: except InvalidInput catches domain errors",
        "line 13: HTTPException (raise the domain error instead)",
        "line 14: except errors.NotFoundError catches domain errors",
        "line 16: except Exception catches domain errors",
        "line 18: bare except",
    ]


# -- the one handler answers from the table -----------------------------------------------------
@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (StoreMismatch("the log does not belong to this metadata store"), 500, "store_mismatch", None),
        (QueueFull("text@1", retry_after=2.6), 429, "overloaded", "3"),
        (StoreUnavailable("redis is down"), 503, "store_unavailable", "1"),
        (MigrationRefused("not compatible"), 409, "migration_refused", None),
        (JobNotFound("j1"), 404, "job_not_found", None),
        (TrainingError("bad config"), 422, "training_error", None),
        (Unmapped("a bug: no entry"), 500, "indexer_error", None),
    ],
)
def test_the_handler_answers_every_layer(error: ERSError, status: int, code: str, retry_after: str | None) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fail")
    def fail() -> None:
        raise error

    r = TestClient(app).get("/fail")
    assert r.status_code == status
    assert r.json() == {"error": {"code": code, "message": error.message}}
    assert r.headers.get("retry-after") == retry_after
