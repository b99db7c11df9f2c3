"""The training data every participant shares byte for byte: building the corpus and its
content-addressed shards (``corpus``), storing, serving and caching them with every byte verified
(``store``), and the pure functions that say which windows a miner trains on and which a validator holds
out (``sampling``). The manifest itself is a wire message (``template.wire.dataset``).

May import: ``template.wire``, ``template.config``, ``template.files``.
"""
