"""Simulated dishonest miners for tests: never part of the production miner."""
