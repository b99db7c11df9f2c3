"""Configuration: the shared command-line parser (``cli``) and its ``type=`` helpers (``argtypes``), flags
derived from a pydantic model's fields (``flags``), logging setup (``logs``), the model presets with their
own training defaults (``presets``) and the run config every miner must agree on (``run``, on the strict
base model of ``strict``). The run config is the single source of truth: the orchestrator's training flags,
their defaults and their ``choices`` are derived from its fields and the presets, never copied by hand.

May import: nothing of tensorswarm but ``template.files``; never torch.
"""
