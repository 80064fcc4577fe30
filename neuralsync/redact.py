"""Secret redaction: API keys, private keys, passwords and the credentials of connection URLs are
replaced before anything is stored.

Runs before an op is built, so a secret never reaches the log, the FTS index,
an embedding or a peer. Patterns are deliberately specific (prefix + length)
to keep false positives on ordinary prose near zero.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PLACEHOLDER = "[REDACTED:{name}]"

DEFAULT_PATTERNS: dict[str, str] = {
    "private_key": r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    "anthropic_key": r"\bsk-ant-[A-Za-z0-9_\-]{20,}",
    "openai_key": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
    "google_api_key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
    "github_token": r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}\b",
    "aws_access_key": r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
    "aws_secret_key": r"(?i)\baws_secret_access_key\b\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{40}['\"]?",
    "slack_token": r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    "stripe_key": r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}\b",
    "jwt": r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}",
    # The password of a URL with credentials (postgres://user:pass@host/db, mongodb+srv://..., redis://:pass@...);
    # the scheme, user and host stay readable. A port (host:5432/db) has no '@' after it, so it is not taken.
    "connection_password": r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@\[\]]*:)(?!\[REDACTED)[^\s@/]+(?=@)",
    # The value assigned to a password, secret, API key or token (password=hunter2, PASSWORD: "x",
    # "client_secret": "...", api_key=...); the name stays. After '=' (not '==') or in quotes any value
    # is taken; after ':' an unquoted value only if it ends its line or item (YAML), and not a type name
    # (``password: str``), so prose such as "password: rotate it monthly" is left alone.
    "secret_assignment": (r"(?im)(?P<keep>\b[\w.\-]*?(?:password|passwd|passphrase|secret|api[_\-]?key|apikey"
                          r"|(?:access|auth|bearer|refresh|session|api|secret)[_\-]?token)[\"']?[ \t]*"
                          r"(?:(?P<eq>=)(?!=)|:)[ \t]*)(?!\[REDACTED)(?:\"[^\"\n]*\"|'[^'\n]*'|(?(eq)[^\s\"'`,;&]+"
                          r"|(?!(?:str|bytes|int|string|SecretStr|Optional|None|null|true|false)\b)"
                          r"[^\s\"'`,;&()\[\]{}<>]+(?=[ \t]*(?:$|[,;}\]]))))"),
}


class Redactor:
    """Replaces every match of the configured patterns with a named placeholder."""

    def __init__(self, enabled: bool = True, extra_patterns: Iterable[str] = ()) -> None:
        self.enabled = enabled
        patterns = dict(DEFAULT_PATTERNS)
        for index, pattern in enumerate(extra_patterns):
            patterns[f"custom_{index}"] = pattern
        self._compiled = [(name, re.compile(p)) for name, p in patterns.items()]
        # A pattern with a group named ``keep`` keeps what that group matched (a name, a URL's user) and
        # replaces only the rest.
        self._replacements = [("\\g<keep>" if "keep" in regex.groupindex else "") + PLACEHOLDER.format(name=name)
                              for name, regex in self._compiled]
        # One cheap pre-check: most texts contain none of the trigger fragments.
        self._hint = re.compile(r"sk-|sk_|rk_|AIza|gh[pousr]_|github_pat_|A[KSGIRNP][A-Z]{2}|"
                                r"aws_secret|xox|eyJ|PRIVATE KEY|://|(?i:passw|passphrase|secret|api_?key|token)"
                                + ("|." if extra_patterns else ""))

    def redact(self, text: str) -> str:
        """``text`` with secrets replaced; unchanged when disabled or nothing matches."""
        if not self.enabled or not self._hint.search(text):
            return text
        for (_, regex), replacement in zip(self._compiled, self._replacements, strict=True):
            text = regex.sub(replacement, text)
        return text
