"""The latency table an ``ofa run`` uses: a finished one, a given or shipped one verified on
the target (``deploy/verify.py``), or one built there, with its block models converted in the
background while training runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploy.ontarget.runtimes import TimingProtocol, times_files
from ofa.fileio import atomic_write_json
from ofa.lifetime import default_jobs
from ofa.pipeline.config import RunConfig, log
from search.latency_table import LatencyTable, TableError

__all__ = ["find_shipped_table", "auto_budgets", "run_table", "table_path",
           "planned_space", "start_block_conversion"]


def find_shipped_table(space, runtime: str, threads: int, folder: Path | None = None,
                       precision: str = "fp32") -> LatencyTable | None:
    """A table for this space/runtime/threads/precision that covers every resolution of
    ``space``, from ``folder`` or the tables shipped in the ``latency_tables`` package (read
    with importlib.resources, so an installed wheel finds them too); one measured on this
    CPU model first, one with probe data first. None when there is none. Whether it holds
    here is decided by measuring (:func:`deploy.verify.verify_table`), not by its CPU model.
    """
    from deploy.ontarget.facts import machine_facts

    cpu = machine_facts()["cpu_model"]
    found = []
    with _candidates(folder) as paths:
        for p in paths:
            try:
                t = LatencyTable.load(p, space=space, resolutions=list(space.resolutions),
                                      precision=precision, runtime=runtime, threads=threads)
            except TableError:
                continue
            if t.space.get("resolutions"):
                found.append(t)
    found.sort(key=lambda t: (not t.probe, t.context["machine"].get("cpu_model") != cpu))
    return found[0] if found else None


@contextmanager
def _candidates(folder: Path | None) -> Iterator[list[Path]]:
    if folder is None:
        from latency_tables import shipped_tables

        with shipped_tables() as paths:
            yield paths
    else:
        yield sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []


def auto_budgets(lat, space, n: int = 3) -> list[float]:
    """``n`` latency budgets (ms) spread evenly strictly between the smallest and the
    largest subnet's predicted latency."""
    lo = min(lat.predict_many([space.min_subnet(r) for r in space.resolutions]))
    hi = max(lat.predict_many([space.max_subnet(r) for r in space.resolutions]))
    return [round(float(lo + (hi - lo) * (i + 1) / (n + 1)), 4) for i in range(n)]


def run_table(rc: RunConfig, space) -> LatencyTable:
    """This run's latency table (``runs/<name>/latency_table.json``): done already, or a
    given (``--table``) or shipped one verified on the target (:func:`deploy.verify.
    verify_table`: kept, adapted or, failing both, rebuilt), or one built on the target."""
    from deploy.lut import build_table

    path = table_path(rc)
    try:
        t = LatencyTable.load(path, space=space, resolutions=list(space.resolutions),
                              runtime=rc.deploy.runtime, threads=rc.deploy.threads,
                              precision=rc.deploy.precision)
        log(f"latency table: done ({path})")
        return t
    except TableError:
        pass
    target = None
    if rc.deploy.target != "local":  # exported here, timed there in batches (resumable)
        from deploy.targets import parse_target, start_in_background

        target = parse_target(rc.deploy.target, **rc.deploy.target_options)
        start_in_background(target, rc.deploy.runtime)
    given = None
    if rc.table.path:
        given = LatencyTable.load(rc.table.path, space=space, resolutions=list(space.resolutions),
                                  runtime=rc.deploy.runtime, threads=rc.deploy.threads,
                                  precision=rc.deploy.precision)
    elif rc.deploy.target == "local":
        given = find_shipped_table(space, rc.deploy.runtime, rc.deploy.threads,
                                   Path(rc.table.tables_dir) if rc.table.tables_dir else None,
                                   rc.deploy.precision)
    if given is not None:
        t = _verified(rc, space, given, target, path)
        if t is not None:
            return t
    log(f"latency table: measuring every block shape ({rc.deploy.runtime}, {rc.deploy.precision}, "
         f"{rc.deploy.threads} thread(s)) on {rc.deploy.target}")
    return build_table(space, sorted(space.resolutions), rc.deploy.runtime, path,
                       threads=rc.deploy.threads,
                       protocol=TimingProtocol(**rc.table.protocol), calib=rc.table.calib,
                       seed=rc.train.seed, target=target, precision=rc.deploy.precision,
                       jobs=default_jobs())


