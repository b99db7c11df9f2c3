"""The validator role: audits of a round's evidence (``audit.py``, with the checks split by kind in
``checks/``), scoring and the EMA (``scoring.py``), the state kept on disk (``state.py``), the per-round
step that fetches evidence from meta-miners (``loop.py``), setting weights with backoff (``weights.py``)
and the service loop with its status endpoint (``service.py``).

May import: ``template.engine``, ``template.net``, ``template.data``, ``template.chain``, ``template.wire``,
``template.config``. Never ``template.miner``.
"""
