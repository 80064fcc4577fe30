"""Register (or remove) the ``neuralsync`` MCP server in Claude Code, Codex CLI and Gemini CLI.

Every edit is conservative: the existing file must parse (else nothing is written),
only our one entry changes, the result is checked to parse with every other
setting equal, and the write is atomic (temp file in the same directory, fsync,
``os.replace``) with the original file mode. Both formats are edited as text
(``jsonctext`` for JSON with comments, ``tomltext`` for Codex's TOML), so comments,
indentation and key order elsewhere stay byte for byte.

Uninstall restores the state before install: the first change keeps one
``<file>.neuralsync.bak`` copy; uninstall writes that copy back when nothing but
our entry changed since (else it cuts our entry alone) and removes it; a file
install created (no copy) is deleted once only our entry was in it.

The command: ``--scope user`` writes this machine's absolute path (the console
script, else this interpreter with ``-m``), so the tool finds the same install
whatever its PATH; ``--scope project`` writes the portable ``neuralsync mcp``
(found on each user's PATH, wherever pip put it; ``python -m`` would depend on which
``python`` is first) and no ``NEURALSYNC_HOME`` path: the file is shared.
"""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import HOME_ENV
from ..errors import DependencyMissing, InvalidInput, NeuralSyncError
from . import hookconfig, jsonctext, tomltext

SERVER_NAME = "neuralsync"
TOOLS = ("claude-code", "codex", "gemini")
SCOPES = ("user", "project")
BACKUP_SUFFIX = ".neuralsync.bak"
NEW_FILE_MODE = 0o600  # these files can hold API keys
NEW_DIR_MODE = 0o700
_CHANGES = ("installed", "updated", "uninstalled")
TRANSPORTS = ("stdio", "http")
DEFAULT_URL = "http://127.0.0.1:8374/mcp"  # `neuralsync mcp --http`
TOKEN_ENV = "NEURALSYNC_TOKEN"  # what a shared (project) file or Codex names instead of the token itself


