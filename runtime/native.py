"""Finding bmamba's native libraries: the SSD kernel library (``runtime/cuda_scan.py``) and the
TensorRT plugin (``runtime/backend_trt.py``), by one rule.

In order: the path the user gave (``--plugin-lib``), else the environment variable (the file, a
folder holding it, or another bmamba library beside it), else the package's own folder
(``runtime/``), the CMake ``build/`` folder of a source checkout, and -- for libraries that
``cmake --install`` puts there -- the install prefix's ``lib/`` and the system loader. A path the
user named that does not exist is an error naming it, never silently replaced by another library.
Never the current directory and never a model folder: a native library runs with the user's
rights, so only the user or the installation chooses it.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent          # <package>/runtime (installed or checkout)


def _checkout_build() -> Path | None:
    """The build/ folder of a source checkout (pyproject.toml and CMakeLists.txt beside runtime/)."""
    root = PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "CMakeLists.txt").is_file():
        return root / "build"
    return None


def _from_env(name: str, env_var: str) -> Path | None:
    value = os.environ.get(env_var)
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        return path / name
    return path if path.name == name or not path.name.startswith("libbmamba") else path.parent / name


def library_candidates(name: str, env_var: str, *, install_prefixes: bool = False) -> list[Path]:
    """The places library ``name`` is looked for without an explicit path, in order."""
    places = [p for p in (_from_env(name, env_var),) if p is not None]
    places.append(PACKAGE / name)
    build = _checkout_build()
    if build is not None:
        places.append(build / name)
    if install_prefixes:
        for prefix in (Path(sys.prefix), Path("/usr/local")):
            places += [prefix / "lib" / name, prefix / "lib64" / name]
    return places


def find_library(name: str, env_var: str, *, explicit: str | os.PathLike | None = None,
                 install_prefixes: bool = False, error: type[Exception] = FileNotFoundError,
                 what: str = "library", hint: str = "") -> Path:
    """The path of library ``name`` (see the module docstring); raises ``error`` saying where it
    looked and ``hint`` (how to build or name it)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise error(f"{path}: no such {what}")
        return path
    named = _from_env(name, env_var)
    if named is not None:
        if not named.is_file():
            raise error(f"{env_var}={os.environ[env_var]}: no such {what} ({named})")
        return named
    candidates = library_candidates(name, env_var, install_prefixes=install_prefixes)
    for path in candidates:
        if path.is_file():
            return path
    if install_prefixes:
        system = ctypes.util.find_library(name[3:-3])     # libX.so -> X
        if system:
            return Path(system)
    looked = ", ".join(str(p.parent) for p in candidates)
    raise error(f"the {what} {name} was not found (looked in {looked}); {hint}")
