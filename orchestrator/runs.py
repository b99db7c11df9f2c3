"""The run an orchestrator serves: loaded from its state directory (the flags must match it), or made from the
flags and the dataset, and written there."""

from __future__ import annotations

import hashlib
import json
import logging

from template import wire as p
from template.data.corpus import build_run_dataset
from template.data.store import ShardStore
from template.files import atomic_write

log = logging.getLogger("orchestrator.service")


class RunMismatch(Exception):
    """The state dir holds a different run than the flags ask for."""


def load_or_create_run(s, shards: ShardStore) -> p.RunInfo:
    """The run stored in ``s.state_dir`` (refused when the settings differ, every shard verified), or a new
    one: its dataset built from ``--dataset`` into ``shards`` and its config written."""
    path = s.state_dir / "run.json"
    if path.exists():
        try:
            run = p.RunInfo.model_validate_json(path.read_bytes())
        except ValueError as error:
            raise RunMismatch(
                f"{path}: unreadable run config ({error.__class__.__name__}); restore it or start a fresh --state-dir"
            ) from None
        # vocab_size left unset is the data's (set when the run was made)
        differs = [
            k
            for k, v in s.training.model_dump().items()
            if getattr(run.training, k) != v and (k, v) != ("vocab_size", None)
        ]
        differs += [k for k, v in s.membership.model_dump().items() if getattr(run.membership, k) != v]
        if differs:
            raise RunMismatch(
                f"{s.state_dir} holds run {run.run_id} with different settings ({', '.join(differs)}); "
                "use the same flags, or a fresh --state-dir for a new run"
            )
        for shard in run.dataset.shards:
            shards.get(shard.sha256)  # verifies every shard; names a corrupt file
        return run
    manifest = build_run_dataset(
        s.dataset_path,
        shards.put,
        s.dataset_max_bytes,
        s.shard_size,
        s.heldout_fraction,
        s.training.vocab_size,
    )
    name, training = manifest.name, s.training
    if manifest.token_bytes > 1:  # tokenized: the model's vocabulary is the data's
        training = training.model_copy(update={"vocab_size": manifest.vocab_size})
    shards.save_manifest(manifest)
    dataset_id = manifest.manifest_id()
    run_id = hashlib.sha256(json.dumps([training.model_dump(), dataset_id], sort_keys=True).encode()).hexdigest()[:16]
    run = p.RunInfo(run_id=run_id, training=training, membership=s.membership, dataset_id=dataset_id, dataset=manifest)
    atomic_write(path, run.model_dump_json(indent=2).encode())
    log.info(
        "new run %s: %s, %d shards (%d held out)",
        run_id,
        name,
        len(manifest.shards),
        len(manifest.shards) - manifest.heldout_start,
    )
    return run