class InstallError(NeuralSyncError):
    """A tool's configuration file could not be read or changed safely; nothing was written."""


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What ``install``/``uninstall`` did (or, with ``dry_run``, would do) to one file.

    ``action`` is one of installed, updated, already-installed, uninstalled, not-installed.
    """

    tool: str
    path: Path
    action: str
    dry_run: bool = False
    diff: str = ""
    backup: Path | None = None
    note: str = ""
    what: str = "MCP server"  # what the entry is: "MCP server", "hooks", "MCP server and hooks"

    @property
    def changed(self) -> bool:
        """True when the file was (or would be) modified."""
        return self.action in _CHANGES

    @property
    def message(self) -> str:
        """One human-readable line."""
        if not self.changed:
            state = self.action.replace("-", " ")
            return f"{SERVER_NAME} {self.what} {self._be} {state} in {self.path}; nothing changed"
        verb = {"installed": "install", "updated": "update", "uninstalled": "uninstall"}[self.action]
        if self.dry_run:
            return f"dry run: would {verb} the {SERVER_NAME} {self.what} in {self.path}; nothing written"
        kept = f" (backup: {self.backup})" if self.backup else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.action} the {SERVER_NAME} {self.what} in {self.path}{kept}{note}; restart {self.tool} to use it"

    @property
    def _be(self) -> str:
        return "are" if self.what == "hooks" else "is"


# ================================================================ public API
def install(tool: str, *, dry_run: bool = False, config_path: str | os.PathLike[str] | None = None,
            command: str | Sequence[str] | None = None, scope: str = "user", transport: str = "stdio",
            url: str | None = None, token: str | None = None, hooks: bool = False) -> InstallResult:
    """Register the MCP server in ``tool``'s config, idempotently.

    ``hooks``: also our context/capture hooks when they live in the same file (Gemini CLI); the
    other tools keep hooks in a file of their own (:func:`install_hooks`).

    stdio: ``command`` is the server's executable (then args ``["mcp"]``) or a full argv (default:
    see the module docstring). http: ``url`` (default ``DEFAULT_URL``) and the bearer header,
    with ``token`` itself in a user file, else a reference to ``$NEURALSYNC_TOKEN``.
    """
    path = config_file(tool, scope, config_path)
    old = _read(path)
    entry = server_entry(tool, command, scope=scope, transport=transport, url=url, token=token)
    if tool == "codex":
        new, existed = _toml_install(old or "", entry, path)
    else:
        new, existed = _json_install(old, entry, _managed(tool), path)
    with_hooks = hooks and hookconfig.hook_file(tool, scope, path) == path
    if with_hooks:
        new = _hooks_added(old, new, tool, hookconfig.hook_command(tool, scope), path)
    action = "already-installed" if new == old else ("updated" if existed else "installed")
    note = ""
    if transport == "http" and (tool == "codex" or scope == "project"):
        note = f"the client reads the token from ${TOKEN_ENV}: export {TOKEN_ENV}=\"$(neuralsync token)\""
    what = "MCP server and hooks" if with_hooks else "MCP server"
    return _finish(tool, path, old, new, action, dry_run, note=note, what=what)


def install_hooks(tool: str, *, dry_run: bool = False, scope: str = "user",
                  config_path: str | os.PathLike[str] | None = None, command: str | None = None) -> InstallResult:
    """Register our context and capture hooks in ``tool``'s hook file (:func:`hookconfig.hook_file`;
    ``config_path`` overrides it), idempotently, with the same guarantees as the MCP entry."""
    path = Path(config_path).expanduser() if config_path else hookconfig.hook_file(tool, scope,
                                                                                     config_file(tool, scope))
    old = _read(path)
    new = _hooks_added(old, old, tool, command or hookconfig.hook_command(tool, scope), path)
    existed = old is not None and hookconfig.present(_json_load(old, path))
    action = "already-installed" if new == old else ("updated" if existed else "installed")
    # Codex skips a new or changed command hook, silently, until a person trusts it.
    note = "Codex runs them once you trust them: /hooks in Codex (it warns at start)" if tool == "codex" else ""
    return _finish(tool, path, old, new, action, dry_run, what="hooks", note=note)


def uninstall_hooks(tool: str, *, dry_run: bool = False, scope: str = "user",
                    config_path: str | os.PathLike[str] | None = None) -> InstallResult:
    """Remove our hooks (only ours) from ``tool``'s hook file, back to the state before install."""
    path = Path(config_path).expanduser() if config_path else hookconfig.hook_file(tool, scope,
                                                                                     config_file(tool, scope))
    old = _read(path)
    doc = _json_load(old, path) if old is not None else {}
    if old is None or not hookconfig.present(doc):
        return InstallResult(tool, path, "not-installed", dry_run, what="hooks")
    backup = _read(_backup_path(path))
    new = _json_edit(lambda: hookconfig.remove(old, doc, keep_empty=_has_key(backup, "hooks")), path)
    _check_json(new, doc, None, path)
    return _finish(tool, path, old, _restored(False, new, backup), "uninstalled", dry_run, drop_backup=True,
                   what="hooks")


def _hooks_added(old: str | None, text: str | None, tool: str, command: str, path: Path) -> str:
    """``text`` (the file after any other edit of ours; None: no file yet) with our hooks in it."""
    base = text if text is not None and text.strip() else jsonctext.dump_new({}, _newline(old))
    doc = _json_load(base, path)
    if (problem := hookconfig.check_shape(doc)) is not None:
        raise InstallError(f"{path}: {problem}; nothing was changed")
    new = _json_edit(lambda: hookconfig.add(base, doc, tool, command), path)
    if new == base and text is not None:
        return text
    try:
        result = jsonctext.loads(new)
    except ValueError as exc:
        raise InstallError(f"editing {path} would break it ({exc}); nothing was written") from exc
    if hookconfig.strip_ours(result) != hookconfig.strip_ours(doc) or not hookconfig.present(result):
        raise InstallError(f"editing {path} would change other settings (unusual layout); nothing was written")
    return new


def uninstall(tool: str, *, dry_run: bool = False, config_path: str | os.PathLike[str] | None = None,
              command: str | Sequence[str] | None = None, scope: str = "user") -> InstallResult:
    """Remove our entry (only ours) from ``tool``'s config, back to the state before install.

    The backup is written back when nothing but our entry changed since install, and removed;
    a file install created is deleted. ``command`` is accepted for symmetry.
    """
    del command
    path = config_file(tool, scope, config_path)
    old = _read(path)
    if old is None:
        return InstallResult(tool, path, "not-installed", dry_run)
    backup = _read(_backup_path(path))
    if tool == "codex":
        new, existed = _toml_remove(old, path)
    else:
        new, existed = _json_remove(old, backup, path)
    if not existed:
        return InstallResult(tool, path, "not-installed", dry_run)
    what = "MCP server and hooks" if tool != "codex" and hookconfig.present(_json_load(old, path)) else "MCP server"
    return _finish(tool, path, old, _restored(tool == "codex", new, backup), "uninstalled", dry_run,
                   drop_backup=True, what=what)


