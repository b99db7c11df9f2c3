"""Serving: ``serve_axon`` with upstream's address checks and serving rate limit."""

from __future__ import annotations

import ipaddress

from .base import SUBTENSOR, ChainCore, DispatchError, Origin, make_event


def ip_is_valid(ip_type: int, ip: int) -> bool:
    """Upstream `is_valid_ip_address` (allow_zero = false)."""
    if ip_type == 4:
        return not (ip == 0 or ip >= 0xFFFFFFFF or ip == 0x7F000001)
    if ip_type == 6:
        return not (ip == 0 or ip >= (1 << 128) - 1 or ip == 1)
    return False


def ip_to_int(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return int(address), address.version


class Serving(ChainCore):
    """Axon records per (netuid, hotkey)."""

    def serve_axon(self, origin: Origin, params: dict, block: int) -> list[dict]:
        hotkey = self._signed(origin)
        netuid = int(params["netuid"])
        self._require_subnet(netuid)
        if self.uid_of(netuid, hotkey) is None:
            raise DispatchError("HotKeyNotRegisteredInNetwork", "The hotkey is not registered on this subnet.")
        ip, ip_type, port = int(params["ip"]), int(params["ip_type"]), int(params["port"])
        if ip_type not in (4, 6):
            raise DispatchError("InvalidIpType", "The IP type must be 4 or 6.")
        if not ip_is_valid(ip_type, ip):
            raise DispatchError("InvalidIpAddress", "The IP address is not a valid public address.")
        if not 0 < port < 65536:
            raise DispatchError("InvalidPort", "The port must be in 1..65535.")
        previous = self.get("Axons", [netuid, hotkey])
        limit = int(self.get("ServingRateLimit", [netuid]))
        if previous and limit and block - int(previous["block"]) < limit:
            raise DispatchError("ServingRateLimitExceeded", "Serving too fast; wait for the serving rate limit.")
        axon = {
            "block": block,
            "version": int(params.get("version", 0)),
            "ip": ip,
            "port": port,
            "ip_type": ip_type,
            "protocol": int(params.get("protocol", 0)),
            "placeholder1": int(params.get("placeholder1", 0)),
            "placeholder2": int(params.get("placeholder2", 0)),
        }
        self.put("Axons", [netuid, hotkey], axon, block)
        return [make_event(SUBTENSOR, "AxonServed", {"netuid": netuid, "hotkey": hotkey})]
