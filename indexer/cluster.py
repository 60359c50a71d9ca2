"""`pixsearch index --ray`: the planned files read and embedded on a Ray cluster.

This process (the driver) scans, plans and writes as in a local run; Ray Data reads and
decodes the files on the workers (tasks), embeds them in `map_batches` over an actor pool (one
encoder per actor), and streams the results back here in batches. Ray is imported only here,
and only when a run has files to read.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.cluster_work import Embedder, KnownContent, meta_from_json, read_batch
from indexer.errors import ClusterUnavailable
from indexer.types import Embeddings, Failure, Job, Prepared

if TYPE_CHECKING:
    from indexer.encoder import Preprocess
    from indexer.settings import Settings

log = logging.getLogger(__name__)

#: Seconds to wait for a cluster's address to answer before saying it does not.
CONNECT_TIMEOUT = 5.0
#: Most CPUs one embedding actor takes: past this, more actors use a node better than more
#: threads in one (and a lost actor loses less work).
MAX_ACTOR_CPUS = 4
#: Memory reserved per read task (bytes).
READ_MEMORY = 256 << 20
#: Files per read task: what a killed worker loses at most, per task it was running.
FILES_PER_TASK = 16
INSTALL_HINT = (
    "--ray needs Ray: install pixsearch with its `ray` extra "
    "(`uv sync --extra ray`, or `pip install 'pixsearch[ray]'`)"
)

#: One batch of results: the files done (prepared, or failed), and the vectors of those the
#: workers decoded, by content hash.
Results = tuple[list[Prepared | Failure], dict[str, Embeddings]]


@dataclass(frozen=True, slots=True)
class Pool:
    """How the embedding actors are laid out on the cluster."""

    actors: int
    cpus: float  # per actor, also its torch threads
    gpus: int  # per actor: 0 or 1
    read_cpus: float  # per read task


def plan_pool(cpus: float, gpus: float, smallest_node: float, wanted: int = 0) -> Pool:
    """Actors for a cluster of `cpus` CPUs and `gpus` GPUs, whose smallest node has
    `smallest_node` CPUs: one GPU actor per GPU, or CPU actors on all CPUs but one (left to
    the read tasks), at least one actor."""
    if cpus < 2:  # one CPU: reading and embedding must share it, or neither could start
        return Pool(1, 0.5, 0, 0.5)
    # More actors than the cluster can place would never start, and the run would wait.
    if gpus >= 1:
        return Pool(min(wanted, int(gpus)) if wanted else int(gpus), 1, 1, 1)
    usable = max(1, int(cpus) - 1)
    per_actor = max(1, min(MAX_ACTOR_CPUS, usable, int(smallest_node) or 1))
    if wanted:
        wanted = min(wanted, usable)
        per_actor = max(1, min(per_actor, usable // wanted))
    return Pool(wanted or max(1, usable // per_actor), per_actor, 0, 1)


class Cluster:
    """A Ray cluster to index on: `auto`, `local`, `host:port` or `ray://host:port`."""

    def __init__(self, address: str) -> None:
        try:
            found = importlib.util.find_spec("ray") is not None
        except (ImportError, ValueError):  # a broken or blocked install
            found = False
        if not found:
            raise ClusterUnavailable(INSTALL_HINT)
        self.address = address.strip()
        if not self.address:
            raise ClusterUnavailable("the Ray address is empty: use auto, local or host:port")
        if self.address not in ("auto", "local"):
            # At once, even when the run turns out to have nothing to read: a wrong address
            # is said before the scan, not in a later run.
            _check_answers(self.address)

    def connect(self) -> None:
        """Join (or, for `local`, start) the cluster; one clear error if that fails."""
        # Ray, started under `uv run`, would have every worker run `uv run` in a copy of this
        # folder: minutes of start-up, and not the environment the cluster's nodes run.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        if not log.isEnabledFor(logging.INFO):
            # Ray's core prints its internal warnings on this terminal; the run's own
            # failures come through as exceptions (one line each).
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        if self.address != "local":
            _use_token_if_any()  # read when Ray is imported
        import ray

        if ray.is_initialized():
            return
        options: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.ERROR,
            # The workers' output would go through this terminal; their failures reach the
            # summary (a file's error) or one line (the run's), so it stays off unless -v.
            "log_to_driver": log.isEnabledFor(logging.INFO),
            "configure_logging": True,
        }
        if self.address != "local":
            options["address"] = self.address
        try:
            ray.init(**options)
        except ConnectionError as exc:
            # An address that answered (`_check_answers`) but refused us: most often the token.
            hint = (
                " (a cluster started by `ray start` also needs its token here: RAY_AUTH_TOKEN, "
                "or the file ~/.ray/auth_token copied from its head node)"
                if self.address not in ("auto", "local")
                else ""
            )
            raise ClusterUnavailable(
                f"cannot join the Ray cluster at {self.address}: {_first_line(exc)}{hint}"
            ) from None
        except RuntimeError as exc:
            raise join_error(self.address, exc) from None
        resources = ray.cluster_resources()
        log.info("joined the Ray cluster at %s: %s", self.address, resources)

    def pool(self, wanted: int) -> Pool:
        """The actor pool for this cluster's resources."""
        import ray

        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        smallest = min((n["Resources"].get("CPU", 0.0) for n in nodes), default=1.0)
        return plan_pool(resources.get("CPU", 1.0), resources.get("GPU", 0.0), smallest, wanted)

    def embed(
        self,
        jobs: list[Job],
        embedded: set[str],
        preprocess: Preprocess,
        settings: Settings,
        cpu_precision: str | None = None,
    ) -> Iterator[Results]:
        """Read and embed `jobs` on the cluster; their results as they come back, in batches.

        `cpu_precision`: what CPU actors run when the settings say `auto` (the driver's
        calibrated choice; GPU actors choose their own)."""
        import ray
        import ray.data

        self.connect()
        logging.getLogger("ray.data").setLevel(
            logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.ERROR
        )
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # pixsearch draws its own
        context.print_on_execution_start = False
        pool = self.pool(settings.ray_actors)
        log.info("embedding on %s", pool)
        # Ray Data ships the stage's arguments to the workers once, with the stage itself.
        known = KnownContent.keys_of(embedded)
        rows = [{"idx": i, "path": job.entry.path} for i, job in enumerate(jobs)]
        blocks = max(1, -(-len(rows) // FILES_PER_TASK))
        ds = (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(
                read_batch,  # type: ignore[arg-type]  # its keyword arguments come in fn_kwargs
                batch_size=None,
                batch_format="numpy",
                fn_kwargs={
                    "known": known,
                    "preprocess": preprocess,
                    "max_pixels": settings.max_image_pixels,
                },
                num_cpus=pool.read_cpus,
                # Bounds the decodes running at once on a node (a large photo takes hundreds
                # of MB while decoded); it also keeps reading out of the embedding actors
                # (Ray Data would fuse stages of equal resources), so both stages overlap.
                memory=READ_MEMORY,
            )
            .map_batches(
                Embedder,
                batch_size=settings.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=pool.actors),
                fn_constructor_kwargs={
                    "model": _absolute(settings.model),
                    "pretrained": _absolute(settings.pretrained),
                    "device": settings.device,
                    "precision": (
                        cpu_precision
                        if settings.precision == "auto" and cpu_precision and not pool.gpus
                        else settings.precision
                    ),
                    "threads": max(1, int(pool.cpus)),
                },
                num_cpus=pool.cpus,
                num_gpus=pool.gpus or None,
            )
        )
        try:
            for batch in ds.iter_batches(batch_size=settings.batch_size, batch_format="numpy"):
                yield _results(batch, jobs)
        except ClusterUnavailable:
            raise
        except Exception as exc:  # Ray's many kinds: a lost node, a dead driver connection
            log.debug("the Ray run failed", exc_info=True)
            raise ClusterUnavailable(
                f"the Ray cluster failed: {_first_line(exc)}; what was written is kept, run "
                "the same command again to continue"
            ) from None


def _results(batch: dict[str, np.ndarray], jobs: list[Job]) -> Results:
    done: list[Prepared | Failure] = []
    fresh: dict[str, Embeddings] = {}
    for i, idx in enumerate(batch["idx"]):
        job = jobs[int(idx)]
        error = str(batch["error"][i])
        if error:
            done.append(Failure(job.entry.path, error))
            continue
        digest = str(batch["digest"][i])
        meta = str(batch["meta"][i])
        done.append(Prepared(job, digest, meta_from_json(meta) if meta else None))
        if batch["has_pixels"][i]:
            fresh[digest] = np.asarray(batch["vector"][i], np.float32)
    return done, fresh


def _absolute(name: str) -> str:
    """A model or checkpoint given as a file, as an absolute path: workers run elsewhere."""
    path = Path(name).expanduser()
    return str(path.absolute()) if path.exists() else name


def _check_answers(address: str) -> None:
    """Fail at once, not after Ray's minute of retries, when nothing listens at `address`."""
    where = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnavailable(
            f"not a Ray address: {address!r} (use auto, local, host:port or ray://host:port)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        reason = exc.strerror or (
            f"no answer in {CONNECT_TIMEOUT:g} s" if isinstance(exc, TimeoutError) else str(exc)
        )
        raise ClusterUnavailable(f"no Ray cluster answers at {address}: {reason}") from None


def join_error(address: str, exc: RuntimeError) -> ClusterUnavailable:
    """Ray's error on joining a cluster as one line; its version mismatch says which versions."""
    text = str(exc)
    found = re.findall(r"Ray: (\S+)\s+Python: (\S+)", text)
    if text.startswith("Version mismatch") and len(found) == 2:
        (ray_there, py_there), (ray_here, py_here) = found
        return ClusterUnavailable(
            f"the Ray cluster at {address} runs Ray {ray_there} on Python {py_there}, this "
            f"machine Ray {ray_here} on Python {py_here}: install the same versions on both"
        )
    return ClusterUnavailable(f"cannot join the Ray cluster at {address}: {_first_line(exc)}")


def _use_token_if_any() -> None:
    """Join with Ray's authentication token when this machine has one: clusters started by
    `ray start` require it by default, but a joining process sends it only if told to."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
