"""Networking between roles: btauth/1 signed requests and their verification against the metagraph
(``auth``), HTTP plumbing (``http``: size limits, error handlers, a server thread) and the typed clients
of the orchestrator's and the meta-miner's APIs.

May import: ``template.chain``, ``template.wire``, ``template.config``. Never torch.
"""
