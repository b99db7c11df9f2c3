"""The orchestrator as one object: run configuration, dataset, coordinator,
TCPStore, checkpoints, chain view and metrics. ``orchestrator.app`` exposes it
over HTTP; ``python -m orchestrator`` builds it from flags.

A running service holds its state dir's lock (``orchestrator.rollback``), so an
owner's offline command never edits a live orchestrator's state. Generations
form with at least the run's Byzantine minimum of ranks
(``membership.effective_min_world_size``), and an uploaded state whose tensors
are not finite is refused (``orchestrator.state_check``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge

from template import wire as p
from template.chain.metagraph import MetagraphCache
from template.data.store import ShardStore
from template.net.auth import Authenticator, SqliteNonceStore
from template.net.tracking import Tracker
from template.wire.dataset import DatasetManifest

from . import membership
from .coordinator import Coordinator, Generation
from .replays import Payloads
from .rollback import lock_state_dir
from .runs import load_or_create_run
from .state_check import is_state, state_problem
from .store_host import StoreHost
from .store_tunnel import Current, StoreTunnel

log = logging.getLogger(__name__)


class CheckpointRefused(HTTPException):
    """An agreed state's upload whose content cannot be stored (a state with NaN/Inf, or one that claims
    the state format but cannot be read): 422 with the reason. An HTTPException so that the app's
    handler, which maps ValueError to 400 and LookupError to 409, lets it through as 422."""

    def __init__(self, reason: str):
        super().__init__(422, f"checkpoint refused: {reason}")


@dataclass
class Settings:
    state_dir: Path
    netuid: int
    training: p.TrainingConfig
    membership: p.MembershipConfig
    dataset_path: Optional[Path] = None
    dataset_max_bytes: int = 16 * 2**20
    shard_size: int = 2**20
    heldout_fraction: float = 0.05
    store_host: str = "127.0.0.1"
    store_port: int = 29500
    keep_checkpoints: int = 5
    max_checkpoint_bytes: int = 2**30
    max_body_bytes: int = 64 * 2**10
    tick_s: float = 1.0
    wandb_project: Optional[str] = None
    tensorboard_dir: Optional[Path] = None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.generation = Gauge("tensorswarm_generation", "current generation id (-1: none)", registry=r)
        self.round = Gauge("tensorswarm_round", "round being trained", registry=r)
        self.world_size = Gauge("tensorswarm_world_size", "members of the current generation", registry=r)
        self.waiting = Gauge("tensorswarm_waiting", "joined hotkeys waiting for a generation", registry=r)
        self.generations = Counter("tensorswarm_generations", "generations formed", registry=r)
        self.joins = Counter("tensorswarm_joins", "join requests", registry=r)
        self.heartbeats = Counter("tensorswarm_heartbeats", "heartbeats", registry=r)
        self.rounds = Counter("tensorswarm_rounds_completed", "rounds agreed", registry=r)
        self.denied = Counter("tensorswarm_requests_denied", "requests refused", ["status"], registry=r)
        self.checkpoints = Counter("tensorswarm_checkpoint_uploads", "checkpoints stored", registry=r)
        self.loss = Gauge("tensorswarm_last_round_loss", "mean loss of the last agreed round", registry=r)
        self.misbehavior = Counter("tensorswarm_misbehavior_reports", "contributions reported as bad", registry=r)


class OrchestratorService:
    def __init__(self, settings: Settings, *, hotkey_ss58: str, client_factory, metagraph_refresh_s: float = 12.0):
        self.settings = settings
        self.hotkey = hotkey_ss58
        self.metrics = Metrics()
        self._metagraph_refresh_s = metagraph_refresh_s
        self._client_factory = client_factory
        state = settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self._state_lock = lock_state_dir(state)  # one orchestrator (or owner's command) per state dir
        try:
            self._open(settings)
        except BaseException:
            self._state_lock.close()
            raise

    def _open(self, settings: Settings) -> None:
        state = settings.state_dir
        self.shards = ShardStore(state / "dataset")
        self.checkpoint_dir = state / "checkpoints"
        self.checkpoint_dir.mkdir(exist_ok=True)
        for partial in self.checkpoint_dir.glob(".upload.*.tmp"):  # uploads a crash cut short
            partial.unlink(missing_ok=True)
        members = self._generation_bounds()  # before a run is created for settings that cannot train
        self.run = load_or_create_run(self.settings, self.shards)
        if members.min_world_size != self.run.membership.min_world_size:
            log.info(
                "generations need at least %d ranks (byzantine_fraction %g; min_world_size %d)",
                members.min_world_size,
                self.run.training.byzantine_fraction,
                self.run.membership.min_world_size,
            )
        self.tracker = Tracker(name="")  # none until start(): --wandb-project / --tensorboard-dir
        self.store = StoreHost()  # on loopback: ranks reach it only through the tunnel
        tunnel_socket = StoreTunnel.listen(settings.store_host, settings.store_port)
        self.coordinator = Coordinator(
            state / "orchestrator.sqlite",
            members,
            settings.store_host,
            tunnel_socket.getsockname()[1],
            self.run.run_id,
            on_generation=self._on_generation,
        )
        self.metagraph = MetagraphCache(self._client_factory, settings.netuid, refresh_s=self._metagraph_refresh_s)
        self.auth = Authenticator(
            self.hotkey, self.metagraph, SqliteNonceStore(state / "nonces.sqlite"), netuid=settings.netuid
        )
        self._members_of: Optional[Current] = None
        self.tunnel = StoreTunnel(
            tunnel_socket,
            self.store.port,
            run_id=self.run.run_id,
            orchestrator=self.hotkey,
            current=self._tunnel_current,
            admitted=self._arrived,
            posted=self._posted,
        )
        # One lock: membership decisions are serialized (handlers are short).
        self.lock = threading.Lock()
        self.payloads = Payloads(self)  # agreed contributions, and the states rebuilt from them
        self._ticker: Optional[asyncio.Task] = None
        self._update_gauges()

    def _generation_bounds(self) -> p.MembershipConfig:
        """The membership rules the coordinator applies: the run's, with the minimum world size raised
        to what the run's Byzantine fraction needs (3 ranks when it tolerates any)."""
        s = self.settings  # equal to the stored run's, or load_or_create_run refuses the state dir
        least = membership.effective_min_world_size(s.membership.min_world_size, s.training.byzantine_fraction)
        if least > s.membership.max_world_size:
            raise ValueError(
                f"max_world_size {s.membership.max_world_size} is below {least}, the fewest ranks a run with "
                f"byzantine_fraction {s.training.byzantine_fraction:g} needs"
            )
        return s.membership.model_copy(update={"min_world_size": least})

    # -- run config and dataset ------------------------------------------------------

    @property
    def manifest(self) -> DatasetManifest:
        return self.run.dataset

    # -- lifecycle --------------------------------------------------------------------------

    def track_rounds(self, since: int) -> None:
        """Log the rounds agreed from ``since`` on to the experiment trackers (under the lock)."""
        t = self.run.training
        for pt in self.coordinator.history(since, 1000, t.inner_steps * t.batch_size * t.seq_len).points:
            rate = pt.tokens / pt.wall_s if pt.wall_s else None
            figures = {"loss": pt.loss, "loss_min": pt.loss_min, "loss_max": pt.loss_max, "tokens_per_s": rate}
            figures.update(members=pt.members, generation=pt.generation, dropped=pt.dropped, bytes_sent=pt.bytes_sent)
            self.tracker.log(pt.round, figures)

    async def start(self) -> None:
        s = self.settings
        config = {"run_id": self.run.run_id, **self.run.training.model_dump()}
        name = f"orchestrator {self.run.run_id}"
        self.tracker = Tracker(
            name=name,
            config=config,
            wandb_project=s.wandb_project,
            wandb_dir=s.state_dir,
            tensorboard_dir=s.tensorboard_dir,
        )
        await self.metagraph.start()
        self._ticker = asyncio.create_task(self._tick_loop())
        await self.tunnel.start()

    async def stop(self) -> None:
        self.tracker.close()
        await self.tunnel.stop()
        if self._ticker:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        await self.metagraph.stop()
        self.coordinator.close()
        self.store.close()
        self._state_lock.close()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            try:
                with self.lock:
                    self.coordinator.tick(time.time())
                    self._update_gauges()
            except Exception:  # never let the ticker die
                log.exception("tick failed")

    def _tunnel_current(self) -> Optional[Current]:
        gen = self.coordinator.generation
        if gen is None:
            return None
        if self._members_of is None or self._members_of.generation != gen.id:
            self._members_of = Current(gen.id, gen.prefix, {hk: rank for rank, hk in enumerate(gen.members)})
        return self._members_of

    def _arrived(self, generation: int, hotkey: str) -> None:
        with self.lock:
            self.coordinator.arrive(generation, hotkey, time.time())

    def _posted(self, generation: int, hotkey: str, what: str) -> None:
        now = time.time()  # when it passed, not when the lock was free
        with self.lock:
            self.coordinator.saw_post(generation, hotkey, what, now)

    def _current_prefix(self) -> Optional[str]:
        gen = self.coordinator.generation if hasattr(self, "coordinator") else None
        return gen.prefix if gen else None

    def _on_generation(self, old: Optional[Generation], new: Optional[Generation]) -> None:
        self.metrics.generations.inc(1 if new else 0)
        keep = new.prefix if new else None
        if hasattr(self, "tunnel"):
            self.tunnel.generation_changed()  # the old generation's connections are closed
        threading.Thread(target=self.store.cleanup, args=(keep,), daemon=True).start()

    def _update_gauges(self) -> None:
        c = self.coordinator
        self.metrics.generation.set(c.generation.id if c.generation else -1)
        self.metrics.round.set(c.round)
        self.metrics.world_size.set(len(c.generation.members) if c.generation else 0)
        self.metrics.waiting.set(len(c.waiting()))

    # -- checkpoints ------------------------------------------------------------------------

    def store_checkpoint(self, sha: str, data: bytes, now: float) -> p.CheckpointInfo:
        """Keep an uploaded global state if it is one the members agreed on (bytes in hand)."""
        upload = self.new_upload()
        try:
            upload.write(data)
            return self.store_upload(sha, upload, now)
        finally:
            upload.discard()

    def new_upload(self) -> Upload:
        """A temporary file in the checkpoint directory that an upload streams into."""
        return Upload(self.checkpoint_dir)

    def store_upload(self, sha: str, upload: Upload, now: float) -> p.CheckpointInfo:
        """Keep a streamed upload as the checkpoint ``sha`` if it hashes to it, is a state the members
        agreed on, and is finite. Raises ``ValueError`` (not those bytes), ``LookupError`` (no round
        produced it, or not wanted: :meth:`checkpoint_refusal`), :class:`CheckpointRefused` (not finite). Blocking: call it off the event loop."""
        if upload.sha256() != sha:
            raise ValueError("body does not match the sha256 in the path")
        with self.lock:
            round_ = self.coordinator.is_known_state(sha)
        if round_ is None:
            raise LookupError("no round of this run produced that state")
        path = self.checkpoint_dir / sha
        existed = path.exists()
        if not existed:
            # Honest members never agree on a state with NaN/Inf (their trainers refuse to report one);
            # if a majority did, the orchestrator still does not serve it. Bodies without the state
            # format's magic are stored as the opaque agreed bytes they are.
            upload.flush()
            data = upload.path.read_bytes()
            problem = state_problem(data) if is_state(data) else None
            del data
            if problem is not None:
                raise CheckpointRefused(problem)
            upload.keep_as(path)
        db, every = self.coordinator.db, self.run.training.checkpoint_every
        with self.lock:
            # Decided again as it lands: a slow body may end after newer checkpoints did.
            refused = self.checkpoint_refusal(sha, round_)
            if refused is not None:
                if not existed and not db.execute("SELECT 1 FROM checkpoints WHERE sha256=?", (sha,)).fetchone():
                    path.unlink(missing_ok=True)  # this upload wrote the file, and no checkpoint names it
                raise LookupError(refused)
            db.execute("INSERT OR IGNORE INTO checkpoints VALUES (?,?,?,?)", (sha, round_, upload.size, now))
            rows = db.execute("SELECT sha256, round FROM checkpoints ORDER BY round DESC, created_at DESC").fetchall()
            # The newest, and the newest others on the run's cadence (every K-th round): a member uploading
            # every agreed state in turn cannot push out the checkpoints replays start from.
            kept = rows[:1] + [row for row in rows[1:] if row[1] % every == 0][: self.settings.keep_checkpoints - 1]
            pruned = [row[0] for row in rows if row not in kept]
            for old in pruned:
                db.execute("DELETE FROM checkpoints WHERE sha256=?", (old,))
        for old in pruned:  # outside the lock (file I/O); a download already under way keeps its open file
            (self.checkpoint_dir / old).unlink(missing_ok=True)
        self.payloads.prune(min(int(r) for _, r in kept))
        self.metrics.checkpoints.inc()
        return self.checkpoint_info(sha)

    def checkpoint_refusal(self, sha: str, round_: int) -> Optional[str]:
        """Why the agreed state ``sha`` (it starts ``round_``) is not taken as a checkpoint, or None: the current
        state is; an older one while nothing newer is held (a slow uplink's upload can start after the next
        round was agreed). Call under the lock."""
        newest = self.coordinator.db.execute("SELECT MAX(round) FROM checkpoints").fetchone()[0]
        if sha == self.coordinator.state or newest is None or round_ > newest:
            return None
        return "only the current agreed state, or one newer than every checkpoint"

    def checkpoint_info(self, sha: Optional[str] = None) -> Optional[p.CheckpointInfo]:
        db = self.coordinator.db
        if sha is None:
            row = db.execute("SELECT * FROM checkpoints ORDER BY round DESC, created_at DESC LIMIT 1").fetchone()
        else:
            row = db.execute("SELECT * FROM checkpoints WHERE sha256=?", (sha,)).fetchone()
        if row is None:
            return None
        return p.CheckpointInfo(sha256=row[0], round=row[1], size=row[2], created_at=row[3])

    def checkpoints(self) -> list[p.CheckpointInfo]:
        rows = self.coordinator.db.execute("SELECT * FROM checkpoints ORDER BY round DESC").fetchall()
        return [p.CheckpointInfo(sha256=r[0], round=r[1], size=r[2], created_at=r[3]) for r in rows]

    def has_checkpoint(self, sha: str) -> bool:
        """The checkpoint is recorded and its file is there, at the size it was stored with."""
        info = self.checkpoint_info(sha)
        try:
            return info is not None and (self.checkpoint_dir / sha).stat().st_size == info.size
        except OSError:
            return False

    def open_checkpoint(self, sha: str) -> Optional[tuple[p.CheckpointInfo, BinaryIO]]:
        """The stored checkpoint's record and its file, opened (so a prune that unlinks it meanwhile
        cannot cut the download short), or None when it is gone or not the size it was stored with.
        Served as it is, streamed from disk: downloaders check its hash, as they must anyway."""
        info = self.checkpoint_info(sha)
        if info is None:
            return None
        try:
            f = open(self.checkpoint_dir / sha, "rb")
        except OSError:
            return None
        if os.fstat(f.fileno()).st_size != info.size:
            f.close()
            return None
        return info, f

    # -- status -------------------------------------------------------------------------------

    def status(self, now: float) -> p.Status:
        c = self.coordinator
        gen = c.generation

        reports = c.misbehavior_counts()
        checked_in = c.checkins()

        def row(hotkey: str, rank: Optional[int], state: str) -> p.MemberStatus:
            live = c.live.get(hotkey)
            neuron = self.metagraph.lookup(hotkey)
            return p.MemberStatus(
                rank=rank,
                hotkey=hotkey,
                uid=neuron.uid if neuron else None,
                state=state,
                last_heartbeat_s=round(now - live.last_seen, 3) if live else None,
                round=live.round if live else None,
                step=live.step if live else None,
                loss=live.loss if live else None,
                reports=reports.get(hotkey, 0),
                checked_in_s=round(now - checked_in[hotkey], 3) if rank is not None and hotkey in checked_in else None,
            )

        with self.lock:
            members = [row(hk, i, "member") for i, hk in enumerate(gen.members)] if gen else []
            waiting = [row(hk, None, "waiting") for hk in c.waiting()]
            return p.Status(
                run_id=self.run.run_id,
                netuid=self.settings.netuid,
                generation=gen.id if gen else None,
                round=c.round,
                world_size=len(gen.members) if gen else 0,
                members=members,
                waiting=waiting,
                state=c.state,
                checkpoint=self.checkpoint_info(),
                training=self.run.training,
                membership=self.run.membership,
                dataset_id=self.run.dataset_id,
                loss_history=c.loss_history(),
                evictions=c.evictions(),
                sitting_out=sorted(c.sitting_out(now)),
            )


class Upload:
    """A checkpoint upload being received: a temporary file (named with a leading "." so it is never
    mistaken for a content-addressed entry) and the running sha256 and size of what was written."""

    def __init__(self, directory: Path):
        fd, name = tempfile.mkstemp(dir=directory, prefix=".upload.", suffix=".tmp")
        self.path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def flush(self) -> None:
        """Make everything written so far readable through :attr:`path`."""
        self._fh.flush()

    def keep_as(self, path: Path) -> None:
        """Make the upload ``path`` atomically (fsync, rename)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.path, path)

    def discard(self) -> None:
        """Remove the temporary file unless it was kept (idempotent)."""
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)
