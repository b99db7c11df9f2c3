"""Tests for utils.localnet.yuma, the local chain's Yuma epoch.

The reference vectors come from opentensor/subtensor:

- ``test_yuma_3_liquid_alpha_disabled``: Yuma3 dividends.
- ``test_bonds`` in ``pallets/subtensor/src/tests/epoch.rs``: original-Yuma u16
  bonds, which upstream asserts exactly, plus the I32F32 values it logs.
"""

from __future__ import annotations

import numpy as np
import pytest

from utils.localnet.yuma import (
    DEFAULT_KAPPA,
    U16_MAX,
    EpochInputs,
    _fx,
    _weighted_median_cols,
    epoch,
    max_upscale_to_u16,
    to_u16,
)


def u16(bonds):
    """Bonds as the u16 integers the chain stores."""
    return np.rint(np.asarray(bonds) * U16_MAX).astype(np.int64)


def make_inputs(stake, weights, **kw) -> EpochInputs:
    """EpochInputs with every uid active, permitted, registered at block 0, and no bonds yet."""
    stake = np.asarray(stake, dtype=float)
    n = stake.shape[0]
    defaults = dict(
        last_update=np.full(n, 10),
        block_at_registration=np.zeros(n, dtype=int),
        validator_permit=np.ones(n, dtype=bool),
        bonds=np.zeros((n, n)),
        current_block=11,
        activity_cutoff=5000,
    )
    defaults.update(kw)
    return EpochInputs(stake=stake, weights=np.asarray(weights, dtype=float), **defaults)


class Chain:
    """Just enough chain state to run several epochs in a row, as upstream's tests do."""

    def __init__(self, stake, block_at_registration, last_update, **params):
        n = len(stake)
        self.stake = np.asarray(stake, dtype=float)
        self.reg = np.asarray(block_at_registration, dtype=int)
        self.last_update = np.asarray(last_update, dtype=int).copy()
        self.weights = np.zeros((n, n))
        self.permit = np.zeros(n, dtype=bool)
        self.bonds = np.zeros((n, n))
        self.params = params

    def set_weights(self, uid, row, block):
        self.weights[uid] = row
        self.last_update[uid] = block

    def run(self, block):
        res = epoch(
            EpochInputs(
                stake=self.stake,
                weights=self.weights.copy(),
                last_update=self.last_update.copy(),
                block_at_registration=self.reg,
                validator_permit=self.permit,
                bonds=self.bonds,
                current_block=block,
                **self.params,
            )
        )
        # Round-trip through u16 storage exactly as the epoch pallet does (round(b·65535), then /65535).
        self.permit = res.validator_permit
        self.bonds = np.rint(np.clip(res.bonds, 0, 1) * U16_MAX) / U16_MAX
        return res


# ---------------------------------------------------------------------------
# Upstream reference vectors
# ---------------------------------------------------------------------------

# test_yuma_3_liquid_alpha_disabled: dividends, then bonds of uids 0..2 on
# columns 2..4. Upstream lists the bond targets but never checks them: its
# helper zips them with ``.skip(3)``, which leaves nothing to compare.
YUMA3_DIVIDENDS = [
    [0.3300, 0.3300, 0.3400, 0.0, 0.0],
    [0.3300, 0.3300, 0.3400, 0.0, 0.0],
    [0.3734, 0.3734, 0.2532, 0.0, 0.0],
    [0.3611, 0.3611, 0.2779, 0.0, 0.0],
    [0.3541, 0.3541, 0.2919, 0.0, 0.0],
    [0.3495, 0.3495, 0.3009, 0.0, 0.0],
]
YUMA3_BONDS = [
    [[0.0, 0.0250, 0.0], [0.0, 0.0250, 0.0], [0.0, 0.0250, 0.0]],
    [[0.0, 0.0494, 0.0], [0.0, 0.0494, 0.0], [0.0, 0.0494, 0.0]],
    [[0.0, 0.0731, 0.0], [0.0, 0.0731, 0.0], [0.0, 0.0481, 0.0250]],
    [[0.0, 0.0963, 0.0], [0.0, 0.0963, 0.0], [0.0, 0.0719, 0.0244]],
    [[0.0, 0.1189, 0.0], [0.0, 0.1189, 0.0], [0.0, 0.0951, 0.0238]],
    [[0.0, 0.1409, 0.0], [0.0, 0.1409, 0.0], [0.0, 0.1178, 0.0232]],
]


