"""The training engine, everything that touches tensors: the model (``model``), canonical checkpoint bytes
(``checkpoint``) and the run's global-state format, compression, robust aggregation, the outer optimizer,
the exchange of contributions between ranks, the screening of untrusted contributions, and the training
strategies (``strategies``, a registry) driven by the ``Trainer``.

May import: ``template.wire``, ``template.config``, ``template.files``; never a role, the network or the chain.
"""
