"""W&B without a login for the Lightning commands: why W&B cannot be used here (no key, server
unreachable), the switch to offline mode, the removal of runs that logged nothing, and which
loggers validate / test / predict keep. Used by ``wsss_pl.lightning_cli``."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonargparse import Namespace
from lightning.pytorch.loggers import WandbLogger

from wsss_pl.cli_errors import PROG


def _netrc_has_key(url: str) -> bool:
    try:  # wandb's own reader knows where `wandb login` writes the key
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        return bool(read_netrc_auth(host=url))
    except Exception:  # noqa: BLE001 - an internal API that may move: fall back to netrc
        import netrc

        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        try:
            return netrc.netrc(path).authenticators(urlsplit(url).hostname or "") is not None
        except (OSError, netrc.NetrcParseError):
            return False


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` (DNS included)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # getaddrinfo ignores timeouts
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def wandb_unavailable() -> str | None:
    """Why an online W&B run cannot start here (no API key, server unreachable), or None."""
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not (
        os.environ.get("WANDB_API_KEY")
        or os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
        or _netrc_has_key(url)
    ):
        return "W&B has no API key (set WANDB_API_KEY or run `wandb login`)"
    if not _reachable(url):
        return f"the W&B server {url} cannot be reached"
    return None


def _is_rank_zero_process() -> bool:
    # DDP children re-run the CLI with these set; only the launching process speaks.
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _wandb_offline_fallback(loggers: Any) -> None:
    """Switch online WandbLogger configs to offline when W&B cannot work here, saying so."""
    entries = loggers if isinstance(loggers, list) else [loggers]
    wandb_args = [
        e.init_args
        for e in entries
        if isinstance(e, Namespace)
        and str(e.get("class_path", "")).endswith(".WandbLogger")
        and isinstance(e.get("init_args"), Namespace)
        and not e.init_args.get("offline")
    ]
    if not wandb_args or os.environ.get("WANDB_MODE", "").lower() in (
        "offline",
        "dryrun",
        "disabled",
    ):
        return
    reason = wandb_unavailable()
    if reason is None:
        return
    for init_args in wandb_args:
        init_args["offline"] = True
        if _is_rank_zero_process():
            where = Path(init_args.get("save_dir") or init_args.get("dir") or ".") / "wandb"
            print(
                f"{PROG}: {reason}: logging offline to {where}; upload later with "
                f"`wandb sync {where}/offline-run-*`",
                file=sys.stderr,
                flush=True,
            )


def _all_wandb_offline(loggers: Any) -> bool:
    """Whether the configured loggers include W&B and every W&B logger runs offline."""
    entries = loggers if isinstance(loggers, list) else [loggers]
    wandb_args = [
        e.get("init_args") or Namespace()
        for e in entries
        if isinstance(e, Namespace) and str(e.get("class_path", "")).endswith(".WandbLogger")
    ]
    offline_mode = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")
    return bool(wandb_args) and all(offline_mode or a.get("offline") for a in wandb_args)


def _remove_empty_wandb_run(logger: WandbLogger) -> Path | None:
    """Finish and delete a W&B run that logged nothing (a run that failed at start-up)."""
    run = logger._experiment
    if run is None:
        return None
    try:
        if run.step != 0:
            return None
        run_dir = Path(run.dir).parent
        run.finish(exit_code=1)
    except Exception:  # noqa: BLE001 - a broken run is left as it is
        return None
    shutil.rmtree(run_dir, ignore_errors=True)
    latest = run_dir.parent / "latest-run"
    if latest.is_symlink() and not latest.exists():
        latest.unlink()
    return run_dir


def _is_wandb(entry: Any) -> bool:
    return isinstance(entry, Namespace) and str(entry.get("class_path", "")).endswith(
        ".WandbLogger"
    )


def _evaluation_loggers(config: Any, command: str) -> None:
    """W&B runs of validate / test / predict, unless ``--trainer.logger`` is given: predict logs
    nothing, so it starts no W&B run (its resolved config goes beside the predictions);
    validate and test runs go to ``SAVE_DIR/<command>/wandb`` so that the training runs in
    ``SAVE_DIR/wandb`` are not mixed with a run per evaluation."""
    logger = config.get("trainer.logger")
    entries = logger if isinstance(logger, list) else [logger]
    if command == "predict":
        kept = [e for e in entries if not _is_wandb(e)]
        if len(kept) != len(entries):
            config["trainer.logger"] = kept if len(kept) > 1 else (kept[0] if kept else False)
        return
    for entry in entries:
        if _is_wandb(entry) and isinstance(entry.get("init_args"), Namespace):
            init_args = entry.init_args
            base = init_args.get("save_dir") or init_args.get("dir") or "."
            init_args["save_dir"] = str(Path(base) / command)
