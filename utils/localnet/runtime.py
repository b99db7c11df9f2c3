"""The embedded chain's runtime: :class:`Chain`, composed from its pallets.

This mirrors the parts of subtensor a subnet touches — balances, subnet
creation, burned registration with pruning, serving, commitments, weights with
the chain's checks, staking, owner/root hyperparameters, Yuma every tempo and
alpha emission credited as stake — over the versioned storage in
:mod:`utils.localnet.store`. Each pallet is a mixin in
:mod:`utils.localnet.pallets`; this module composes them and routes each call
to its handler. The names other modules import from here (``Chain``,
``PoolError``, ``SUBTENSOR``, ``MEV_KEY``, the constants) are re-exported.

Known simplifications (documented in the README): no transaction fees, alpha
priced 1:1 against TAO (no AMM), no root/TAO emission, no commit-reveal (its
reveals need drand), no liquid alpha, no dynamic burn or PoW.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from .pallets.admin import ADMIN_SETTERS, OWNER_SETTERS, UNSUPPORTED_VALUES, Admin
from .pallets.balances import Balances
from .pallets.base import (
    GLOBAL_MAX_SUBNET_COUNT,
    RAO,
    SUBNET_DEFAULTS,
    SUBTENSOR,
    U16_MAX,
    VECTOR_ZERO,
    VECTORS,
    DispatchError,
    Origin,
    PoolError,
    block_hash_for,
    make_event,
)
from .pallets.commitments import Commitments
from .pallets.epoch import MAX_CATCHUP_EPOCHS, Epochs
from .pallets.executive import MEV_KEY, Executive
from .pallets.metagraph import Metagraph
from .pallets.registration import Registration
from .pallets.serving import Serving, ip_is_valid, ip_to_int
from .pallets.staking import MIN_STAKE_RAO, Staking
from .pallets.weights import Weights

__all__ = [
    "ADMIN_SETTERS",
    "GLOBAL_MAX_SUBNET_COUNT",
    "MAX_CATCHUP_EPOCHS",
    "MEV_KEY",
    "MIN_STAKE_RAO",
    "OWNER_SETTERS",
    "RAO",
    "SUBNET_DEFAULTS",
    "SUBTENSOR",
    "U16_MAX",
    "UNSUPPORTED_VALUES",
    "VECTORS",
    "VECTOR_ZERO",
    "Chain",
    "DispatchError",
    "Origin",
    "PoolError",
    "block_hash_for",
    "ip_is_valid",
    "ip_to_int",
]


class Chain(Executive, Epochs, Balances, Registration, Serving, Commitments, Weights, Staking, Admin, Metagraph):
    """State transitions over a :class:`~utils.localnet.store.Store`. Every
    public entry point first runs the epochs that the clock has reached
    (:meth:`advance`)."""

    def dispatch(self, origin: Origin, call: dict, block: int) -> list[dict]:
        module, function, params = call["module"], call["function"], call["params"]
        if module == "Sudo" and function == "sudo":
            if origin.kind != "root" and origin.who != self.store.get("Sudo", "Key", [], None):
                raise DispatchError("RequireSudo", "Sender must be the Sudo account.")
            inner = self.dispatch(Origin("root"), params["call"], block)
            return inner + [make_event("Sudo", "Sudid", {"sudo_result": {"Ok": None}})]
        if module == "AdminUtils":
            return self._admin(origin, function, params, block)
        handler = _CALLS.get((module, function))
        if handler is None:
            raise DispatchError(
                "CallNotSupported",
                f"{module}.{function} is not implemented by the embedded local chain",
            )
        return handler(self, origin, params, block) or []


# (module, function) -> handler; ``Sudo.sudo`` and ``AdminUtils.*`` are routed in ``Chain.dispatch``.
_CALLS: dict[tuple[str, str], Callable[..., Optional[list[dict]]]] = {
    ("Balances", "transfer_keep_alive"): Chain.transfer,
    ("Balances", "transfer_allow_death"): Chain.transfer,
    ("SubtensorModule", "register_network"): Chain.register_network,
    ("SubtensorModule", "start_call"): Chain.start_call,
    ("SubtensorModule", "burned_register"): Chain.burned_register,
    ("SubtensorModule", "serve_axon"): Chain.serve_axon,
    ("SubtensorModule", "set_weights"): Chain.set_weights,
    ("SubtensorModule", "set_mechanism_weights"): Chain.set_weights,
    ("SubtensorModule", "add_stake"): Chain.add_stake,
    ("SubtensorModule", "add_stake_limit"): Chain.add_stake,
    ("SubtensorModule", "remove_stake"): Chain.remove_stake,
    ("Commitments", "set_commitment"): Chain.set_commitment,
    ("MevShield", "submit_encrypted"): Chain.submit_encrypted,
}