def run_yuma3_reference():
    """Replay upstream's scenario and return (dividends, bonds/65535) per epoch.

    The setup registers every uid at block 1 (``new_test_ext(1)``). Activity
    cutoff is 5000, kappa u16::MAX/2, bonds_penalty 0, bonds_moving_average
    975000, three validator permits and tempo 1. The setup epoch runs at
    block 2 with no weights and hands out the permits.

    Epoch e: validators 0..2 set weights at block 2+e, and the epoch runs at
    block 3+e. Weights are (3: 65535, 4: 0), except in epoch 2, the third
    epoch, where validator 2 sets (3: 0, 4: 65535).
    """
    chain = Chain(
        stake=[33, 33, 34, 0, 0],
        block_at_registration=[1] * 5,
        last_update=[1] * 5,
        activity_cutoff=5000,
        kappa=DEFAULT_KAPPA,
        bonds_penalty=0.0,
        bonds_moving_average=975_000,
        max_allowed_validators=3,
        owner_uid=0,
        yuma3=True,
        tempo=1,
    )
    setup = chain.run(block=2)
    assert setup.validator_permit.tolist() == [True, True, True, False, False]
    dividends, bonds = [], []
    for e in range(6):
        block = 2 + e
        for v in range(3):
            row = np.zeros(5)
            row[4 if (e == 2 and v == 2) else 3] = U16_MAX
            chain.set_weights(v, row, block)
        res = chain.run(block=block + 1)
        dividends.append(res.dividends)
        bonds.append(res.bonds[:3, 2:5])
    return np.array(dividends), np.array(bonds)


def test_reference_yuma3_liquid_alpha_disabled():
    dividends, bonds = run_yuma3_reference()
    err = np.abs(dividends - np.array(YUMA3_DIVIDENDS)).max()
    # The targets are printed to 4 decimals, so rounding alone leaves up to 5e-5.
    assert err < 1e-4, f"max abs dividend error {err:.2e}"
    # 1e-3 is the epsilon upstream meant to check the bonds with.
    assert np.abs(bonds - np.array(YUMA3_BONDS)).max() < 1e-3


def test_reference_yuma3_stored_bonds_are_raw_u16_proportion():
    """Yuma3 stores floor(EMA·65535), not normalized: the first EMA is 0.025 → 1638."""
    _, bonds = run_yuma3_reference()
    assert round(bonds[0][0][1] * U16_MAX) == 1638  # floor(0.025 * 65535)
    assert bonds[0][0][1] == 1638 / U16_MAX


