"""Who a failed gloo rendezvous names (``group.rendezvous_culprits``, pure): the error texts are torch's
and gloo's own, the address blobs real gloo addresses as torch 2.13 posts them."""

from __future__ import annotations

from template.miner.group import GLOO_ADDRESS_KEY, rendezvous_culprits

# What rank 1 of a real 2-rank gloo group posted under "0//cpu//0/1": listening on 127.0.0.1:36649.
RANK1_BLOB = bytes.fromhex(
    "0200000000000000766d880000000000000002008f297f000001000000000000000000cd7b6ffe7f000010d27b6ffe7f0000"
    "30650298bf7f0000512abaa8000000000826a097bf7f00006834a097bf7f0000f4cb7b6ffe7f00001a910398bf7f0000"
    "47040000000000000098057b4ece0e58000000000000000080ffffffffffffff730000000000000062db5789bf7f0000"
    "ffffffffffffffff00000000000000000100000000000000"
)
# Rank 0's, on 127.0.0.1:38491.
RANK0_BLOB = bytes.fromhex(
    "0200000000000000766d88000000000000000200965b7f0000010000000000000000082640d2117f0000683440d2117f0000"
    "747a0375fc7f00001ab1add2117f0000470400000000000050f140d2117f00003085acd2117f0000787a0375fc7f0000"
    "747a0375fc7f000000d3373f53a91dfb000000000000000080ffffffffffffff730000000000000062dbf7c3117f0000"
    "ffffffffffffffff00000000000000000100000000000000"
)
# gloo's words when 127.0.0.1:36649 refuses: it prints the port's network-order bytes read as a host
# integer (10639 on a little-endian machine).
REFUSED = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:152] timed out connecting: SO_ERROR: "
    "Connection refused, remote=[127.0.0.1]:10639$1"
)


def test_a_rank_that_never_posted_its_address_is_named():
    error = "wait timeout after 5000ms, keys: /tensorswarm/4/ab12/0//cpu//0/2"
    assert rendezvous_culprits(error, {}, me=0) == (2,)
    several = "wait timeout after 5000ms, keys: /p/0//cpu//0/2, /p/0//cpu//0/3"
    assert rendezvous_culprits(several, {}, me=0) == (2, 3)
    assert rendezvous_culprits(error, {}, me=2) == ()  # never itself
    assert GLOO_ADDRESS_KEY.format(rank=2) in error


def test_a_rank_whose_posted_address_refuses_is_named_by_that_address():
    assert rendezvous_culprits(REFUSED, {0: RANK0_BLOB, 1: RANK1_BLOB}, me=2) == (1,)
    assert rendezvous_culprits(REFUSED.replace("10639", "10640"), {0: RANK0_BLOB, 1: RANK1_BLOB}, me=2) == ()


def test_an_address_two_ranks_posted_names_nobody():
    """A hostile rank posting an honest peer's address as its own must not get that peer named."""
    assert rendezvous_culprits(REFUSED, {1: RANK1_BLOB, 3: RANK1_BLOB}, me=0) == ()


def test_other_failures_name_nobody():
    assert rendezvous_culprits("Connection closed by peer [127.0.0.1]:5", {1: RANK1_BLOB}, me=0) == ()
    assert rendezvous_culprits("SO_ERROR: Connection refused, remote=[::1]:10639", {1: RANK1_BLOB}, me=0) == ()


def test_an_address_hidden_elsewhere_in_a_blob_matches_nothing():
    """A colluder cannot cover for the rank that refuses by carrying that rank's address in the padding
    of its own blob: only the sockaddr gloo connects to counts."""
    sockaddr = RANK1_BLOB[18:26]
    cover = RANK0_BLOB[:100] + sockaddr + RANK0_BLOB[108:]
    assert rendezvous_culprits(REFUSED, {0: cover, 1: RANK1_BLOB}, me=2) == (1,)
