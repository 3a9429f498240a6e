"""What the route modules share: settings, the plant model, the pool and entity look-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from fastapi import HTTPException, Request
from psycopg_pool import AsyncConnectionPool

from oee_stream.config import Machine, Plant
from oee_stream.storage import edits

ENTITY_KINDS: tuple[str, ...] = ("machine", "line", "area", "site")
CALENDAR_WINDOWS: tuple[str, ...] = ("shift", "day", "week", "hour")


def allowed_windows(plant: Plant) -> list[str]:
    """Window kinds the API accepts in `?window=`: the plant's rolling windows, then the calendar ones."""
    names = [w.name for w in plant.rolling_windows]
    return names + [w for w in CALENDAR_WINDOWS if w not in names]


@dataclass
class Ctx:
    settings: Any  # ApiSettings (not imported: app.py imports this module)
    plant: Plant
    allowed_windows: list[str]
    members: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (kind, id) -> machine ids
    cache: Any = None  # LiveCache | None (api.cache imports this module's neighbours)
    verifier: Any = None  # KeyVerifier | None
    _machines: dict[str, Machine] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = self.plant
        self._machines = {m.id: m for m in p.machines}
        for line in p.lines:
            ids = [m.id for m in line.machines]
            self.members[("line", line.id)] = ids
            self.members.setdefault(("area", line.area), []).extend(ids)
            for m in ids:
                self.members[("machine", m)] = [m]
        self.members[("site", p.site.id)] = [m.id for m in p.machines]

    def live(self) -> Any:
        """The live cache when it is fresh (the live routes then need no database), else None."""
        c = self.cache
        return c if c is not None and c.fresh() else None

    @property
    def members_machine(self) -> dict[str, Machine]:
        """Machines by id."""
        return self._machines

    @property
    def machine_ids(self) -> list[str]:
        return [m.id for m in self.plant.machines]

    def pool(self, request: Request) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = request.app.state.pool
        return pool

    def connection(self, request: Request) -> Any:
        return self.pool(request).connection(timeout=self.settings.request_timeout_s)

    def machine(self, machine_id: str) -> Machine:
        try:
            return self._machines[machine_id]
        except KeyError:
            raise HTTPException(
                404, f"unknown machine {machine_id!r}; known machines: {self.machine_ids}"
            ) from None

    def entity(self, entity_id: str, kind: str | None) -> tuple[str, str]:
        """(kind, id) of an entity; a line and an area may share an id, then `kind` must say which."""
        if kind is not None and kind not in ENTITY_KINDS:
            raise HTTPException(422, f"unknown kind {kind!r}; allowed: {list(ENTITY_KINDS)}")
        found = [k for k in ENTITY_KINDS if (k, entity_id) in self.members and kind in (None, k)]
        if not found:
            known = {k: sorted({i for kk, i in self.members if kk == k}) for k in ENTITY_KINDS}
            raise HTTPException(404, f"unknown entity {entity_id!r}" + (f" of kind {kind}" if kind else "")
                                + f"; known: {known}")
        if len(found) > 1:
            raise HTTPException(
                422, f"{entity_id!r} is both a {' and a '.join(found)}; add ?kind={found[0]} or ?kind={found[1]}"
            )
        return found[0], entity_id

    async def targets(self, conn: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, float]]:
        """Targets set with PUT /api/v1/admin/config/targets: machine id -> {"units_per_hour", "target_oee"},
        only the keys that are set (empty when none are configured). They take precedence over the
        plant file's `target_oee`."""
        cfg = await edits.latest_config(conn, "targets")
        if cfg is None:
            return {}
        return {m: {k: float(v[k]) for k in ("units_per_hour", "target_oee") if v.get(k) is not None}
                for m, v in cfg[1].items()}

    def target_oee(self, machine: Machine, configured: dict[str, dict[str, float]]) -> float | None:
        """The machine's OEE target: the API configuration's, else the plant file's, else None."""
        return configured.get(machine.id, {}).get("target_oee", machine.target_oee)

    def default_reason_tree(self, machine: Machine | None = None) -> dict[str, list[str]]:
        """`ApiSettings.reason_tree`, else derived from the plant's state tables: category = the time class
        of the stop (planned_stop / unplanned_stop), reasons = the reasons mapped to it. With `machine`:
        only its own state table's reasons (a press reason is no furnace reason); a machine without a
        state table (run bit, counts) gets the whole plant's."""
        if self.settings.reason_tree:
            return {k: list(v) for k, v in self.settings.reason_tree.items()}
        tables = list(self.plant.state_tables.values())
        if machine is not None and machine.state_table in self.plant.state_tables:
            own = self._tree_of([self.plant.state_tables[machine.state_table]])
            if own:
                return own
        return self._tree_of(tables)

    @staticmethod
    def _tree_of(tables: list[Any]) -> dict[str, list[str]]:
        tree: dict[str, list[str]] = {}
        for table in tables:
            for code in table.values():
                if code.reason and code.time_class in ("planned_stop", "unplanned_stop"):
                    bucket = tree.setdefault(code.time_class, [])
                    if code.reason not in bucket:
                        bucket.append(code.reason)
        return tree

    async def reason_tree(self, conn: psycopg.AsyncConnection[Any],
                          machine: Machine | None = None) -> tuple[dict[str, list[str]], str]:
        """(category -> reasons, where it came from): the API configuration's `reason_tree` when set,
        else `ApiSettings.reason_tree`, else the plant's state tables (only `machine`'s when given). The
        first two are plant-wide: they name no machines."""
        cfg = await edits.latest_config(conn, "reason_tree")
        if cfg is not None:
            return {k: list(v) for k, v in cfg[1].items()}, f"api_config v{cfg[0]}"
        return self.default_reason_tree(machine), "settings" if self.settings.reason_tree else "plant state tables"

    def tz_name(self, kind: str, entity_id: str) -> str:
        """The zone of the entity's calendar windows (the engine buckets hours and days in it)."""
        first = self.members[(kind, entity_id)][0]
        return self.plant.calendars[self.plant.machine(first).calendar].timezone
