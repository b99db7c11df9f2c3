"""Messages of the orchestrator's API: membership, rounds, the agreed contribution set of a round,
checkpoints, status, run info."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from template.config.run import MembershipConfig, TrainingConfig
from template.wire.base import GenerationId, Model, Round, Sha256, finite
from template.wire.dataset import DatasetManifest


class RunInfo(Model):
    """`GET /v1/run`: the run's full configuration and its dataset manifest."""

    run_id: str
    training: TrainingConfig
    membership: MembershipConfig
    dataset_id: Sha256
    dataset: DatasetManifest


# -- membership ------------------------------------------------------------------


class JoinRequest(Model):
    device: Literal["cpu", "cuda"] = "cpu"
    client_version: str = Field("", max_length=64)


class Member(Model):
    rank: int = Field(ge=0)
    hotkey: str


class Assignment(Model):
    """Who trains in this generation, where its store is, and the secret prefix
    (only ever sent to members, over a signed response)."""

    generation: GenerationId
    rank: int = Field(ge=0)
    world_size: int = Field(ge=1)
    members: list[Member]
    store_host: str
    store_port: int = Field(ge=1, le=65535)
    store_prefix: str
    round: Round
    checkpoint: Optional[Sha256] = Field(None, description="state at the start of `round`; None = init from seed")
    run_id: str
    presence_left_s: Optional[float] = Field(
        None,
        ge=0,
        le=86400,
        description="seconds left, as the orchestrator answered, until every rank's presence must be in the store: "
        "every rank gives up waiting at that one moment (none goes on into gloo without another), and the "
        "orchestrator, which sees each presence pass its tunnel, knows who came after it",
    )


PRESENCE_DOMAIN = "tensorswarm.present.v1"


def presence_message(run_id: str, generation: int, rank: int) -> bytes:
    """What a rank signs to say it reached its generation's rendezvous (domain-tagged, bound to the run,
    the generation and the rank, so it proves nothing anywhere else); its presence key holds the hex."""
    return f"{PRESENCE_DOMAIN}|{run_id}|{generation}|{rank}".encode()


TUNNEL_GREETING = b"tensorswarm-store/1 "  # then a fresh challenge (hex) and a newline
TUNNEL_DOMAIN = "tensorswarm.store-tunnel.v1"
TUNNEL_LINE_MAX = 1024  # bytes of any handshake line, newline included


class TunnelHello(Model):
    """A rank's answer to the store tunnel's challenge (one JSON line): its hotkey's signature over the
    challenge, bound to the run, the orchestrator and the generation it is a member of. The
    orchestrator answers ``OK`` and pipes the connection to the generation's TCPStore, or ``DENIED``
    and a reason, and closes it."""

    hotkey: str = Field(min_length=1, max_length=64)
    generation: GenerationId
    signature: str = Field(pattern=r"^[0-9a-f]{128}$", description="64-byte signature of message(), hex")

    @staticmethod
    def message(run_id: str, orchestrator: str, generation: int, challenge: str) -> bytes:
        return f"{TUNNEL_DOMAIN}|{run_id}|{orchestrator}|{generation}|{challenge}".encode()


class AssignmentResponse(Model):
    status: Literal["assigned", "waiting", "cooldown", "not_joined"]
    assignment: Optional[Assignment] = None
    queue_position: Optional[int] = None
    retry_after_s: float = 1.0
    detail: str = ""


class HeartbeatRequest(Model):
    generation: Optional[GenerationId] = None
    round: Optional[Round] = None
    step: Optional[int] = Field(None, ge=0, le=2**40)
    loss: Optional[float] = None
    failed: bool = Field(False, description="the member's process group for `generation` broke")
    detail: str = Field("", max_length=500)

    _loss_finite = field_validator("loss")(classmethod(lambda cls, v: finite(v)))


class HeartbeatResponse(Model):
    generation: Optional[GenerationId]
    round: Round
    reassign: bool = Field(description="your assignment changed: fetch GET /v1/assignment")


class LeaveRequest(Model):
    reason: str = Field("", max_length=500)


class CheckIn(Model):
    """`POST /v1/checkin`: this member's miner started for `generation` and is about to join its group.
    A member that has not checked in `checkin_timeout_s` after its generation formed is removed."""

    generation: GenerationId


class StallReport(Model):
    """`POST /v1/stall`: in `round` of `generation` this member's process group broke; its exchange
    timed out waiting for the ranks in `missing` (its other peers delivered), or, empty, it cannot name
    anyone (a rendezvous or an agreement that never completed). A member named by a strict majority of
    the others is removed; otherwise the generation re-forms if any member was named or most members
    say the group broke. The reporters are not blamed."""

    generation: GenerationId
    round: Round
    missing: list[int] = Field(default_factory=list, max_length=4096)
    rendezvous: bool = Field(
        False,
        description="the group broke while forming (this rank gave up waiting at the rendezvous): a member "
        "that says so is not evicted for leaving a rendezvous that most of those naming it also saw fail",
    )
    unnamed_connect: bool = Field(
        False,
        description="the group never formed because gloo's connect timed out with no peer to name: when most "
        "members say so, the orchestrator re-forms without one member at a time to find the one that breaks it",
    )


class RoundReport(Model):
    """A member finished `round` of `generation`; `state` is sha256 of the new
    global state's canonical checkpoint bytes."""

    generation: GenerationId
    round: Round
    state: Sha256
    loss: Optional[float] = None
    state_bytes: Optional[int] = Field(
        None, ge=1, le=2**40, description="the new state's size in bytes: its checkpoint upload must be this size"
    )
    bytes_sent: Optional[int] = Field(None, ge=0, le=2**40, description="bytes this rank sent in the round's exchange")

    _loss_finite = field_validator("loss")(classmethod(lambda cls, v: finite(v)))