def run_original_yuma_reference():
    """Replay upstream's test_bonds (Yuma3 off) and return each epoch's result (by block).

    Setup: 8 uids registered at block 0 with stake [1, 2, 3, 4, 0, 0, 0, 0];
    tempo 1; bonds_penalty 65535; the default bonds_moving_average of 900000;
    8 validator slots; no owner among the uids (upstream logs uid 0's
    self-weight as masked). The setup epoch runs at block 0. Weights are set
    one block before each later epoch.
    """
    chain = Chain(
        stake=[1, 2, 3, 4, 0, 0, 0, 0],
        block_at_registration=[0] * 8,
        last_update=[0] * 8,
        activity_cutoff=5000,
        kappa=DEFAULT_KAPPA,
        bonds_penalty=1.0,
        bonds_moving_average=900_000,
        max_allowed_validators=8,
        owner_uid=None,
        yuma3=False,
        tempo=1,
    )
    chain.run(block=0)
    srv = np.zeros(8)
    srv[4:] = [U16_MAX // 4, U16_MAX // 2, (U16_MAX // 4) * 3, U16_MAX]
    for v in range(4):
        chain.set_weights(v, srv, block=1)
    out = {1: chain.run(block=1)}
    script = {
        2: (0, "self"),  # val1 self-weight only
        3: (1, "self"),  # val2 self-weight only
        4: (2, "self"),  # val3 self-weight only
        5: (2, "srv4"),  # val3 -> srv4 only
    }
    for block in range(2, 9):
        if block in script:
            uid, kind = script[block]
            row = np.zeros(8)
            row[uid if kind == "self" else 7] = U16_MAX
            chain.set_weights(uid, row, block=block - 1)
        out[block] = chain.run(block=block)
    return out


def test_reference_original_yuma_bonds_exact_u16():
    out = run_original_yuma_reference()
    # (epoch block, column) -> bonds[0..3][column], as asserted by upstream.
    expected = {
        (1, 4): [16383, 32767, 49151, 65535],
        (2, 4): [14582, 32767, 49151, 65535],
        (3, 4): [12603, 28321, 49151, 65535],
        (4, 7): [12602, 28320, 49150, 65535],
        (5, 7): [10951, 24609, 49150, 65535],
        (6, 7): [9559, 21482, 49150, 65535],
        (7, 7): [8376, 18824, 49150, 65535],
    }
    for (block, col), want in expected.items():
        got = u16(out[block].bonds)[:4, col]
        assert got.tolist() == want, (block, col, got)
    # Whole rows that upstream logs as the next epoch's input (the "B:" lines).
    # They include the truncation drift of one LSB per epoch on the idle columns.
    rows = {
        5: [[12601, 10951], [28319, 24609], [49149, 49150], [65535, 65535]],
        6: [[12600, 9559], [28318, 21482], [49148, 49150], [65535, 65535]],
        7: [[12599, 8376], [28317, 18824], [49147, 49150], [65535, 65535]],
    }
    for block, want in rows.items():
        got = u16(out[block].bonds)[:4]
        for i, (idle, srv4) in enumerate(want):
            assert got[i, 4:7].tolist() == [idle] * 3, (block, i)
            assert got[i, 7] == srv4, (block, i)
        assert not got[:, :4].any() and not out[block].bonds[4:].any()


def test_reference_original_yuma_logged_fixed_point_values():
    """Intermediate vectors agree with upstream's logged I32F32 values (10 decimals)."""
    out = run_original_yuma_reference()
    first = out[1]
    np.testing.assert_allclose(first.consensus[4:], [0.0999975584, 0.2000012207, 0.2999926754, 0.400008545], atol=1e-10)
    np.testing.assert_allclose(
        first.incentive[4:], [0.0999975582, 0.2000012207, 0.2999926752, 0.4000085455], atol=1e-10
    )
    np.testing.assert_allclose(first.validator_trust[:4], [0.9999999995] * 4, atol=1e-10)
    np.testing.assert_allclose(
        first.server_emission[4:], [0.049998779, 0.1000006103, 0.1499963375, 0.2000042726], atol=1e-10
    )
    logged_dividends = {
        1: [0.0999999978, 0.1999999983, 0.3000000012, 0.4000000022],
        2: [0.0899967032, 0.2022211233, 0.303334432, 0.404447741],
        3: [0.0809936118, 0.1819995677, 0.3158592721, 0.421147548],
        5: [0.0728874663, 0.1637972582, 0.3271309866, 0.4361842885],
        6: [0.0655988548, 0.1474132247, 0.3372762585, 0.4497116616],
        7: [0.0590361361, 0.1326722752, 0.3464062694, 0.4618853189],
    }
    for block, want in logged_dividends.items():
        # One grid step is 2.3e-10; the epoch-1 log differs from us by one step in one entry.
        np.testing.assert_allclose(out[block].dividends[:4], want, atol=5e-10, err_msg=str(block))
    # Block 4: every validator except uid 3 weights only itself, so consensus
    # is 0 everywhere. Emission then falls back to active stake.
    assert not out[4].incentive.any() and not out[4].dividends.any()
    np.testing.assert_allclose(out[4].validator_emission[:4], [0.1, 0.2, 0.3, 0.4], atol=1e-9)
    assert out[5].trust[7] == pytest.approx(0.6087041323, abs=1e-10)


# ---------------------------------------------------------------------------
# Consensus: the vectorized weighted median equals upstream's bisection
# ---------------------------------------------------------------------------


def upstream_weighted_median(stake, score, minority):
    """Port of math.rs ``weighted_median``: mid-pivot bisection over a stake integral."""
    idx = list(range(len(stake)))
    lo, hi = 0.0, float(sum(stake))
    for _ in range(len(stake) + 1):
        if not idx:
            return 0.0
        if len(idx) == 1:
            return score[idx[0]]
        pivot = score[idx[len(idx) // 2]]
        lower = [i for i in idx if score[i] < pivot]
        upper = [i for i in idx if score[i] > pivot]
        lo_stake = sum(stake[i] for i in lower)
        hi_stake = sum(stake[i] for i in upper)
        if minority < lo + lo_stake and lower:
            idx, hi = lower, lo + lo_stake
        elif hi - hi_stake <= minority and upper:
            idx, lo = upper, hi - hi_stake
        else:
            return pivot
    return 0.0


@pytest.mark.parametrize("kappa", [0.0, 0.3, DEFAULT_KAPPA, 0.5, 0.8, 1.0])
def test_weighted_median_matches_upstream_bisection(kappa):
    rng = np.random.default_rng(7)
    for _ in range(40):
        m, n = rng.integers(1, 7), rng.integers(1, 6)
        stake = _fx(rng.integers(0, 4, size=m) / 3.0)
        # Few distinct values, so ties (and zeros) are common, as in real weights.
        score = _fx(rng.integers(0, 4, size=(m, n)) / 4.0)
        got = _weighted_median_cols(stake, score, kappa)
        voters = stake > 0
        if not voters.any():
            assert not got.any()
            continue
        s = stake[voters] / stake[voters].sum()
        s = _fx(s)
        minority = s.sum() - kappa
        for c in range(n):
            want = upstream_weighted_median(list(s), list(score[voters, c]), minority)
            assert got[c] == want, (stake, score[:, c], kappa)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


def one_validator_weights(n, row_values, setter=0):
    w = np.zeros((n, n))
    for j, v in row_values.items():
        w[setter, j] = v
    return w


def test_single_validator_incentive_follows_weights():
    w = one_validator_weights(4, {1: 0.5 * U16_MAX, 2: 0.3 * U16_MAX, 3: 0.2 * U16_MAX})
    res = epoch(make_inputs([1, 0, 0, 0], w))
    np.testing.assert_allclose(res.incentive, [0, 0.5, 0.3, 0.2], atol=1e-6)
    np.testing.assert_allclose(res.consensus[1:], [0.5, 0.3, 0.2], atol=1e-6)
    np.testing.assert_allclose(res.dividends, [1, 0, 0, 0])
    np.testing.assert_allclose(res.trust[1:], [1, 1, 1])
    assert res.validator_trust[0] == pytest.approx(1.0, abs=1e-8)


def test_weights_from_non_permitted_uid_are_ignored():
    w = one_validator_weights(4, {2: U16_MAX})
    w[1, 3] = U16_MAX  # uid 1 has stake but holds no stored permit
    permit = np.array([True, False, False, False])
    res = epoch(make_inputs([1, 5, 0, 0], w, validator_permit=permit))
    np.testing.assert_allclose(res.incentive, [0, 0, 1, 0])
    # The new permit goes by stake regardless; it takes effect next epoch.
    assert res.validator_permit[:2].tolist() == [True, True]


def test_self_weight_is_ignored_except_for_owner():
    w = one_validator_weights(3, {0: U16_MAX, 2: U16_MAX})
    res = epoch(make_inputs([1, 0, 0], w))
    np.testing.assert_allclose(res.incentive, [0, 0, 1])
    # The subnet owner keeps its self-weight (mask_diag_sparse_except_index).
    owned = epoch(make_inputs([1, 0, 0], w, owner_uid=0))
    np.testing.assert_allclose(owned.incentive, [0.5, 0, 0.5], atol=1e-9)


def test_owner_always_holds_permit_and_skips_stake_threshold():
    stake = [0.5, 10, 10, 0]
    w = one_validator_weights(4, {3: U16_MAX}, setter=0)
    permit = np.zeros(4, dtype=bool)  # no stored permits at all, the owner's included
    res = epoch(
        make_inputs(stake, w, validator_permit=permit, owner_uid=0, max_allowed_validators=2, stake_threshold=1.0)
    )
    assert res.validator_permit.tolist() == [True, True, True, False]
    # The owner's stored permit is forced on, so the owner validates this epoch.
    # Its stake (0.5) is below the threshold (1.0) but exempt.
    np.testing.assert_allclose(res.incentive, [0, 0, 0, 1])
    assert res.dividends[0] == 1.0
    plain = epoch(make_inputs(stake, w, validator_permit=permit, max_allowed_validators=2, stake_threshold=1.0))
    assert plain.validator_permit.tolist() == [False, True, True, False]
    assert not plain.incentive.any()


def test_inactive_validator_weights_are_ignored():
    w = one_validator_weights(4, {2: U16_MAX})
    w[1, 3] = U16_MAX
    last_update = np.array([990, 100, 0, 0])  # uid 1 last set weights at block 100
    res = epoch(make_inputs([1, 1, 0, 0], w, last_update=last_update, current_block=1000, activity_cutoff=500))
    assert res.active.tolist() == [True, False, False, False]
    np.testing.assert_allclose(res.incentive, [0, 0, 1, 0])
    assert res.dividends[1] == 0.0


def test_activity_cutoff_boundary_is_inclusive():
    res = epoch(
        make_inputs([1, 0], np.zeros((2, 2)), last_update=np.array([500, 499]), current_block=1000, activity_cutoff=500)
    )
    assert res.active.tolist() == [True, False]


def test_miner_registered_after_weights_gets_none_of_them():
    w = one_validator_weights(3, {1: U16_MAX, 2: U16_MAX})
    # The weights were set at block 10; uid 2 was re-registered at block 10
    # (the mask is `updated <= registered`).
    reg = np.array([0, 0, 10])
    res = epoch(make_inputs([1, 0, 0], w, block_at_registration=reg))
    np.testing.assert_allclose(res.incentive, [0, 1, 0])


def test_commit_reveal_masks_commits_older_than_registration():
    w = one_validator_weights(3, {1: U16_MAX, 2: U16_MAX})
    reg = np.array([0, 0, 8])
    commit = np.array([5, np.iinfo(np.int64).max, np.iinfo(np.int64).max])
    res = epoch(make_inputs([1, 0, 0], w, block_at_registration=reg, commit_block=commit))
    np.testing.assert_allclose(res.incentive, [0, 1, 0])


def test_minority_validator_outlier_is_clipped():
    n = 5
    w = np.zeros((n, n))
    w[0, 3] = w[1, 3] = U16_MAX  # majority (90% of stake) -> miner 3
    w[2, 4] = U16_MAX  # minority (10%) -> outlier miner 4
    res = epoch(make_inputs([45, 45, 10, 0, 0], w))
    assert res.consensus[4] == 0.0 and res.incentive[4] == 0.0
    np.testing.assert_allclose(res.incentive, [0, 0, 0, 1, 0])
    assert res.validator_trust[2] == 0.0 and res.validator_trust[0] == 1.0
    assert res.dividends[2] == 0.0


@pytest.mark.parametrize("yuma3", [True, False])
def test_outputs_are_normalized(yuma3):
    rng = np.random.default_rng(3)
    n = 12
    w = np.floor(rng.random((n, n)) * U16_MAX)
    w[6:] = 0  # only the first six uids validate
    stake = np.r_[rng.random(6) * 1000, np.zeros(6)]
    res = epoch(make_inputs(stake, w, yuma3=yuma3, bonds_penalty=0.5))
    for vec in (res.incentive, res.dividends, res.rank):
        assert vec.sum() == pytest.approx(1.0, abs=1e-8)
        assert (vec >= 0).all()
    assert (res.server_emission + res.validator_emission).sum() == pytest.approx(1.0, abs=1e-8)
    assert ((res.consensus >= 0) & (res.consensus <= 1)).all()
    assert ((res.trust >= 0) & (res.trust <= 1)).all()
    # With no weights at all, everything is 0; emission falls back to stake.
    empty = epoch(make_inputs(stake, np.zeros((n, n)), yuma3=yuma3))
    assert empty.incentive.sum() == 0 and empty.dividends.sum() == 0
    assert empty.validator_emission.sum() == pytest.approx(1.0, abs=1e-8)


def test_deterministic_and_pure():
    rng = np.random.default_rng(11)
    n = 8
    w = np.floor(rng.random((n, n)) * U16_MAX)
    bonds = np.floor(rng.random((n, n)) * U16_MAX)
    inp = make_inputs(rng.random(n), w, bonds=bonds / U16_MAX)
    before = {k: np.copy(getattr(inp, k)) for k in ("stake", "weights", "bonds", "validator_permit")}
    a, b = epoch(inp), epoch(inp)
    for field in a.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(inp, k), v)


def test_validator_permit_top_k_nonzero_ties_go_to_higher_uid():
    res = epoch(make_inputs([5, 5, 5, 0, 1], np.zeros((5, 5)), max_allowed_validators=2))
    # Stable ascending sort: the lower uid among equal stakes loses its permit.
    assert res.validator_permit.tolist() == [False, True, True, False, False]
    many = epoch(make_inputs([5, 0, 1], np.zeros((3, 3)), max_allowed_validators=10))
    assert many.validator_permit.tolist() == [True, False, True]  # zero stake never gets a permit


def test_bonds_rows_follow_permits():
    n = 4
    w = one_validator_weights(n, {3: U16_MAX}, setter=0)
    bonds = np.zeros((n, n))
    bonds[1, 3] = 777 / U16_MAX  # uid 1 loses its permit: row cleared
    bonds[2, 3] = 555 / U16_MAX  # uid 2 never had a permit: row left as stored
    permit = np.array([True, True, False, False])
    res = epoch(make_inputs([1, 0, 0, 0], w, bonds=bonds, validator_permit=permit))
    assert res.validator_permit.tolist() == [True, False, False, False]
    assert res.bonds[1].sum() == 0 and res.bonds[2, 3] == 555 / U16_MAX
    # New Yuma3 bond: floor((1 - 0.9) * 65535).
    assert u16(res.bonds)[0, 3] == np.floor(_fx(1 - float(_fx(0.9))) * U16_MAX)


def test_bond_column_resets_when_miner_registered_since_last_epoch():
    n = 3
    w = one_validator_weights(n, {1: U16_MAX, 2: U16_MAX})
    bonds = np.zeros((n, n))
    bonds[0, 1] = bonds[0, 2] = 30000 / U16_MAX
    # Registered at block 5. With tempo 10 the last epoch was at block 1 (11 - 10),
    # so uid 2 is new and its column restarts from the weights.
    reg = np.array([0, 0, 5])
    res = epoch(make_inputs([1, 0, 0], w, bonds=bonds, block_at_registration=reg, tempo=10))
    alpha = 1 - float(_fx(0.9))
    ema_kept = _fx(alpha * 0.5) + _fx((1 - alpha) * _fx(30000 / U16_MAX))
    assert u16(res.bonds)[0, 1] == np.floor(ema_kept * U16_MAX)
    assert u16(res.bonds)[0, 2] == np.floor(_fx(alpha * 0.5) * U16_MAX)
    # last_mechanism_step_block wins over tempo when set: the last epoch was at
    # block 6, so registering at block 5 is not recent.
    res2 = epoch(
        make_inputs([1, 0, 0], w, bonds=bonds, block_at_registration=reg, tempo=10, last_mechanism_step_block=6)
    )
    assert res2.bonds[0, 2] == res2.bonds[0, 1]


def test_original_yuma_penalty_and_clipping_shape_bonds_and_dividends():
    """Yuma3 off: the outlier earns no incentive, and bonds_penalty decides whether it earns bonds."""
    n = 5
    w = np.zeros((n, n))
    w[0, 3] = w[1, 3] = U16_MAX
    w[2, 3] = w[2, 4] = U16_MAX / 2  # half on the outlier
    stake = [40, 40, 20, 0, 0]
    strict = epoch(make_inputs(stake, w, yuma3=False, bonds_penalty=1.0))
    lax = epoch(make_inputs(stake, w, yuma3=False, bonds_penalty=0.0))
    half = epoch(make_inputs(stake, w, yuma3=False, bonds_penalty=0.5))
    assert strict.incentive[4] == 0.0
    # The per-stake dividend of validator 2 is lower than its peers'.
    assert strict.dividends[2] / 0.2 < strict.dividends[0] / 0.4
    # Penalty 1 builds bonds on clipped weights (none on the outlier); penalty 0 on raw weights.
    assert strict.bonds[2, 4] == 0.0
    assert lax.bonds[2, 4] == 1.0  # only bonder -> column max-upscaled to 65535
    assert half.bonds[2, 4] == 1.0
    # Stored original-Yuma bonds are column max-upscaled: the column max is 65535.
    assert strict.bonds[:3, 3].max() == 1.0
    # The EMA weights bonds by stake: 40/40/10 on column 3 → 65535/65535/16383.
    assert u16(strict.bonds)[:3, 3].tolist() == [65535, 65535, 16383]


def test_bond_storage_round_trip_is_exact():
    k = np.arange(U16_MAX + 1)
    assert (np.rint((k / U16_MAX) * U16_MAX) == k).all()


def test_to_u16_and_max_upscale():
    assert to_u16(np.array([0.0, 0.5, 1.0, 1.5, -0.1])).tolist() == [0, 32767, 65535, 65535, 0]
    assert to_u16(np.array([1 / 3])).dtype == np.uint16
    assert max_upscale_to_u16(np.array([0.25, 0.5, 0.0])).tolist() == [32768, 65535, 0]
    assert max_upscale_to_u16(np.zeros(3)).tolist() == [0, 0, 0]


def test_large_subnet_is_fast():
    import time

    rng = np.random.default_rng(0)
    n = 256
    w = np.floor(rng.random((n, n)) * U16_MAX) * (rng.random((n, n)) < 0.3)
    w[64:] = 0
    inp = make_inputs(rng.random(n) * 1e6, w, bonds=np.floor(rng.random((n, n)) * 1000) / U16_MAX)
    t0 = time.perf_counter()
    epoch(inp)
    assert time.perf_counter() - t0 < 1.0
