"""The orchestrator: admits registered miners, assigns ranks per generation, hosts
the TCPStore, keeps the run's config and checkpoints, and serves status."""
