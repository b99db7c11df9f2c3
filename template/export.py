"""Export an agreed global state as a model other tools load: model.safetensors, config.json, README.md.

    python -m template.export --state-dir ./state/orchestrator --checkpoint latest --out ./model
    python -m template.export --orchestrator-url http://HOST:8000 --wallet.name W --wallet.hotkey H \\
        --checkpoint latest --out ./model

From the orchestrator's state directory (its run.json and checkpoints/, read where it runs; no key
needed), or over its API with a registered hotkey (the orchestrator's hotkey from
``--orchestrator-hotkey``, else the subnet owner's from the chain). ``--checkpoint`` is ``latest``
(the newest agreed state) or a state's sha256. The state is checked against its hash and the run's
format before anything is written; ``--out`` must not exist. Then sample from it with
``python -m template.generate OUT --prompt "..."``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo importable
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from template.config import cli as tc

SHA = re.compile(r"[0-9a-f]{64}")


def checkpoint_name(text: str) -> str:
    text = text.strip().lower()
    if text != "latest" and not SHA.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be 'latest' or a 64-hex sha256, got {text!r}")
    return text


def add_args(parser) -> None:
    g = parser.add_argument_group("export")
    g.add_argument("--checkpoint", type=checkpoint_name, default="latest", help="'latest' or a state's sha256")
    g.add_argument("--out", type=tc.expanded_path, required=True, help="new directory for the model files")
    g.add_argument("--state-dir", type=tc.expanded_path, default=None, help="the orchestrator's --state-dir")
    g.add_argument("--orchestrator-url", default=None, help="read the state over the orchestrator's API instead")
    g.add_argument(
        "--tokenizer",
        type=tc.expanded_path,
        default=None,
        help="the tokenizer.json of a run on a tokenized dataset (python -m template.data.tokenize wrote it)",
    )
    g.add_argument(
        "--orchestrator-hotkey",
        default=None,
        help="the orchestrator's hotkey (default: the subnet owner's hotkey from the metagraph)",
    )


def from_state_dir(state_dir: Path, which: str) -> tuple[dict, bytes, str, str]:
    """(run info JSON, state bytes, where they came from, the sha256 they were asked for) from an
    orchestrator's state directory."""
    from template import wire as p
    from template.engine.export import ExportError, latest_in

    run_path = state_dir / "run.json"
    try:
        run = p.RunInfo.model_validate_json(run_path.read_bytes())
    except FileNotFoundError:
        raise ExportError(f"{run_path}: not found (is {state_dir} an orchestrator's --state-dir?)") from None
    except (OSError, ValueError) as error:
        raise ExportError(f"{run_path}: unreadable run config ({error.__class__.__name__})") from None
    sha = latest_in(state_dir / "checkpoints") if which == "latest" else which
    if sha is None:
        raise ExportError(f"{state_dir / 'checkpoints'}: no agreed state stored yet (the run is at its seed)")
    path = state_dir / "checkpoints" / sha
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path}: no such checkpoint") from None
    return json.loads(run.model_dump_json()), data, str(path), sha


def from_api(cfg) -> tuple[dict, bytes, str, str]:
    import bittensor as bt

    from template.chain.client import orchestrator_hotkey
    from template.engine.export import ExportError
    from template.net.orchestrator_client import OrchestratorClient

    wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
    with OrchestratorClient(cfg.orchestrator_url, wallet, orchestrator_hotkey(cfg), retry_s=10) as client:
        run = client.run()
        sha = cfg.checkpoint
        if sha == "latest":
            stored = client.checkpoints()
            if not stored:
                raise ExportError(f"{cfg.orchestrator_url}: no agreed state stored yet (the run is at its seed)")
            sha = stored[0].sha256
        data = client.checkpoint(sha)
        if data is None:
            raise ExportError(f"{cfg.orchestrator_url}: no checkpoint {sha}")
    return json.loads(run.model_dump_json()), data, f"{cfg.orchestrator_url}/v1/checkpoint/{sha}", sha


def main(argv: list[str] | None = None) -> int:
    parser = tc.build_parser("python -m template.export", __doc__, add_args)
    cfg = tc.Config.from_namespace(parser.parse_args(argv))
    if (cfg.state_dir is None) == (cfg.orchestrator_url is None):
        parser.error("give one of --state-dir or --orchestrator-url")
    if Path(cfg.out).exists():
        parser.error(f"--out {cfg.out} already exists: choose another, or remove it first")

    from template import wire as p
    from template.engine import checkpoint
    from template.engine.export import ExportError, export_model

    try:
        got = from_state_dir(Path(cfg.state_dir), cfg.checkpoint) if cfg.state_dir else from_api(cfg)
        run_json, data, source, sha = got
        if checkpoint.state_hash(data) != sha:  # `latest` too: the bytes must be the state they were listed as
            raise ExportError(f"{source}: its bytes do not hash to {sha}")
        run = p.RunInfo.model_validate(run_json)
        tokenizer = Path(cfg.tokenizer) if cfg.tokenizer else None
        out = export_model(run.training, data, Path(cfg.out), run_id=run.run_id, source=source, tokenizer=tokenizer)
    except ExportError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the orchestrator's refusal, a network error: one line, not a traceback
        print(f"export: error: {error.__class__.__name__}: {error}", file=sys.stderr)
        return 1
    config = json.loads((out / "config.json").read_text())["tensorswarm"]
    print(f"exported round {config['round']} (state {config['state_sha256'][:12]}) from {source} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