def _restored(toml: bool, new: str, backup: str | None) -> str | None:
    """What uninstall writes: the backup's exact bytes when only our entries changed since install,
    nothing (delete) when install created the file, else ``new``."""
    load = _toml_loads if toml else jsonctext.loads
    if backup is not None and _parses_to(load, backup, load(new) if new.strip() else {}):
        return backup
    if backup is None and _empty_skeleton(toml, new):
        return None
    return new


def _parses_to(load: Any, text: str, expected: Any) -> bool:
    try:
        return bool((load(text) if text.strip() else {}) == expected)
    except ValueError:
        return False


def _empty_skeleton(toml: bool, text: str) -> bool:
    """What is left of a file install created, once our entry is cut: nothing, or an empty object."""
    stripped = text.strip()
    return stripped == "" if toml else stripped in ("", "{}")


def check_server_starts(transport: str = "stdio") -> None:
    """Raise :class:`DependencyMissing` (one line: what to install) when ``neuralsync mcp`` could not start."""
    import importlib

    extra = "mcp,server" if transport == "http" else "mcp"
    try:
        importlib.import_module("neuralsync.mcp.server")
        if transport == "http":
            importlib.import_module("uvicorn")
    except ImportError as exc:
        raise DependencyMissing(f"the MCP server could not start here ({exc}); nothing was written: "
                                f"pip install 'neuralsync[{extra}]'") from None


def run_cli(action: str, tool: str, *, dry_run: bool = False, config_path: str | None = None,
            scope: str = "user", transport: str = "stdio", url: str | None = None, token: str | None = None,
            hooks: bool = True) -> int:
    """``neuralsync install|uninstall TOOL``: print the diff (dry run) and a summary; exit code 0.

    Install first checks that the server could start (else :class:`DependencyMissing`, nothing
    written), then registers the MCP server and, unless ``hooks`` is false, our hooks (in the
    same file for Gemini CLI, in the tool's hook file otherwise). Uninstall removes both.
    Errors raise a ``NeuralSyncError`` (:class:`InstallError`, ...) for the CLI to map.
    """
    results = []
    if action == "install":
        check_server_starts(transport)
        results.append(install(tool, dry_run=dry_run, config_path=config_path, scope=scope, transport=transport,
                               url=url, token=token, hooks=hooks))
    else:
        results.append(uninstall(tool, dry_run=dry_run, config_path=config_path, scope=scope))
    elsewhere = hookconfig.hook_file(tool, scope, results[0].path)
    if hooks and elsewhere != results[0].path:
        if config_path is not None:  # --config names one file: touch no other
            print(f"hooks left alone: --config names the MCP file only ({tool} reads hooks from {elsewhere})")
        elif action == "install":
            results.append(install_hooks(tool, dry_run=dry_run, scope=scope))
        else:
            results.append(uninstall_hooks(tool, dry_run=dry_run, scope=scope))
    for result in results:
        if dry_run and result.diff:
            sys.stdout.write(result.diff.replace(token, "<token>") if token else result.diff)  # no secret on screen
        print(result.message)
    return 0


def config_file(tool: str, scope: str = "user", config_path: str | os.PathLike[str] | None = None) -> Path:
    """The file ``install`` edits for ``tool`` in ``scope`` (``user`` or ``project``: the current directory)."""
    if tool not in TOOLS:
        raise InvalidInput("tool", f"must be one of {', '.join(TOOLS)}, not {tool!r}")
    if scope not in SCOPES:
        raise InvalidInput("scope", f"must be one of {', '.join(SCOPES)}, not {scope!r}")
    if config_path is not None:
        return Path(config_path).expanduser()
    if scope == "project":
        base = Path.cwd()
        return {"claude-code": base / ".mcp.json", "codex": base / ".codex" / "config.toml",
                "gemini": base / ".gemini" / "settings.json"}[tool]
    home = Path.home()
    codex_home = Path(os.environ["CODEX_HOME"]).expanduser() if os.environ.get("CODEX_HOME") else home / ".codex"
    return {"claude-code": home / ".claude.json", "codex": codex_home / "config.toml",
            "gemini": home / ".gemini" / "settings.json"}[tool]


