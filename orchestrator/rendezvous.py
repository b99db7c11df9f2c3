"""What the orchestrator sees of each generation's rendezvous itself (a mixin of
:class:`~orchestrator.coordinator.Coordinator`, under :class:`~orchestrator.liveness.Liveness`): who came
to the store and when each member's presence and gloo address passed its tunnel, which tell a member that
came late from one that never came, and the rendezvous tests that find a member nobody can name
(:func:`orchestrator.membership.rendezvous_test`)."""

from __future__ import annotations

import logging

from . import membership, presence
from .membership import RENDEZVOUS_KEY, RendezvousTests

log = logging.getLogger("orchestrator.liveness")

# A gloo address that passed the tunnel less than this before the first report naming it still came late: a
# report reaches the orchestrator some time after its rank's connect wait ended (the culprits found, an HTTP call).
ADDRESS_SLACK_S = 1.0


class Rendezvous:
    """Needs the coordinator's ``generation``, ``round``, ``arrived``, ``posts``, ``reported_at``,
    ``checkin_clock``, ``membership_cfg``, ``slots``, ``_kv``, ``_set_kv`` and the liveness ``_judge``."""

    @property
    def rendezvous(self) -> RendezvousTests:
        """This coordinator's rendezvous tests, as persisted (:meth:`_save_rendezvous` after each change)."""
        if "_rendezvous_tests" not in self.__dict__:
            try:
                tests = RendezvousTests.load(self._kv(RENDEZVOUS_KEY))
            except (KeyError, TypeError, ValueError) as error:  # an older or hand-edited row: the tests start over
                log.warning(
                    "the rendezvous tests' row %r is unreadable (%r): starting them over", RENDEZVOUS_KEY, error
                )
                tests = RendezvousTests()
            self.__dict__["_rendezvous_tests"] = tests
        return self.__dict__["_rendezvous_tests"]

    def end_rendezvous_test(self) -> bool:
        """Give up the running rendezvous test (True if one was): the members left without the one sitting
        out are too few for a generation (the suspect left, say), and a test must never hold the swarm."""
        t = self.rendezvous
        if t.testing is None:
            return False
        log.warning("the rendezvous test of %s ends: too few members without it", t.testing)
        t.streak, t.testing = [], None
        self._save_rendezvous()
        return True

    def _save_rendezvous(self) -> None:
        self._set_kv(RENDEZVOUS_KEY, self.rendezvous.dump())

    def arrive(self, generation: int, hotkey: str, now: float) -> None:
        """A member's connection passed the store tunnel (the orchestrator's own observation: a member
        that checks in but never comes to the rendezvous is evicted like one that never checked in)."""
        if self.generation is not None and generation == self.generation.id:
            seen = self.arrived.get(generation, {})
            self.arrived = {generation: {hotkey: now, **seen}}

    def _namings(self, gen, round_: int, named: dict[str, list[str]]) -> dict[str, list[float]]:
        """When each member was named, earliest first, by the reports that still name it."""
        times: dict[str, list[float]] = {}
        for (reporter, hk), at in self.reported_at.get((gen.id, round_), ({}, {}))[1].items():
            if hk in named.get(reporter, ()):
                times.setdefault(hk, []).append(at)
        return {hk: sorted(t) for hk, t in times.items()}

    def _named_at(self, gen, round_: int, named: dict[str, list[str]]) -> dict[str, float]:
        """When a strict majority of each member's others had named it (their number is more than the
        colluders', so they cannot make it earlier than an honest report)."""
        k = (len(gen.members) - 1) // 2 + 1
        return {hk: t[k - 1] for hk, t in self._namings(gen, round_, named).items() if len(t) >= k}

    def _came_first(self, gen, round_: int, named: dict[str, list[str]], gave_up: set[str]) -> set[str]:
        """The members whose gloo address reached the store after they were first named (less
        :data:`ADDRESS_SLACK_S`: late, not absent; it was not there when that reporter's connect wait ended),
        and those that reported their group broke before a majority named them (the first to fail, not the
        cause: a store link that broke, say)."""
        reports = self.reported_at.get((gen.id, round_), ({}, {}))[0]
        namings, majority_at = self._namings(gen, round_, named), self._named_at(gen, round_, named)
        addressed = self.posts.get(gen.id, {}).get("address", {})
        came = {hk for hk, at in addressed.items() if hk in namings and at > namings[hk][0] - ADDRESS_SLACK_S}
        return came | {hk for hk in gave_up if hk in majority_at and reports.get(hk, float("inf")) < majority_at[hk]}

    def _test_rendezvous(self, gen, named: dict[str, list[str]]) -> None:
        """A break nobody was named for, where most reporters' gloo connect timed out: re-form without the
        next member to test (:func:`membership.rendezvous_test`)."""
        t = self.rendezvous
        unnamed = t.unnamed.pop((gen.id, self.round), set())
        # The generation broke (most members reported): the test runs when most reporters saw the connect time out.
        if any(named.values()) or 2 * len(unnamed & set(named)) <= len(named):
            self._save_rendezvous()
            return
        if len(t.streak) > self.membership_cfg.max_world_size:  # every member was tried by now: no test is left
            self._save_rendezvous()
            return
        t.streak.append((list(gen.members), t.testing))
        seniority = [hk for hk, _ in self.slots()]
        found = {hk: len(times) for hk, times in t.found.items()}
        t.testing = membership.rendezvous_test(t.streak, seniority, self.membership_cfg.min_world_size, found)
        self._save_rendezvous()
        log.warning(
            "generation %d's rendezvous broke with nobody to name (%d in a row): %s",
            gen.id,
            len(t.streak),
            f"{t.testing} sits out the next one" if t.testing else "no member left to test",
        )

    def passes_after(self, old) -> dict[str, tuple[int, float]]:
        """The slow starts once ``old`` ended (:func:`presence.passes_after`)."""
        if old is None:
            return self.slow_passes
        return presence.passes_after(self.slow_passes, old.id, self.posts.get(old.id, {}).get("presence", {}))

    def presence_deadline(self, gen) -> float:
        """When every member's presence must be in ``gen``'s store (:func:`membership.presence_deadline`; from a
        restart for a restored generation: nobody could come while the orchestrator was down)."""
        started = max(gen.started_at, self.checkin_clock.get(gen.id, gen.started_at))
        return membership.presence_deadline(started, self.membership_cfg.checkin_timeout_s)

    def late_presences(self, gen, round_: int, now: float) -> list[str]:
        """In the round ``gen`` formed in, the members whose presence passed the store tunnel after the
        generation's presence deadline (:func:`membership.presence_deadline`, less the slack), or, once that
        passed, never though they came to the store (the orchestrator's own observation). None known after a
        restart (this process did not see the rendezvous)."""
        if gen.id in self.checkin_clock or round_ != gen.started_round:
            return []
        deadline = self.presence_deadline(gen)
        presented = self.posts.get(gen.id, {}).get("presence", {})
        never = [hk for hk in self.arrived.get(gen.id, {}) if hk not in presented] if now >= deadline else []
        return sorted(never + [hk for hk, at in presented.items() if at > deadline - membership.PRESENCE_SLACK_S])

    def saw_post(self, generation: int, hotkey: str, what: str, now: float) -> None:
        """A member's presence or gloo address (``what``) reached the store (the orchestrator's own
        observation of when each member came to the rendezvous, and went on into gloo's connect)."""
        if self.generation is not None and generation == self.generation.id:
            seen = self.posts.get(generation, {})
            self.posts = {generation: {**seen, what: {hotkey: now, **seen.get(what, {})}}}