class RoundResponse(Model):
    accepted: bool
    round: Round = Field(description="the round to train next")
    agreed: Optional[Sha256] = Field(None, description="the agreed state for `round`, once every member reported")
    detail: str = ""


class MisbehaviorReport(Model):
    """A member dropped `accused`'s contribution in `round` (bad signature,
    malformed, non-finite, absurd norm)."""

    generation: GenerationId
    round: Round
    accused: str = Field(min_length=40, max_length=64)
    reason: str = Field(max_length=200)


# -- the agreed contribution set of a diloco round --------------------------------------

MAX_MEMBERS = 4096  # MembershipConfig.max_world_size's bound: no vector is longer than a generation


# How long after the first member's report the orchestrator waits for the others before deciding.
# Every member reports right after the same collective, so reports arrive within seconds; a member still
# silent after this has stalled or died, and the decision goes ahead without it.
AGREEMENT_WINDOW_S = 60.0
AGREEMENT_GRACE_S = 30.0  # a member waits this much longer than the deadline before giving up
# A member may wait for a round's contribution decision on the orchestrator (a long poll) at most this
# long per request, rather than poll over the network.
DECISION_WAIT_MAX_S = 5.0


def contribution_deadline_s(round_timeout_s: float) -> float:
    """The decision's deadline after the first report: :data:`AGREEMENT_WINDOW_S`, never more than
    half the run's round timeout (so a late decision cannot outlast the round)."""
    return min(AGREEMENT_WINDOW_S, round_timeout_s / 2)


def contribution_context(run_id: str, generation: int) -> str:
    """The context every contribution signature of a generation binds (see
    ``template.wire.signing.contribution_message``): the miners sign with it, the orchestrator checks
    reported signatures with it."""
    return f"{run_id}/{generation}"


class SignedHash(Model):
    """What a member received validly signed from one sender: the payload's sha256 and the sender's
    signature over (context, round, sender rank, sha256), so the orchestrator can check the claim."""

    sha256: Sha256
    signature: str = Field(pattern=r"^[0-9a-f]{128}$", description="64-byte signature, hex")


class ContributionReport(Model):
    """`POST /v1/contributions`: what a member received in `round`'s exchange, by sender rank (None:
    nothing validly signed). One per (generation, round, member); sending the same again is harmless."""

    generation: GenerationId
    round: Round
    received: list[Optional[SignedHash]] = Field(max_length=MAX_MEMBERS)


class ContributionDecision(Model):
    """`GET /v1/contributions/{generation}/{round}` (members of that generation): the contribution set
    every member aggregates, decided once every member reported or after a deadline."""

    generation: GenerationId
    round: Round
    decided: bool
    included: list[Optional[Sha256]] = Field(default_factory=list, max_length=MAX_MEMBERS, description="by rank")
    lacking: list[list[int]] = Field(
        default_factory=list, max_length=MAX_MEMBERS, description="by sender: members without the included payload"
    )
    reasons: list[Optional[str]] = Field(default_factory=list, max_length=MAX_MEMBERS, description="why not included")
    reporters: list[int] = Field(default_factory=list, max_length=MAX_MEMBERS)
    retry_after_s: float = Field(0.05, ge=0, le=60, description="undecided: poll again after this long")


class Ack(Model):
    ok: bool = True
    detail: str = ""


# -- checkpoints and status ------------------------------------------------------------


class CheckpointInfo(Model):
    sha256: Sha256
    round: Round
    size: int
    created_at: float


class RoundRecord(Model):
    """An agreed round, for validators: who trained it and which state it produced."""

    round: Round
    generation: GenerationId
    members: list[str] = Field(description="hotkeys in rank order")
    state: Sha256 = Field(description="global state after the round")
    loss: Optional[float]
    completed_at: float
    included: Optional[list[Optional[Sha256]]] = Field(
        None,
        max_length=MAX_MEMBERS,
        description="diloco: by rank, the sha256 of the contribution the round aggregated (None: not "
        "included); `state` is what these produce from the previous state. None: no agreed set (ddp, fsdp)",
    )


class MemberStatus(Model):
    rank: Optional[int]
    hotkey: str
    uid: Optional[int]
    state: Literal["member", "waiting", "cooldown"]
    last_heartbeat_s: Optional[float]
    round: Optional[int]
    step: Optional[int]
    loss: Optional[float]
    reports: int = Field(0, description="members that reported this hotkey's contributions as bad (last 100 rounds)")
    checked_in_s: Optional[float] = Field(
        None, description="seconds since this member's miner checked in to the current generation; None: not yet"
    )


class Status(Model):
    """`GET /v1/status` (public). Never carries the store prefix."""

    run_id: str
    netuid: int
    generation: Optional[int]
    round: int
    world_size: int
    members: list[MemberStatus]
    waiting: list[MemberStatus]
    state: Optional[str] = Field(None, description="agreed global state hash at the start of `round`")
    checkpoint: Optional[CheckpointInfo]
    training: TrainingConfig
    membership: MembershipConfig
    dataset_id: str
    loss_history: list[tuple[int, float]] = Field(default_factory=list)
    evictions: dict[str, int] = Field(
        default_factory=dict,
        description="hotkey -> times it was removed for holding the others up (never checked in, stalled an "
        "exchange); at EVICTIONS_BEFORE_REFUSAL it is refused for the run",
    )
    sitting_out: list[str] = Field(
        default_factory=list,
        description="hotkeys kept out of generations for now: pairs whose stall reports named each other, "
        "without a majority, in generations that broke (nobody is blamed; both sit out)",
    )
