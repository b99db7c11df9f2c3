"""The miner role: one rank's round manager (join the group, catch up, train, commit, wait for agreement,
map failures to exit codes), the meta-miner's supervisor and restart policy, receipts on disk, and the
meta-miner's HTTP API for validators.

May import: ``template.engine``, ``template.net``, ``template.data``, ``template.chain``, ``template.wire``,
``template.config``. Never ``template.validator``.
"""
