"""The zoo: fixed specs of the paper models and timm's variants, shipped inside the package (package data), so
``pip install .`` and a wheel have them as an editable install does. ``spaces/zoo`` in a checkout is a link here.

A zoo name (``resnest50d``) is accepted wherever a spec file is: ``create_model('resnest50d')``, ``search compile
resnest50d``, ``search train resnet18_small``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

ZOO = Path(__file__).resolve().parent


def names() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(p.stem for p in ZOO.glob("*.yaml"))


def path_of(name: str) -> Optional[Path]:
    """The spec file of zoo model ``name``, or None when ``name`` is not one (a path, a typo)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = ZOO / f"{name}.yaml"
    return path if path.is_file() else None
