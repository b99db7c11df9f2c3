"""The checks of a validator audit, one module per kind; :func:`template.validator.audit.audit_round` runs
them in order for every sampled miner of a round. Each module's docstring explains what its check catches
and why its thresholds are what they are.

- :mod:`.receipt` — the signed receipt names this miner, run, round and the agreed states.
- :mod:`.contribution` — the served bytes are the signed ones, parse strictly, are finite, have the
  claimed norm.
- :mod:`.losses` — the step-0 loss is replayed exactly, the last-step loss is bounded from below.
- :mod:`.usefulness` — how much more θ_r − Δ lowers the loss on the miner's own batches (secret steps)
  than on windows nobody was assigned, beyond what the round's consensus update does (specificity, what
  a miner is paid for), and what it does to held-out windows (the harm gate).
- :mod:`.attestation` — the peers' signed receipts say what the miner really sent; with none to say
  so, the bytes are unverifiable.
- :mod:`.copies` — identical bytes seen before, or a near-replay of an update audited in an earlier
  round, is a copy.

Pure functions over data already fetched: no networking, no chain, no disk.
"""
