"""The one checkpoint format: per-rank parts, a commit pointer, RNG states and the configuration.

Layout of ``<run>/checkpoints/`` (``label`` is ``epoch`` for training loops, e.g. ``iter`` for
long solves)::

    epoch_0003/part0.pt ... part<P-1>.pt   one per writing process: {"format", "index", "part",
                                           "parts", "state": {...}, "rng": {...}}
    epoch_0003/meta.pt                     written after every part: {"format", "index", "parts",
                                           "config", "extra", "version"}
    latest                                 the text "epoch_0003": the commit point

Guarantees:

* every file is written atomically (temporary file, ``fsync``, ``os.replace``), so a reader
  sees a whole file or none;
* a checkpoint counts once ``latest`` names it, and rank 0 writes ``latest`` only after every
  part is on disk (the caller's barrier or protocol, then :meth:`Checkpoints.commit` checks the
  files); the newest ``keep`` checkpoints are kept so a damaged one has a predecessor;
* loading never runs code from a file: ``torch.load(..., weights_only=True)`` only, so RNG states
  and configurations are stored as tensors and plain types;
* :meth:`Checkpoints.find_latest` checks a checkpoint fully (meta and every part readable, all
  of the same index and count) before it is used; a garbled pointer, a missing, truncated,
  zero-byte or random-bytes file, or a part from another checkpoint is named in one line
  (:attr:`Found.notes`) and the newest complete checkpoint is used instead; when checkpoints
  exist but none is complete, :class:`CheckpointError` refuses (never a silent fresh start);
* :meth:`Checkpoints.agree` makes every rank load the same checkpoint: rank 0 decides and
  broadcasts its choice (or its refusal, which every rank then raises);
* :func:`check_config` refuses to resume a run made with other settings and names them.

Several processes write to one folder, so under torchrun on several machines the run folder must
be on a file system that every machine sees (e.g. NFS), as usual for torchrun checkpoints.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchpint.errors import ConfigError

__all__ = [
    "CheckpointError",
    "Checkpoints",
    "Found",
    "check_config",
    "config_differences",
    "rng_state",
    "save_atomic",
    "set_rng_state",
]

FORMAT = 1
POINTER = "latest"


class CheckpointError(ConfigError):
    """No usable checkpoint where one was expected; the message says what is wrong with each."""


# ---------------------------------------------------------------------------- files
def _fsync_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    _fsync_replace(tmp, path)


def load_safe(path: str | Path) -> Any:
    """``torch.load`` that never executes code from the file (``weights_only=True``), onto the CPU.

    torch warns when a file was pickled with another protocol than its own writer's (as a file
    crafted to run code typically is) before it refuses it; the refusal is reported in one line
    by the caller, so that warning would only be noise on top of it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    if "weights_only" in str(error) or "Weights only load failed" in str(error):
        first = "it holds objects other than tensors and plain types (refused unread)"
    return first[:160]


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """This process's random states (torch CPU and CUDA, numpy, Python ``random``) as tensors."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached),
        "python_version": int(version), "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_mt"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# ---------------------------------------------------------------------------- configuration
def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """``"lr (0.1 there, 0.2 now)"`` for each of ``keys`` (default: all of ``current``) that differs."""
    missing = object()
    out = []
    for key in keys if keys is not None else current:
        there, now = saved.get(key, missing), current.get(key, missing)
        if there != now:
            out.append(f"{key} ({'unset' if there is missing else repr(there)} there, "
                       f"{'unset' if now is missing else repr(now)} now)")
    return out


def check_config(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str] | None, where: Path) -> None:
    """Refuse (:class:`~torchpint.errors.ConfigError`, one line) to resume with other settings."""
    changed = config_differences(saved, current, keys)
    if changed:
        raise ConfigError(f"--resume: the run in {where} was made with different settings: {', '.join(changed)}; "
                          f"use them again, or start a new run (--overwrite or another --out)")


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class Found:
    """A complete checkpoint chosen for loading; ``notes``: one line per damaged one passed over."""

    index: int
    folder: Path
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    _parts: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta.get("config") or {})

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.meta.get("extra") or {})

    @property
    def parts(self) -> int:
        return int(self.meta["parts"])


class Checkpoints:
    """The checkpoints of one run folder (``root`` is ``<run>/checkpoints``).

    Writing, with a barrier (layer-parallel, mgrit-train, :func:`torchpint.run.fit`)::

        ckpt.save(index, state, config=cfg, rank=r, parts=P, barrier=dist.barrier)

    or, where a protocol already orders the writes (paranet's hub tells each worker to write):
    every writer calls :meth:`write_part`, then rank 0 calls :meth:`commit`.  Reading::

        found = ckpt.agree()          # collective when a process group exists; None: no checkpoint
        part = ckpt.load_part(found, r)  # {"state": ..., "rng": ...}; set_rng_state(part["rng"])
    """

    def __init__(self, root: str | Path, *, label: str = "epoch", keep: int = 2) -> None:
        if not re.fullmatch(r"[a-z]+", label):
            raise ValueError(f"checkpoint label must be lowercase letters, got {label!r}")
        self.root = Path(root)
        self.label = label
        self.keep = max(1, keep)
        self._pattern = re.compile(rf"{label}_(\d{{4,}})")

    def folder(self, index: int) -> Path:
        return self.root / f"{self.label}_{index:04d}"

    # -------------------------------------------------------------- writing
    def write_part(self, index: int, part: int, parts: int, state: Mapping[str, Any], *, rng: bool = True) -> None:
        """Write process ``part``'s piece of checkpoint ``index`` (of ``parts``), with its RNG states."""
        payload = {"format": FORMAT, "index": index, "part": part, "parts": parts, "state": dict(state),
                   "rng": rng_state() if rng else None}
        save_atomic(payload, self.folder(index) / f"part{part}.pt")

    def commit(self, index: int, parts: int, *, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Path:
        """Rank 0, after every part is written: write ``meta.pt``, then the pointer; drop old ones."""
        from torchpint import __version__

        folder = self.folder(index)
        missing = [p for p in range(parts) if not (folder / f"part{p}.pt").is_file()]
        if missing:
            raise RuntimeError(f"checkpoint {folder} lacks the parts of processes {missing}; not committed")
        save_atomic({"format": FORMAT, "index": index, "parts": parts, "config": dict(config),
                     "extra": dict(extra or {}), "version": __version__}, folder / "meta.pt")
        tmp = self.root / f".{POINTER}.tmp"
        tmp.write_text(folder.name + "\n")
        _fsync_replace(tmp, self.root / POINTER)  # the checkpoint counts from here on
        kept = sorted(self._indices(), reverse=True)
        for old in kept[self.keep :]:
            if old < index:
                shutil.rmtree(self.folder(old), ignore_errors=True)
        return folder

    def save(
        self,
        index: int,
        state: Mapping[str, Any],
        *,
        config: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
        rank: int = 0,
        parts: int = 1,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        """Every writing process: its part; ``barrier``; rank 0 commits (then ``barrier`` again)."""
        self.write_part(index, rank, parts, state)
        if barrier is not None:
            barrier()
        if rank == 0:
            self.commit(index, parts, config=config, extra=extra)
        if barrier is not None:
            barrier()  # nobody goes on (and may die) believing a checkpoint exists before it does

    # -------------------------------------------------------------- reading
    def _indices(self) -> list[int]:
        if not self.root.is_dir():
            return []
        out = []
        for entry in self.root.iterdir():
            m = self._pattern.fullmatch(entry.name)
            if m and entry.is_dir():
                out.append(int(m.group(1)))
        return out

    def _check(self, index: int, found_parts: dict[int, dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
        """(meta, None) when checkpoint ``index`` is complete and readable, else (None, why not)."""
        folder = self.folder(index)
        name = f"{self.root.name}/{folder.name}"
        try:
            meta = load_safe(folder / "meta.pt")
        except FileNotFoundError:
            return None, f"{name} is incomplete (no meta.pt: it was never committed)"
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
            return None, f"{name}/meta.pt is unreadable ({_describe(error)})"
        if not isinstance(meta, dict) or meta.get("index") != index or not isinstance(meta.get("parts"), int):
            return None, f"{name}/meta.pt does not describe checkpoint {index}"
        for p in range(meta["parts"]):
            path = folder / f"part{p}.pt"
            try:
                part = load_safe(path)
            except FileNotFoundError:
                return None, f"{name}/part{p}.pt is missing"
            except Exception as error:  # noqa: BLE001
                size = path.stat().st_size if path.exists() else 0
                kind = "empty (0 bytes)" if size == 0 else f"unreadable ({_describe(error)})"
                return None, f"{name}/part{p}.pt is {kind}"
            if not isinstance(part, dict) or part.get("index") != index or part.get("part") != p:
                other = part.get("index") if isinstance(part, dict) else "?"
                return None, f"{name}/part{p}.pt belongs to checkpoint {other}, not {index} (parts of different epochs)"
            found_parts[p] = part
        return meta, None

    def find_latest(self) -> Found | None:
        """The newest complete checkpoint (see the module's guarantees); ``None`` if there are none.

        Raises :class:`CheckpointError` when checkpoints exist but none is complete.
        """
        notes: list[str] = []
        order = sorted(self._indices(), reverse=True)
        pointer = self.root / POINTER
        if pointer.exists():
            text = pointer.read_bytes()[:64].decode("utf-8", "replace").strip()
            m = self._pattern.fullmatch(text)
            if m is None or int(m.group(1)) not in order:
                notes.append(f"{self.root.name}/{POINTER} is garbled or names no checkpoint ({text[:40]!r})")
            else:  # the pointer is the commit point: newer folders were never committed
                named = int(m.group(1))
                order = [named] + [i for i in order if i < named]
        elif order:
            notes.append(f"{self.root.name}/{POINTER} is missing")
        for index in order:
            parts: dict[int, dict[str, Any]] = {}
            meta, problem = self._check(index, parts)
            if meta is not None:
                return Found(index, self.folder(index), meta, notes, parts)
            notes.append(str(problem))
        if order or pointer.exists():
            raise CheckpointError(f"no complete checkpoint in {self.root}: {'; '.join(notes)}; nothing was changed")
        return None

    def agree(self, group: Any = None) -> Found | None:
        """:meth:`find_latest` decided on rank 0 and the same answer on every rank of ``group``.

        Collective when ``torch.distributed`` is initialised (every rank of ``group`` calls it);
        a refusal on rank 0 is raised on every rank, so no rank waits for a peer that gave up.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self.find_latest()
        root_rank = dist.get_global_rank(group, 0) if group is not None else 0
        found: Found | None = None
        message: list[Any] = [None]
        if dist.get_rank() == root_rank:
            try:
                found = self.find_latest()
                message = [("ok", None if found is None else found.index, None if found is None else found.notes)]
            except CheckpointError as error:
                message = [("error", str(error), None)]
        dist.broadcast_object_list(message, src=root_rank, group=group)
        status, value, notes = message[0]
        if status == "error":
            raise CheckpointError(value)
        if dist.get_rank() == root_rank or value is None:
            return found
        meta = load_safe(self.folder(value) / "meta.pt")
        return Found(int(value), self.folder(value), meta, list(notes))

    def load_part(self, found: Found, part: int) -> dict[str, Any]:
        """Part ``part`` of ``found``: ``{"state": ..., "rng": ...}`` (checked again where not cached)."""
        if part in found._parts:
            return found._parts[part]
        path = found.folder / f"part{part}.pt"
        try:
            data = load_safe(path)
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(f"{path} became unreadable ({_describe(error)})") from None
        if not isinstance(data, dict) or data.get("index") != found.index:
            raise CheckpointError(f"{path} does not belong to checkpoint {found.index}")
        return data