def _verified(rc: RunConfig, space, given: LatencyTable, target, path: Path):
    """``given`` checked on the target with ``rc.table.calib + 2`` subnets measured beside
    the probe; the kept or adapted table saved as this run's (its verdict in
    ``table_verification.json``), or None when it must be rebuilt."""
    from deploy.verify import verify_table

    log(f"latency table: verifying {Path(given.source).name} on {rc.deploy.target} with "
         f"{max(4, rc.table.calib + 2)} subnets measured beside the probe")
    v = verify_table(given, space, k=max(4, rc.table.calib + 2), seed=rc.train.seed + 4321,
                     target=target, jobs=default_jobs(), where=rc.deploy.target)
    log(v.line())
    atomic_write_json(rc.folder / "table_verification.json",
                      {**v.details, "table": given.source})
    if v.action == "rebuild":
        return None
    t = v.table
    t.context = {**t.context, "verified_from": given.source}
    t.save(path)
    t.source = str(path)
    return t


def table_path(rc: RunConfig) -> Path:
    return rc.folder / ("latency_table.json" if rc.deploy.precision == "fp32"
                        else f"latency_table_{rc.deploy.precision}.json")


def _convert_blocks_in_background(space: dict[str, Any], runtime: str, out: str,
                                  precision: str, calib: int, seed: int, parent: int) -> None:
    """The background process of :func:`start_block_conversion` (spawned: plain
    arguments): at the lowest priority, so that training keeps the cores it uses. The table
    step stops it with SIGKILL, which ends it at once: its files are written atomically
    (:func:`ofa.fileio.atomic_write`; a killed conversion's temp file is removed by the
    build), and it holds no semaphore (tqdm's lock is a thread lock here) to leak."""
    import os
    import threading

    import torch
    from tqdm import tqdm

    from deploy.lut import convert_blocks
    from ofa.lifetime import worker_lifetime
    from ofa.space import SearchSpace

    worker_lifetime(parent=parent)  # ends with the run, even a SIGKILLed one; group signals
    # are the run's
    tqdm.set_lock(threading.RLock())
    os.nice(19)
    torch.set_num_threads(1)
    sp = SearchSpace.from_dict(space)
    convert_blocks(sp, sorted(sp.resolutions), runtime, out, precision, jobs=1, calib=calib,
                   seed=seed, progress=False)


def planned_space(rc: RunConfig, reused: Any):
    """The space this run's supernet has: the reused run's, this run's finished supernet's,
    or the one training will build (:class:`ofa.train.trainer.Trainer`: the preset, the
    dataset's class count, ``--resolutions``), known before any training step."""
    from ofa.data import load_dataset
    from ofa.space import get_space
    from ofa.train.run import RUN_JSON, load_run

    if reused is not None:
        return reused[0].space
    if (rc.folder / "supernet" / RUN_JSON).exists():
        return load_run(rc.folder / "supernet")[0].space
    over = {"resolutions": list(rc.resolutions)} if rc.resolutions else {}
    classes = load_dataset(rc.train.dataset, rc.train.data, seed=rc.train.seed).num_classes
    return get_space(rc.train.space, num_classes=classes, **over)


def start_block_conversion(rc: RunConfig, reused: Any) -> Any:
    """When this run will build its latency table here, start converting the table's
    block models (:func:`deploy.lut.convert_blocks`) in a background process now,
    beside training and the accuracy predictor: conversions need no quiet machine, only the
    timing does, and a LiteRT table's 288 digits blocks take ~4 min of conversion on 2
    cores. The table step stops it and converts what is left (here or, for a device
    target, before sending the blocks there). Returns the process, or None when no table
    will be built (a given or finished table, the torch runtime, a shipped table of this
    CPU for a local run)."""
    import multiprocessing as mp

    path = table_path(rc)
    if rc.table.path or not times_files(rc.deploy.runtime) or path.exists():
        return None
    space = planned_space(rc, reused)
    if rc.deploy.target == "local" and find_shipped_table(
            space, rc.deploy.runtime, rc.deploy.threads,
            Path(rc.table.tables_dir) if rc.table.tables_dir else None,
            rc.deploy.precision) is not None:
        return None
    proc = mp.get_context("spawn").Process(
        target=_convert_blocks_in_background, daemon=True,
        args=(space.to_dict(), rc.deploy.runtime, str(path), rc.deploy.precision, rc.table.calib,
              rc.train.seed, os.getpid()))
    proc.start()
    log(f"latency table: converting its block models in the background ({rc.deploy.runtime}, "
         f"{rc.deploy.precision})")
    return proc
