"""Named baselines: a name for one sweep, saved by `farm baseline save` and compared with by `farm diff --baseline`."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.store import schema


class BaselineExists(Exception):
    """The name is taken (by another sweep) and the caller did not ask to move it."""


def save_baseline(s: Session, name: str, sweep_id: int, *, replace: bool = False) -> schema.Baseline:
    """Name `sweep_id` `name`; a name already given to another sweep moves only with `replace`."""
    found = s.scalars(select(schema.Baseline).where(schema.Baseline.name == name)).first()
    if found is not None and found.sweep_id != sweep_id and not replace:
        raise BaselineExists(f"baseline {name!r} already names sweep {found.sweep_id}")
    if found is None:
        found = schema.Baseline(name=name, sweep_id=sweep_id)
        s.add(found)
    else:
        found.sweep_id = sweep_id
        found.created_at = schema.utcnow()
    s.flush()
    return found
