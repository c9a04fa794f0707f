"""argparse for wsss_pl's own commands (evaluate-labels, export-labels, export-model, reproduce).

One spelling for every option of every command: words joined by underscores, as LightningCLI's
options are (``--ckpt_path``, ``--print_config``, ``--data.batch_size``), so a user who knows
``wsss_pl fit`` knows how ``--output_dir`` or ``--dry_run`` is written. An output file is
``--output``, an output folder ``--output_dir``. An option spelt with dashes, or by a name it
had before (``--out``), is refused with the option to use instead.

Standard library only: the commands answer bad options before torch loads.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


class CommandParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` with no prefix matching and one-line errors.

    ``renamed`` maps an option's former name to its name now (``{"--out": "--output"}``):
    the former name is an error saying which to use. An unknown option gets the closest known
    one ("did you mean --dry_run?"); ``--dry-run`` is always matched to ``--dry_run``.
    """

    def __init__(self, *args: Any, renamed: dict[str, str] | None = None, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def _known_options(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def suggestion(self, option: str) -> str | None:
        """The option meant by an unknown ``option`` (``--out`` -> ``--output``), or None."""
        if option in self.renamed:
            return self.renamed[option]
        known = self._known_options()
        underscored = "--" + option[2:].replace("-", "_")
        if underscored in known:
            return underscored
        match = difflib.get_close_matches(underscored, known, n=1, cutoff=0.75)
        return match[0] if match else None

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        for arg in args:
            if arg == "--":
                break
            name = arg.split("=", 1)[0]
            if name in self.renamed:
                self.error(f"unknown option {name} (did you mean {self.renamed[name]}?)")
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """``PROG: error: MESSAGE`` (with "did you mean") and where the options are; exit 2."""
        found = re.match(r"unrecognized arguments: (.*)", message)
        if found:
            given = [t.split("=", 1)[0] for t in found.group(1).split() if t.startswith("--")]
            if given:
                parts = []
                for option in given:
                    guess = self.suggestion(option)
                    parts.append(option + (f" (did you mean {guess}?)" if guess else ""))
                message = f"unknown option {', '.join(parts)}"
        self.exit(2, f"{self.prog}: error: {message}\n`{self.prog} --help` lists every option\n")
