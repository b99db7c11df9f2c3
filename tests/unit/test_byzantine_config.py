"""The run's Byzantine fraction at the orchestrator: ``python -m orchestrator`` refuses generation sizes
that cannot outvote it (one line naming both flags), and the service forms generations of at least 3
ranks when it is > 0, holds its state dir alone, and refuses a non-finite checkpoint (422)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from fastapi import HTTPException

from orchestrator.__main__ import add_args, settings_from
from orchestrator.rollback import StateDirBusy
from orchestrator.service import OrchestratorService, Settings
from template import wire as p
from template.config import cli as tc
from template.engine import checkpoint
from tests.conftest import small_corpus


def _settings(argv):
    parser = tc.build_parser("python -m orchestrator", "", add_args)
    return settings_from(tc.Config.from_namespace(parser.parse_args(argv)), parser.error)


@pytest.mark.parametrize("flags", [["--min-world-size", "2"], ["--max-world-size", "2"]])
def test_cli_refuses_sizes_below_three_in_a_tolerant_run(capsys, tmp_path, flags):
    with pytest.raises(SystemExit) as exc:
        _settings(["--state-dir", str(tmp_path), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flags[0] in err and "--byzantine-fraction" in err and "below 3" in err


def test_cli_accepts_a_trusted_run_or_the_default_minimum(tmp_path):
    trusted = _settings(["--state-dir", str(tmp_path), "--min-world-size", "2", "--byzantine-fraction", "0"])
    assert trusted.training.byzantine_fraction == 0 and trusted.membership.min_world_size == 2
    default = _settings(["--state-dir", str(tmp_path)])  # left out: the service raises it to 3
    assert default.membership.min_world_size == 1 and default.training.byzantine_fraction == 1 / 3
    assert _settings(["--state-dir", str(tmp_path), "--min-world-size", "3"]).membership.min_world_size == 3


def _service(tmp_path, **training) -> OrchestratorService:
    settings = Settings(
        state_dir=tmp_path / "orch",
        netuid=1,
        training=p.TrainingConfig(preset="tiny", inner_steps=2, **training),
        membership=p.MembershipConfig(),
        dataset_path=small_corpus(tmp_path),
        shard_size=8 * 1024,
        store_port=0,
    )
    return OrchestratorService(settings, hotkey_ss58="owner", client_factory=lambda: None)


def test_service_forms_generations_of_three_and_holds_its_state_dir(tmp_path):
    svc = _service(tmp_path)
    try:
        c = svc.coordinator
        assert c.membership_cfg.min_world_size == 3 and svc.run.membership.min_world_size == 1
        assert [c.join(hk, "cpu", 0).status for hk in "abc"] == ["waiting", "waiting", "assigned"]
        with pytest.raises(StateDirBusy):
            _service(tmp_path)  # a second orchestrator on the same state dir
        # An agreed state with Inf is refused with a reason; a finite one is stored.
        bad = checkpoint.dumps({"param/w": torch.tensor([0.0, float("-inf")])})
        good = checkpoint.dumps({"param/w": torch.tensor([0.0, 1.0])})
        for data in (bad, good):
            for hk in "abc":
                report = p.RoundReport(
                    generation=c.generation.id, round=c.round, state=hashlib.sha256(data).hexdigest()
                )
                c.report_round(hk, report, 1)
        with pytest.raises(HTTPException) as exc:
            svc.store_checkpoint(hashlib.sha256(bad).hexdigest(), bad, 2)
        assert exc.value.status_code == 422 and "param/w: NaN or Inf" in exc.value.detail
        assert not (svc.checkpoint_dir / hashlib.sha256(bad).hexdigest()).exists()
        assert svc.store_checkpoint(hashlib.sha256(good).hexdigest(), good, 2).round == 2
    finally:
        svc.coordinator.close()
        svc.store.close()
        svc._state_lock.close()


def test_service_refuses_a_maximum_below_three(tmp_path):
    settings = Settings(
        state_dir=tmp_path / "orch",
        netuid=1,
        training=p.TrainingConfig(preset="tiny"),
        membership=p.MembershipConfig(max_world_size=2),
        dataset_path=small_corpus(tmp_path),
        shard_size=8 * 1024,
        store_port=0,
    )
    with pytest.raises(ValueError, match="max_world_size 2 is below 3"):
        OrchestratorService(settings, hotkey_ss58="owner", client_factory=lambda: None)
    assert not (tmp_path / "orch" / "run.json").exists()  # no run was created for it
    # The failed start released the state dir: a trusted run may use it.
    settings.training = p.TrainingConfig(preset="tiny", byzantine_fraction=0)
    svc = OrchestratorService(settings, hotkey_ss58="owner", client_factory=lambda: None)
    try:
        assert svc.coordinator.membership_cfg.min_world_size == 1
    finally:
        svc.coordinator.close()
        svc.store.close()
        svc._state_lock.close()
