"""Who is slow to present at a rendezvous (pure functions, no I/O; :class:`~orchestrator.liveness.Liveness`
applies them): the check-in rules give every member a cold start's time, and these keep a member that takes it
at every re-form from holding each one up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# Every member may take a cold start's time to post its presence (imports, the model's build: the check-in
# rules, up to --checkin-timeout), but a member whose miner runs re-forms in a second or two. One slower than
# SLOW_PRESENCE_GRACE_S after a strict majority presented, and SLOW_PRESENCE_FLOOR_S after the generation
# formed (colluders presenting at once move the first, not the second), is slow to present: once per
# SLOW_PASS_WINDOW_S that is its slow start; a second time it is removed (:func:`slow_pass`).
SLOW_PRESENCE_GRACE_S = 15.0
SLOW_PRESENCE_FLOOR_S = 20.0
SLOW_PASS_WINDOW_S = 600.0


def slow_to_present(
    members: Sequence[str],
    presented: Mapping[str, float],
    started_at: float,
    now: float,
    grace_s: float = SLOW_PRESENCE_GRACE_S,
    floor_s: float = SLOW_PRESENCE_FLOOR_S,
) -> list[str]:
    """The members whose presence has not passed the store tunnel (``presented``: hotkey → when) ``grace_s``
    after the k-th member's did, k = ⌊(n − 1)/2⌋ + 1 (an honest member's time or later, as in
    :func:`~orchestrator.membership.never_checked_in`), nor ``floor_s`` after the generation formed. Nobody before k members presented."""
    times = sorted(presented[hk] for hk in members if hk in presented)
    k = (len(members) - 1) // 2 + 1
    if len(times) < k or now < max(times[k - 1] + grace_s, started_at + floor_s):
        return []
    return [hk for hk in members if hk not in presented]


def slow_pass(
    passes: Mapping[str, tuple[int, float]],
    slow: Iterable[str],
    generation: int,
    now: float,
    window_s: float = SLOW_PASS_WINDOW_S,
) -> tuple[list[str], dict[str, tuple[int, float]]]:
    """Of the members ``slow`` to present in ``generation`` (:func:`slow_to_present`), those to remove: the ones
    whose slow start (``passes``: hotkey → (generation, when)) was in another generation less than ``window_s``
    ago; and the passes after this call. A first slow start within the window is granted (the member keeps the
    check-in rules' time: a restarted miner, a host that froze), so a member keeping its presence back holds at
    most one re-form per window for a cold start's time and every other for about ``SLOW_PRESENCE_GRACE_S``.
    Each removal is a departure and a dispute with :data:`~orchestrator.membership.SLOW` (:func:`~orchestrator.membership.sitting_out`: twice, and it sits out), and
    ends the member's slow start: rejoining, it may have another (a rejoin starts cold)."""
    kept = {hk: v for hk, v in passes.items() if now - v[1] < window_s}
    remove = [hk for hk in slow if hk in kept and kept[hk][0] != generation]
    after = {**{hk: (generation, now) for hk in slow if hk not in kept}, **kept}
    return remove, {hk: v for hk, v in after.items() if hk not in remove}


def passes_after(
    passes: Mapping[str, tuple[int, float]], generation: int, presented: Iterable[str]
) -> dict[str, tuple[int, float]]:
    """The slow starts (:func:`slow_pass`) once ``generation`` ended: one granted there to a member that never
    presented in it is not used up (the generation ended before its start did: colluders ending it at once must
    not make a cold start count twice)."""
    came = set(presented)
    return {hk: v for hk, v in passes.items() if v[0] != generation or hk in came}
