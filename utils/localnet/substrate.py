"""``LocalSubstrate``: the ``bittensor.Substrate`` protocol over the embedded chain.

``bt.Client(network, substrate=LocalSubstrate(path))`` drives the real SDK —
intents, the executor, reads, the metagraph decoder — against the SQLite chain.
Every database operation runs on one worker thread per substrate, so the
event loop never blocks on another process's write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Optional

from bittensor.balance import Balance
from bittensor.result import ChainError, ExtrinsicResult
from bittensor.sp_core import Keypair

from . import runtime
from .calls import ComposedCall, as_call, compose_call, normalize
from .runtime import MEV_KEY, SUBTENSOR, Chain, PoolError
from .store import LocalnetError, Store, encode_value

log = logging.getLogger(__name__)

SPEC_VERSION = 435
# Constants the SDK reads; unknown ones raise a clear ChainError.
CONSTANTS: dict[tuple[str, str], Any] = {
    ("Balances", "ExistentialDeposit"): 500,
    ("SubtensorModule", "InitialStartCallDelay"): 0,
    ("System", "SS58Prefix"): 42,
}


class LocalSubstrate:
    """Implements :class:`bittensor.Substrate` over a localnet directory."""

    def __init__(self, path: str):
        self.path = path
        self.token_symbols: dict[int, str] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="localnet")
        self._chain: Optional[Chain] = None
        # Open eagerly so a missing/corrupt file fails at construction with its path.
        self._chain = self._pool.submit(lambda: Chain(Store.open(path))).result()

    # -- plumbing --------------------------------------------------------------

    async def _run(self, fn, *args):
        if self._chain is None:
            raise ChainError(f"localnet {self.path} is closed")
        chain = self._chain

        def work():
            try:
                return fn(chain, *args)
            except LocalnetError as error:
                raise ChainError(str(error)) from None

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def _at(self, chain: Chain, block_hash: Optional[str]) -> int:
        head = chain.advance()
        return head if block_hash is None else min(head, chain.block_number_of(block_hash))

    def balance(self, rao: int, netuid: int = 0) -> Balance:
        symbol = self.token_symbols.get(netuid) if netuid else None
        return Balance(int(rao), netuid, symbol)

    async def connect(self) -> None:
        if self._chain is None:
            self._chain = self._pool.submit(lambda: Chain(Store.open(self.path))).result()

    async def close(self) -> None:
        chain, self._chain = self._chain, None
        if chain is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, chain.store.close)

    def advance_blocks(self, n: int) -> int:
        """Dev tool: jump the shared clock forward ``n`` blocks."""
        assert self._chain is not None
        return self._pool.submit(self._chain.skip_blocks, n).result()

    # -- reads -------------------------------------------------------------------

    async def block_hash(self, block: Optional[int] = None) -> str:
        def op(chain: Chain):
            head = chain.advance()
            if block is not None and block > head:
                raise LocalnetError(f"block {block} is in the future (head is {head})")
            return chain.block_hash(head if block is None else block)

        return await self._run(op)

    async def block_number(self) -> int:
        return await self._run(lambda chain: chain.advance())

    async def finalized_block_number(self) -> int:
        # Instant finality: every block is final once produced.
        return await self.block_number()

    async def block_time(self) -> float:
        return self._chain.block_time if self._chain else 0.25

    async def spec_version(self) -> int:
        return SPEC_VERSION

    async def get_block(self, block_number: Optional[int] = None, block_hash: Optional[str] = None) -> Optional[dict]:
        def op(chain: Chain):
            head = chain.advance()
            number = head if block_number is None else block_number
            if block_hash is not None:
                number = chain.block_number_of(block_hash)
            if number > head or number < 0:
                return None
            header = {
                "number": number,
                "hash": chain.block_hash(number),
                "parentHash": chain.block_hash(number - 1) if number else "0x" + "00" * 32,
            }
            return {"header": header, "extrinsics": chain.block_extrinsics(number)}

        return await self._run(op)

    async def query(
        self,
        module: str,
        storage_function: str,
        params: Optional[list] = None,
        block_hash: Optional[str] = None,
    ) -> Any:
        return await self._run(self._query, module, storage_function, list(params or []), block_hash)

    def _query(self, chain: Chain, module: str, item: str, params: list, block_hash):
        block = self._at(chain, block_hash)
        params = [normalize(p) for p in params]
        if (module, item) == ("Timestamp", "Now"):
            return chain.timestamp_ms(block)
        if (module, item) == ("System", "Number"):
            return block
        if (module, item) == ("System", "Account"):
            return chain.account(params[0], block)
        if (module, item) == ("MevShield", "NextKey"):
            return "0x" + MEV_KEY.hex()
        if (module, item) == (SUBTENSOR, "BlocksSinceLastStep"):
            last = chain.get("LastEpochBlock", params, block)
            return None if last is None else block - int(last)
        if (module, item) == (SUBTENSOR, "SubnetworkN") and not chain.subnet_exists(params[0], block):
            return 0
        if module == SUBTENSOR and item in runtime.VECTORS and len(params) == 1:
            return chain.vector(item, int(params[0]) % runtime.GLOBAL_MAX_SUBNET_COUNT, block)
        return chain.get(item, params, block, module=module)

    async def map_has_entries(
        self, module: str, storage_function: str, params: list, block_hash: Optional[str] = None
    ) -> bool:
        return bool(await self.query_map(module, storage_function, params, block_hash))

    async def query_map(
        self,
        module: str,
        storage_function: str,
        params: Optional[list] = None,
        block_hash: Optional[str] = None,
    ) -> list[tuple[Any, Any]]:
        prefix = [normalize(p) for p in (params or [])]

        def op(chain: Chain):
            block = self._at(chain, block_hash)
            out = []
            for key, value in chain.store.scan(module, storage_function, prefix, block):
                rest = key[len(prefix) :]
                out.append((rest[0] if len(rest) == 1 else tuple(rest), value))
            return out

        return await self._run(op)

    async def query_batch(
        self,
        module: str,
        storage_function: str,
        param_sets: list[list],
        block_hash: Optional[str] = None,
    ) -> list[Any]:
        def op(chain: Chain):
            return [self._query(chain, module, storage_function, list(p), block_hash) for p in param_sets]

        return await self._run(op)

    async def runtime_call(self, api: str, method: str, params: Any, block_hash: Optional[str] = None) -> Any:
        def op(chain: Chain):
            block = self._at(chain, block_hash)
            args = list(params.values()) if isinstance(params, dict) else list(params or [])
            if (api, method) == ("SubnetInfoRuntimeApi", "get_metagraph"):
                return chain.metagraph(int(args[0]), block)
            if (api, method) == ("SwapRuntimeApi", "current_alpha_price"):
                return runtime.RAO  # alpha priced 1:1 against TAO (no AMM here)
            if (api, method) == ("SwapRuntimeApi", "sim_swap_tao_for_alpha"):
                amount = int(args[1])
                return {"alpha_amount": amount, "tao_amount": amount, "tao_fee": 0, "alpha_fee": 0}
            if (api, method) == ("SwapRuntimeApi", "sim_swap_alpha_for_tao"):
                amount = int(args[1])
                return {"alpha_amount": amount, "tao_amount": amount, "tao_fee": 0, "alpha_fee": 0}
            raise LocalnetError(f"runtime API {api}.{method} is not provided by the embedded chain")

        return await self._run(op)

    async def constant(self, module: str, name: str) -> Any:
        try:
            return CONSTANTS[(module, name)]
        except KeyError:
            raise ChainError(f"constant {module}.{name} is not provided by the embedded chain") from None

    async def decode_scale(self, type_string: str, data: Any) -> Any:
        raise ChainError("SCALE decoding is not available on the embedded chain")

    async def blocks(self, *, finalized: bool = False) -> AsyncIterator[dict]:
        """Yield every new head (each number once, in order) as the clock advances."""
        last = await self.block_number()
        period = await self.block_time()
        while True:
            await asyncio.sleep(period / 2)
            head = await self.block_number()
            for number in range(last + 1, head + 1):
                yield {
                    "header": {
                        "number": number,
                        "hash": self._chain.block_hash(number) if self._chain else None,
                        "parentHash": self._chain.block_hash(number - 1) if self._chain else None,
                    }
                }
            last = max(last, head)

    async def events(self, block_hash: Optional[str] = None) -> list[dict]:
        def op(chain: Chain):
            return chain.block_events(self._at(chain, block_hash))

        return await self._run(op)

    # -- calls and fees -------------------------------------------------------------

    async def compose(self, call) -> ComposedCall:
        return compose_call(call)

    async def estimate_fee(self, call, keypair) -> Balance:
        return Balance.from_rao(0)  # the embedded chain charges no transaction fees

    async def estimate_weight(self, call, keypair) -> dict:
        return {"ref_time": 0, "proof_size": 0}

    async def account_next_index(self, address: str) -> int:
        return await self._run(lambda chain: int(chain.account(address)["nonce"]))

    # -- writes -------------------------------------------------------------------------

    async def mev_next_key(self) -> Optional[bytes]:
        return MEV_KEY

    def _signed(self, call: ComposedCall, keypair, nonce: int) -> tuple[bytes, str]:
        """Sign the extrinsic payload with the caller's key and check it, so an
        extrinsic only ever carries a signature its account could make."""
        payload = encode_value(
            [self._chain.chain_id if self._chain else "", keypair.ss58_address, nonce, call.data.hex()]
        ).encode()
        signature = bytes(keypair.sign(payload))
        crypto = getattr(keypair, "crypto_type", 1)
        if not Keypair(ss58_address=keypair.ss58_address, crypto_type=crypto).verify(payload, signature):
            raise PoolError("Invalid transaction: bad signature")
        raw = payload + signature
        return raw, "0x" + hashlib.blake2b(raw, digest_size=32).hexdigest()

    async def sign_extrinsic(self, call, keypair, *, nonce: int, period: int) -> tuple[bytes, str]:
        composed = as_call(call)
        raw, ext_hash = self._signed(composed, keypair, nonce)
        await self._run(
            lambda chain: chain.stash_shielded(ext_hash, keypair.ss58_address, nonce, composed.as_dict(), period)
        )
        return raw, ext_hash

    async def find_extrinsic(self, extrinsic_hash: str, block_hash: str) -> Optional[ExtrinsicResult]:
        def op(chain: Chain):
            return chain.find_extrinsic(extrinsic_hash, chain.block_number_of(block_hash))

        receipt = await self._run(op)
        return None if receipt is None else self._result(receipt)

    async def submit(
        self,
        call,
        keypair,
        *,
        nonce: Optional[int] = None,
        period: Optional[int] = None,
        wait_for_inclusion: bool = True,
        wait_for_finalization: bool = True,
    ) -> ExtrinsicResult:
        composed = as_call(call)
        try:
            if nonce is None:
                nonce = await self.account_next_index(keypair.ss58_address)
            _, ext_hash = self._signed(composed, keypair, nonce)
            call_dict = {**composed.as_dict(), "_hash": ext_hash}
            receipt = await self._run(lambda chain: chain.apply(keypair.ss58_address, nonce, call_dict))
        except PoolError as error:
            return ExtrinsicResult(success=False, message=str(error), error=ChainError(str(error)))
        if not (wait_for_inclusion or wait_for_finalization):
            return ExtrinsicResult(success=True, message="Submitted (not waiting).")
        return self._result(receipt)

    def _result(self, receipt: dict) -> ExtrinsicResult:
        block_hash = self._chain.block_hash(receipt["block"]) if self._chain else None
        extrinsic_id = f"{receipt['block']}-{receipt['index']:04d}"
        if receipt["success"]:
            return ExtrinsicResult(
                success=True,
                message="Success",
                block_hash=block_hash,
                extrinsic_id=extrinsic_id,
                fee=Balance.from_rao(0),
                events=list(receipt["events"]),
            )
        name, docs = receipt["error"]["name"], receipt["error"]["docs"]
        return ExtrinsicResult(
            success=False,
            message=docs,
            block_hash=block_hash,
            extrinsic_id=extrinsic_id,
            fee=Balance.from_rao(0),
            events=list(receipt["events"]),
            error=ChainError(docs, name),
        )

    async def submit_signed(self, extrinsic, keypair, **_kw) -> ExtrinsicResult:
        raise ChainError("pre-signed extrinsics are not supported by the embedded chain")

    async def prepare(self, call, *, address: str, **_kw):
        raise ChainError("offline signing (prepare/submit_signature) is not supported by the embedded chain")

    async def submit_signature(self, unsigned, signature, **_kw) -> ExtrinsicResult:
        raise ChainError("offline signing (prepare/submit_signature) is not supported by the embedded chain")

    def multisig_account(self, signatories: list[str], threshold: int):
        raise ChainError("multisig is not supported by the embedded chain")

    async def submit_multisig(self, call, keypair, multisig_account, **_kw) -> ExtrinsicResult:
        raise ChainError("multisig is not supported by the embedded chain")
