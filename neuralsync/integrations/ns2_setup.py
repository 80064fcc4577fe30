"""Where NeuralSync2's clients look for their token, and writing it there (``neuralsync migrate``, issue 12).

NeuralSync2's ``nsctl``, ``nswrap`` and ``claude-ns``/``codex-ns``/``gemini-ns``
send ``Authorization: Bearer $NS_TOKEN`` only when ``NS_TOKEN`` is set; its
server and daemon managers read ``token:`` from ``~/.neuralsync/config.yaml``
(and pass it on as ``NS_TOKEN`` to what they start). Its default token is
empty, so out of the box its clients send none, and ``neuralsync serve``, which
always wants one, would refuse them. So migrating writes the token in both
places: ``token:`` in that file (other keys kept), and, in the user's shell
profile, a line exporting ``NS_TOKEN`` read from our token file (mode 0600; the
profile never holds the token itself).

That config file is flat YAML written by PyYAML's ``safe_dump``; only
top-level ``key: scalar`` lines are read, which is all it holds.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path

PROFILE_MARK = "# neuralsync: NeuralSync2's clients (nsctl, nswrap, *-ns) send the server token from NS_TOKEN"


def ns2_config_path() -> Path:
    """NeuralSync2's config file: ``~/.neuralsync/config.yaml``."""
    return Path.home() / ".neuralsync" / "config.yaml"


def read_ns2_config(path: Path) -> dict[str, str]:
    """The top-level scalar keys of NeuralSync2's config (empty when the file is absent)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line[0] in " \t#-" or ":" not in line:
            continue
        key, _, raw = line.partition(":")
        values[key.strip()] = _scalar(raw.strip())
    return values


def _scalar(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            return str(json.loads(raw))
        except json.JSONDecodeError:
            return raw[1:-1]
    return raw


def write_ns2_token(path: Path, token: str) -> bool:
    """Set ``token:`` in NeuralSync2's config, keeping its other lines; False when it already says so.

    Written atomically with mode 0600. Single-quoted, so a token that looks like
    a number or a boolean stays a string for YAML."""
    lines = path.read_text(encoding="utf-8").splitlines()
    wanted = "token: '" + token.replace("'", "''") + "'"
    kept = [line for line in lines if not line.startswith("token:")]
    if wanted in lines and len(kept) == len(lines) - 1:
        return False
    _write_private(path, "\n".join([*kept, wanted]) + "\n")
    return True


def profile_line(token_file: Path) -> str:
    """The shell line that gives NeuralSync2's clients the token (read from the 0600 file at each shell start)."""
    return f'export NS_TOKEN="$(cat {shlex.quote(str(token_file))} 2>/dev/null)"'


def default_profile() -> Path:
    """The profile the login shell reads: ``~/.zshrc``, ``~/.bashrc``, else ``~/.profile``."""
    shell = Path(os.environ.get("SHELL", "")).name
    return Path.home() / {"zsh": ".zshrc", "bash": ".bashrc"}.get(shell, ".profile")


def add_to_profile(profile: Path, line: str) -> bool:
    """Append ``line`` (after a marker comment) unless the profile has it; True when written."""
    try:
        text = profile.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if line in text.splitlines():
        return False
    prefix = "" if not text or text.endswith("\n") else "\n"
    with open(profile, "a", encoding="utf-8") as handle:
        handle.write(f"{prefix}{PROFILE_MARK}\n{line}\n")
    return True


def _write_private(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
