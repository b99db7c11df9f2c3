"""The validator role: audits of a round's evidence (checks split by kind), scoring and the EMA, the state
kept on disk, fetching evidence from meta-miners, and the loop that turns all of it into weights.

May import: ``template.engine``, ``template.net``, ``template.data``, ``template.chain``, ``template.wire``,
``template.config``. Never ``template.miner``.
"""
