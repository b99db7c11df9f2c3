"""tensorswarm's subnet library, one package per role or concern. Lower layers never import higher ones
(checked by import-linter, see ``pyproject.toml``):

- roles: ``miner`` (rank round manager, supervisor, receipts, the meta-miner's API) and ``validator``
  (audits, scoring, state, loop); roles never import each other;
- ``engine`` (model, global-state format, compression, aggregation, outer optimizer, exchange, screening,
  training strategies), ``net`` (btauth/1, HTTP plumbing, typed clients), ``data`` (corpus, shards,
  sampling);
- ``chain`` (the bittensor client builder and the metagraph reader; the only importer of the embedded chain);
- ``wire`` (torch-free pydantic messages and domain-tagged signing);
- ``config`` (flags, presets and the run config: the single source of truth for defaults).

``files`` holds the one file helper every layer shares (atomic writes).
"""
