"""The checks of a validator audit, one module per kind; :func:`template.validator.audit.audit_round` runs
them in order for every sampled miner of a round. Each module's docstring explains what its check catches
and why its thresholds are what they are.

- :mod:`.receipt` — the signed receipt names this miner, run, round and the agreed states.
- :mod:`.contribution` — the served bytes are the signed ones, parse strictly, are finite, have the
  claimed norm.
- :mod:`.losses` — the step-0 loss is replayed exactly, the last-step loss is bounded from below.
- :mod:`.usefulness` — what θ_r − Δ gains on the miner's own batches and on held-out windows.
- :mod:`.attestation` — the peers' signed receipts say what the miner really sent.
- :mod:`.copies` — a contribution seen before, or (nearly) equal to a lower-ranked one, is a copy.

Pure functions over data already fetched: no networking, no chain, no disk.
"""
