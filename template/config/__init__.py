"""Configuration: the shared command-line parser (``cli``), logging setup (``logs``), the model presets
with their own training defaults (``presets``) and the run config every miner must agree on (``run``).
The run config is the single source of truth: the orchestrator's training flags, their defaults and their
``choices`` are derived from its fields and the presets, never copied by hand.

May import: nothing of tensorswarm but ``template.wire.base`` (the strict base model); never torch.
"""
