"""The subnet's neuron processes: meta-miner, miner (one torch.distributed rank)
and validator."""