def server_entry(tool: str, command: str | Sequence[str] | None = None, *, scope: str = "user",
                 transport: str = "stdio", url: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Our entry in ``tool``'s shape (see the module docstring for the command per scope).

    stdio: ``env`` carries ``NEURALSYNC_HOME`` only when the user set it, and never in a project file.
    http: the URL and ``Authorization: Bearer``: the token itself in a user file (private, like the
    API keys beside it), ``$NEURALSYNC_TOKEN`` in a shared one; Codex takes only the variable's name.
    """
    if transport not in TRANSPORTS:
        raise InvalidInput("transport", f"must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if transport == "http":
        return _http_entry(tool, url or DEFAULT_URL, token if scope == "user" else None)
    if command is None:
        script = shutil.which("neuralsync")
        if scope == "project":
            argv = ["neuralsync", "mcp"]
        else:
            argv = [os.path.abspath(script), "mcp"] if script else [sys.executable, "-m", "neuralsync.cli", "mcp"]
    elif isinstance(command, str):
        argv = [command, "mcp"]
    else:
        argv = list(command)
    if not argv or not argv[0]:
        raise InvalidInput("command", "must name an executable")
    home = os.environ.get(HOME_ENV)
    env = {HOME_ENV: os.path.abspath(os.path.expanduser(home))} if home and scope == "user" else {}
    if tool == "claude-code":
        return {"type": "stdio", "command": argv[0], "args": argv[1:], "env": env}
    entry: dict[str, Any] = {"command": argv[0], "args": argv[1:]}
    if env:
        entry["env"] = env
    return entry


def _http_entry(tool: str, url: str, token: str | None) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise InvalidInput("url", f"must be an http(s) URL, not {url!r}")
    if tool == "codex":  # Codex refuses a token written in config.toml; it reads the named variable
        return {"url": url, "bearer_token_env_var": TOKEN_ENV}
    bearer = f"Bearer {token}" if token else f"Bearer ${{{TOKEN_ENV}}}"  # both tools expand ${VAR}
    headers = {"Authorization": bearer}
    if tool == "claude-code":
        return {"type": "http", "url": url, "headers": headers}
    return {"httpUrl": url, "headers": headers}


# ================================================================ shared helpers
_OWNED = {"claude-code": {"type", "command", "args", "env", "url", "headers"},
          "codex": {"command", "args", "env", "url", "bearer_token_env_var"},
          "gemini": {"command", "args", "env", "httpUrl", "headers"}}


def _managed(tool: str) -> frozenset[str]:
    """Keys of our entry that install owns (both transports); any other key a user added is kept."""
    return frozenset(_OWNED[tool])


def _merge(current: object, entry: dict[str, Any], managed: frozenset[str]) -> dict[str, Any]:
    kept = {k: v for k, v in current.items() if k not in managed or k in entry} if isinstance(current, dict) else {}
    kept.update(entry)  # existing keys keep their position
    return kept


def _same(current: object, entry: dict[str, Any], managed: frozenset[str]) -> bool:
    if not isinstance(current, dict):
        return False
    return all((current.get(k) or None) == (entry.get(k) or None) for k in managed)


def _newline(text: str | None) -> str:
    return "\r\n" if text and "\r\n" in text else "\n"


def _backup_path(path: Path) -> Path:
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + BACKUP_SUFFIX)


def _read(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InstallError(f"{path} is not UTF-8 text; nothing was changed") from exc


def _finish(tool: str, path: Path, old: str | None, new: str | None, action: str, dry_run: bool, *,
            drop_backup: bool = False, note: str = "", what: str = "MCP server") -> InstallResult:
    """Write ``new`` (``None``: delete the file); ``drop_backup`` removes the backup afterwards."""
    if action not in _CHANGES:
        return InstallResult(tool, path, action, dry_run, what=what)
    target = f"{path} (deleted)" if new is None else f"{path} ({action})"
    diff = "".join(difflib.unified_diff((old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
                                        fromfile=str(path), tofile=target))
    if diff and not diff.endswith("\n"):
        diff += "\n\\ No newline at end of file\n"
    if dry_run:
        return InstallResult(tool, path, action, True, diff, note=note, what=what)
    backup = _write(path, old, new, keep_backup=not drop_backup)
    if drop_backup:
        _backup_path(path).unlink(missing_ok=True)
        backup = None
    if new is None:
        note = "the file install created is deleted"
    return InstallResult(tool, path, action, False, diff, backup, note, what)


def _write(path: Path, old: str | None, new: str | None, *, keep_backup: bool = True) -> Path | None:
    """Back up (first change of an existing file, when ``keep_backup``), then replace atomically
    (``new`` ``None``: delete). Returns the backup path if any."""
    real = Path(os.path.realpath(path))  # edit the target of a symlinked dotfile, keep the link
    backup = _backup_path(path)
    if old is None:
        real.parent.mkdir(NEW_DIR_MODE, parents=True, exist_ok=True)  # intermediate dirs get the umask
        mode = NEW_FILE_MODE
    else:
        mode = stat.S_IMODE(real.stat().st_mode)
        if keep_backup and not backup.exists():  # an existing backup is the pre-neuralsync original: keep it
            _atomic_write(backup, old.encode("utf-8"), mode)
    if _read(real) != old:
        raise InstallError(f"{path} changed while it was being edited; nothing was written, run again")
    if new is None:
        real.unlink()
    else:
        _atomic_write(real, new.encode("utf-8"), mode)
    return backup if backup.exists() else None


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.chmod(tmp, mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX only)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ================================================================ JSON (Claude Code, Gemini CLI)
_OUR_PATH = ("mcpServers", SERVER_NAME)


def _json_load(text: str | None, path: Path) -> dict[str, Any]:
    """The document; ``//`` and ``/* */`` comments allowed (Gemini's settings.json may hold them)."""
    if text is None or not text.strip():
        return {}
    try:
        data = jsonctext.loads(text)
    except ValueError as exc:
        raise InstallError(f"{path} is not valid JSON ({exc}); fix it first, nothing was changed") from exc
    if not isinstance(data, dict):
        raise InstallError(f"{path} does not hold a JSON object; nothing was changed")
    if not isinstance(data.get("mcpServers", {}), dict):
        raise InstallError(f"{path}: 'mcpServers' is not an object; nothing was changed")
    return data


def _json_install(old: str | None, entry: dict[str, Any], managed: frozenset[str],
                  path: Path) -> tuple[str, bool]:
    data = _json_load(old, path)
    current = data.get("mcpServers", {}).get(SERVER_NAME)
    if old is not None and _same(current, entry, managed):
        return old, True  # already there: keep the file exactly as it is
    wanted = _merge(current, entry, managed)
    if old is None or not old.strip():
        new = jsonctext.dump_new({"mcpServers": {SERVER_NAME: wanted}}, _newline(old))
    else:
        new = _json_edit(lambda: jsonctext.set_member(old, _OUR_PATH, wanted), path)
    _check_json(new, data, wanted, path)
    return new, current is not None


def _json_remove(old: str, backup: str | None, path: Path) -> tuple[str, bool]:
    """``old`` without our MCP entry and our hooks (Gemini keeps both in one file); (text, any found)."""
    data = _json_load(old, path)
    servers = data.get("mcpServers")
    ours = isinstance(servers, dict) and SERVER_NAME in servers
    hooked = hookconfig.present(data)
    if not ours and not hooked:
        return old, False
    new = old
    if ours:
        new = _json_edit(lambda: jsonctext.remove_member(old, _OUR_PATH), path)
        if isinstance(servers, dict) and len(servers) == 1 and not _has_key(backup, "mcpServers"):
            new = _json_edit(lambda: jsonctext.remove_member(new, ("mcpServers",)), path)  # we added it
    if hooked:
        edited = new
        new = _json_edit(lambda: hookconfig.remove(edited, jsonctext.loads(edited),
                                                   keep_empty=_has_key(backup, "hooks")), path)
    _check_json(new, data, None, path)
    return new, True


def _json_edit(edit: Any, path: Path) -> str:
    try:
        return str(edit())
    except ValueError as exc:
        raise InstallError(f"{path}: cannot edit this layout ({exc}); nothing was changed") from exc


def _json_others(doc: dict[str, Any]) -> dict[str, Any]:
    rest = hookconfig.strip_ours(dict(doc))
    servers = {k: v for k, v in rest.pop("mcpServers", {}).items() if k != SERVER_NAME}
    return {**rest, "mcpServers": servers} if servers else rest


def _check_json(new: str, old_doc: dict[str, Any], wanted: dict[str, Any] | None, path: Path) -> None:
    """The edit must parse, hold exactly ``wanted`` for us, and leave every other value equal."""
    try:
        doc = jsonctext.loads(new) if new.strip() else {}
    except ValueError as exc:
        raise InstallError(f"editing {path} would break it ({exc}); nothing was written") from exc
    if not isinstance(doc, dict) or doc.get("mcpServers", {}).get(SERVER_NAME) != wanted \
            or _json_others(doc) != _json_others(old_doc):
        raise InstallError(f"editing {path} would change other settings (unusual layout); nothing was written")


def _has_key(backup: str | None, key: str) -> bool:
    """Whether the file before install (its backup) had ``key`` at the top: then uninstall keeps it."""
    try:
        return isinstance(backup, str) and key in jsonctext.loads(backup)
    except (ValueError, TypeError):
        return False


# ================================================================ TOML (Codex CLI), edited as text
_OUR_TABLE = ("mcp_servers", SERVER_NAME)


def _toml_load(text: str, path: Path) -> dict[str, Any]:
    try:
        doc = _toml_loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise InstallError(f"{path} is not valid TOML ({exc}); fix it first, nothing was changed") from exc
    if not isinstance(doc.get("mcp_servers", {}), dict):
        raise InstallError(f"{path}: 'mcp_servers' is not a table; nothing was changed")
    return doc


def _ours(doc: dict[str, Any]) -> Any:
    return doc.get("mcp_servers", {}).get(SERVER_NAME)


def _others(doc: dict[str, Any]) -> dict[str, Any]:
    rest = dict(doc)
    servers = {k: v for k, v in rest.pop("mcp_servers", {}).items() if k != SERVER_NAME}
    return {**rest, "mcp_servers": servers} if servers else rest


def _toml_install(old: str, entry: dict[str, Any], path: Path) -> tuple[str, bool]:
    doc = _toml_load(old, path)
    current, managed = _ours(doc), _managed("codex")
    if _same(current, entry, managed):
        return old, True
    wanted = _merge(current, entry, managed)
    nl = _newline(old)
    block = nl.join([f"[mcp_servers.{SERVER_NAME}]", *(f"{tomltext.key(k)} = {tomltext.value(v)}"
                                                      for k, v in wanted.items())]) + nl
    headers = tomltext.headers(old)
    spans = tomltext.spans(old, headers, _OUR_TABLE)
    if current is not None and not spans:
        raise InstallError(f"{path}: mcp_servers.{SERVER_NAME} is written as an inline table or dotted keys, "
                           "which this installer does not rewrite; remove it by hand and run again")
    if spans:
        new = tomltext.cut(old, spans[1:])
        new = new[:spans[0][0]] + block + new[spans[0][1]:]
    else:
        mcp = tomltext.spans(old, headers, ("mcp_servers",))
        new = tomltext.insert(old, mcp[-1][1] if mcp else len(old), block, nl)
    _check_toml(new, doc, wanted, path)
    return new, current is not None


def _toml_remove(old: str, path: Path) -> tuple[str, bool]:
    doc = _toml_load(old, path)
    if _ours(doc) is None:
        return old, False
    spans = tomltext.spans(old, tomltext.headers(old), _OUR_TABLE)
    if not spans:
        raise InstallError(f"{path}: mcp_servers.{SERVER_NAME} is written as an inline table or dotted keys, "
                           "which this installer does not rewrite; remove it by hand")
    new = tomltext.cut(old, spans)
    _check_toml(new, doc, None, path)
    return new, True


def _check_toml(new: str, old_doc: dict[str, Any], wanted: dict[str, Any] | None, path: Path) -> None:
    """The edit must parse, hold exactly ``wanted`` for us, and leave every other value equal."""
    try:
        doc = _toml_loads(new)
    except ValueError as exc:
        raise InstallError(f"editing {path} would break it ({exc}); nothing was written") from exc
    if _ours(doc) != wanted or _others(doc) != _others(old_doc):
        raise InstallError(f"editing {path} would change other settings (unusual layout); nothing was written")




def _toml_loads(text: str) -> dict[str, Any]:
    try:
        return tomltext.loads(text)
    except ModuleNotFoundError as exc:
        raise InstallError(f"editing Codex's config.toml: {exc}") from exc
