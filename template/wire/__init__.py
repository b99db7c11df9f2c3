"""Wire messages between tensorswarm roles, defined once and used by both the servers (FastAPI request and
response models) and the clients (httpx + these models), and the domain-tagged signing of receipts and
contributions. Every model forbids unknown fields and bounds its values, so a malformed message is a 4xx
with a reason, never a crash.

May import: ``template.config`` and pydantic/bittensor's keypair. Never torch or numpy (checked by
import-linter), so ``import template.wire`` stays light for every client. ``from template import wire as p``
gives the whole vocabulary as ``p.Receipt``, ``p.Assignment``, ...
"""

from template.config.run import Aggregator, Compression, MembershipConfig, Strategy, TrainingConfig
from template.wire.base import GenerationId, Hotkey, Model, Round, Sha256, canonical_json
from template.wire.dataset import DatasetError, DatasetManifest, MissingShardError, ShardInfo
from template.wire.history import Evaluation, History, HistoryPoint, ValidatorView
from template.wire.miner import MinerStatus
from template.wire.orchestrator import (
    Ack,
    Assignment,
    AssignmentResponse,
    CheckIn,
    CheckpointInfo,
    ContributionDecision,
    ContributionReport,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinRequest,
    LeaveRequest,
    Member,
    MemberStatus,
    MisbehaviorReport,
    RoundRecord,
    RoundReport,
    RoundResponse,
    RunInfo,
    SignedHash,
    StallReport,
    Status,
)
from template.wire.receipts import Receipt, SignedReceipt

__all__ = [
    "Ack",
    "Aggregator",
    "Assignment",
    "AssignmentResponse",
    "CheckpointInfo",
    "Compression",
    "ContributionDecision",
    "ContributionReport",
    "DatasetError",
    "DatasetManifest",
    "Evaluation",
    "GenerationId",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "History",
    "HistoryPoint",
    "Hotkey",
    "JoinRequest",
    "LeaveRequest",
    "CheckIn",
    "StallReport",
    "Member",
    "MemberStatus",
    "MembershipConfig",
    "MinerStatus",
    "MisbehaviorReport",
    "MissingShardError",
    "Model",
    "Receipt",
    "Round",
    "RoundRecord",
    "RoundReport",
    "RoundResponse",
    "RunInfo",
    "Sha256",
    "SignedHash",
    "ShardInfo",
    "SignedReceipt",
    "Status",
    "Strategy",
    "TrainingConfig",
    "ValidatorView",
    "canonical_json",
]
