"""Secret and PII redaction for everything Warden writes outside the model call.

`redact(text, kinds)` replaces what it finds with `[REDACTED:<kind>]`;
`redact_obj(obj, kinds, skip_fields)` does the same through nested JSON-like values
(dicts, lists, tuples, strings), leaving the fields named in `skip_fields` untouched
and masking string values stored under secret-looking keys (`password`, `api_key`,
`accessToken`, ...).

Kinds (all on by default, configurable per run through `Context.redact`):

- `email`: addresses, not file names such as `logo@2x.png`.
- `phone`: international numbers (`+44 20 7946 0958`), US-style numbers with
  separators (`(415) 555-2671`, `415.555.2671`, `1-800-555-0199`), and other numbers
  after a label (`tel:`, `phone`, `mobile`).
- `card`: 13 to 19 digits, plain or grouped with spaces or dashes, with a card-brand
  first digit and a valid Luhn checksum.
- `national_id`: US Social Security numbers (area not 000, 666 or 9xx; group not 00;
  serial not 0000; dashed, or plain after an `SSN` label) and UK National Insurance
  numbers (`QQ 12 34 56 C` prefix rules).
- `secret`: provider keys and tokens (`sk-...`, `ghp_...`, `github_pat_...`,
  `AKIA...`, `xox[bpars]-...`, Stripe, Google `AIza...`), JWTs, `Bearer`/`Basic`
  credentials, PEM private keys, and the value of `password=`, `token: ...`,
  `"api_key": "..."` and similar assignments.
- `url_password`: the password in `scheme://user:password@host` (the rest of the URL
  is kept).

All detectors run on the original text and the matches are merged (earlier kinds in
`KINDS` win overlaps), so one kind's replacement never feeds another's pattern.
A bottom module: it imports nothing from the project.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

KINDS: tuple[str, ...] = ("url_password", "secret", "card", "national_id", "email", "phone")
"""Every kind, in the order that wins when two matches overlap."""


def marker(kind: str) -> str:
    """Return the text that replaces a redacted value."""
    return f"[REDACTED:{kind}]"


@dataclass(frozen=True)
class Span:
    """One value to redact: its kind and where it is in the text."""

    kind: str
    start: int
    end: int


# --- url_password ----------------------------------------------------------------

_URL_PASSWORD = re.compile(
    r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@?#\[\]]+:(?P<v>[^\s@/?#]+)@[^\s@/]", re.IGNORECASE
)


def _url_password(text: str) -> Iterable[tuple[int, int]]:
    if "://" not in text or "@" not in text:
        return
    for m in _URL_PASSWORD.finditer(text):
        yield m.span("v")


# --- secret ----------------------------------------------------------------------

_TOKEN_PATTERNS = [
    r"\bsk-(?:proj-|ant-(?:api\d\d-)?|live-|svcacct-)?[A-Za-z0-9_-]{20,}",
    r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",
    r"\bgh[pousr]_[A-Za-z0-9]{36,}",
    r"\bgithub_pat_[A-Za-z0-9_]{22,}",
    r"\bglpat-[A-Za-z0-9_-]{20,}",
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    r"\bAIza[0-9A-Za-z_-]{35}",
    r"\bhf_[A-Za-z0-9]{30,}",
    r"\bnpm_[A-Za-z0-9]{36}",
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    r"-----BEGIN [A-Z ]{0,20}PRIVATE KEY-----(?:(?!-----)[\s\S]){0,16384}"
    r"-----END [A-Z ]{0,20}PRIVATE KEY-----",
]
_TOKENS = re.compile("|".join(f"(?:{p})" for p in _TOKEN_PATTERNS))
# Hand-written prefilters (no library does this): Python's `re` cannot skip ahead to a
# literal when branches start with `\b`, so a big alternation costs ~0.25 us per
# character even on text it can never match (~1 ms for a 2,000-character tool-result
# preview, the audit trail's largest cost per call). Each pattern below needs one of
# its hint strings, so text without any is skipped; tests/unit/test_redaction.py checks
# every pattern's hints against examples.
_TOKEN_HINTS = (
    "sk-", "sk_", "rk_", "pk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "glpat-", "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "xox", "AIza", "hf_",
    "npm_", "eyJ", "-----BEGIN",
)  # fmt: skip
_AUTH_HEADER = re.compile(
    r"\b(?:Bearer|Token)\s+(?P<v>[A-Za-z0-9._~+/-]{16,}=*)"
    r"|\bBasic\s+(?P<b>[A-Za-z0-9+/]{12,}={0,2})(?![A-Za-z0-9+/=])"
)
# Names whose value is a secret: password, passwd, pwd, secret, token, api_key,
# private_key, access_key, client_secret, credentials..., alone or inside a longer
# snake/kebab/camel-case name (DB_PASSWORD, aws_secret_access_key, accessToken).
_SECRET_NAME = (
    r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
    r"private[_-]?key|auth[_-]?key|credentials?|client[_-]?secret|session[_-]?key)"
)
# Anchored on the secret word itself, with bounded name parts on either side, so a
# long run of word characters cannot make the search quadratic.
_ASSIGNMENT = re.compile(
    rf"{_SECRET_NAME}[A-Za-z0-9_-]{{0,40}}"
    r"[\"']?[ \t]*(?P<op>[:=]|=>)[ \t]*"
    r"(?:\"(?P<dq>[^\"\n]{3,})\"|'(?P<sq>[^'\n]{3,})'|(?P<bare>[^\s\"',;)}\]]{3,}))",
    re.IGNORECASE,
)
_AUTH_HINTS = ("Bearer", "Token", "Basic")
_ASSIGNMENT_HINTS = ("pass", "pwd", "secret", "token", "key", "credential")  # case-folded
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _name_at(text: str, start: int, end: int) -> str | None:
    """Return the whole field name around a secret word, or None if it is too long."""
    lo = start
    while lo > 0 and text[lo - 1] in _NAME_CHARS:
        lo -= 1
        if start - lo > 40:
            return None
    return text[lo:end]


_PLACEHOLDER = re.compile(
    r"^(?:\*+|x+|\.+|<[^>]*>|\$\{?[\w.]+\}?|\{\{.*\}\}|%\(?\w+\)?s?|\[REDACTED[^\]]*\]|"
    r"none|null|nil|true|false|undefined|required|optional|string|str|int|bool|secret|"
    r"password|token|changeme|redacted|hidden|example|your[\w-]*|os\.environ.*|env\(.*|"
    r"getenv.*|process\.env.*|self\.\w+|settings\.\w+|config\.\w+)$",
    re.IGNORECASE,
)
_NAME_TOKEN = re.compile(r"tokens?_(?:per|used|count|limit)|(?:max|input|output|total)_tokens?")


def _value_is_secret(value: str, op: str, quoted: bool) -> bool:
    if _PLACEHOLDER.match(value.strip()):
        return False
    if quoted or op != ":":
        return True
    # `name: value` is also how prose and YAML are written: ask for a credential-like
    # value (a digit, a symbol or mixed case) or a long one.
    return bool(
        re.search(r"[\d\W_]", value) or (value[1:] != value[1:].lower()) or len(value) >= 12
    )


def _hinted(text: str, hints: Iterable[str]) -> bool:
    """Tell whether `text` holds one of the strings a pattern cannot match without."""
    return any(h in text for h in hints)


@functools.lru_cache(maxsize=1)
def _folded(text: str) -> str:
    """Return `text` case-folded for the case-insensitive hints: three detectors ask in
    turn about the same text, which is folded (copied) once."""
    return text.casefold()


def _secrets(text: str) -> Iterable[tuple[int, int]]:
    if _hinted(text, _TOKEN_HINTS):
        for m in _TOKENS.finditer(text):
            yield m.span()
    if _hinted(text, _AUTH_HINTS):
        for m in _AUTH_HEADER.finditer(text):
            yield m.span("v") if m.group("v") else m.span("b")
    if not _hinted(_folded(text), _ASSIGNMENT_HINTS):
        return
    for m in _ASSIGNMENT.finditer(text):
        name = _name_at(text, m.start(), m.start("op"))
        if name is None or _NAME_TOKEN.search(name.lower()):
            continue
        group = next(g for g in ("dq", "sq", "bare") if m.group(g) is not None)
        if _value_is_secret(m.group(group), m.group("op"), group != "bare"):
            yield m.span(group)


# --- card ------------------------------------------------------------------------

_CARD = re.compile(
    r"(?<![\w.-])(?<!\d[ -])"
    r"(?:[2-6]\d{12,18}"  # plain
    r"|[2-6]\d{3}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{1,3})?"  # 4-4-4-4(-3)
    r"|3[47]\d{2}(?P<a>[ -])\d{6}(?P=a)\d{5}"  # Amex 4-6-5
    r"|3[0689]\d{2}(?P<d>[ -])\d{6}(?P=d)\d{4})"  # Diners 4-6-4
    r"(?![\w-]|[ -]\d|\.\d)"
)


def luhn_ok(digits: str) -> bool:
    """Tell whether a digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# A long number right after one of these words is an identifier, not a card.
_NOT_A_CARD = re.compile(
    r"\b(?:order|invoice|tracking|shipment|parcel|reference|ref|ticket|isbn|ean|upc|gtin|"
    r"imei|serial|sku|account|acct)\b\W{0,4}(?:(?:no|number|id)\b\W{0,3})?$",
    re.IGNORECASE,
)


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if not (13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1):
            continue
        if _NOT_A_CARD.search(text[max(m.start() - 30, 0) : m.start()]):
            continue
        yield m.span()


# --- national_id -----------------------------------------------------------------

_SSN_BODY = r"(?!000|666|9\d\d)\d{3}(?P<s>[- ])(?!00)\d{2}(?P=s)(?!0000)\d{4}"
_SSN = re.compile(rf"(?<![\w.-])(?<!\d[ -])(?:{_SSN_BODY.replace('[- ]', '-')})(?![\w-]|[ -]\d)")
_SSN_LABELLED = re.compile(
    r"\b(?:SSN|SSA|social\s+security(?:\s+(?:number|no\.?|#))?)\s*(?:number|no\.?|#)?"
    r"\s*[:=#]?\s*(?P<v>(?!000|666|9\d\d)\d{3}[- ]?(?!00)\d{2}[- ]?(?!0000)\d{4})(?!\d)",
    re.IGNORECASE,
)
_NINO = re.compile(
    r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r"(?P<s> ?)\d{2}(?P=s)\d{2}(?P=s)\d{2}(?P=s)[A-D]\b"
)


_SSN_LABEL_HINTS = ("ssn", "ssa", "social")  # case-folded


def _national_ids(text: str) -> Iterable[tuple[int, int]]:
    if "-" in text:
        for m in _SSN.finditer(text):
            yield m.span()
    if _hinted(_folded(text), _SSN_LABEL_HINTS):
        for m in _SSN_LABELLED.finditer(text):
            yield m.span("v")
    for m in _NINO.finditer(text):
        yield m.span()


# --- email -----------------------------------------------------------------------

_FILE_TLDS = {
    "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "pdf", "css", "js", "ts",
    "json", "html", "htm", "txt", "md", "py", "zip", "gz", "tar", "mp4", "mp3", "wav",
}  # fmt: skip
_EMAIL = re.compile(
    r"(?<![\w.+'-])[A-Za-z0-9][A-Za-z0-9._%+'-]{0,63}@"
    r"(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,24}))"
    r"(?![\w-]|\.[A-Za-z0-9])"
)


def _emails(text: str) -> Iterable[tuple[int, int]]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        if m.group("tld").lower() not in _FILE_TLDS:
            yield m.span()


# --- phone -----------------------------------------------------------------------

_NOT_AFTER = r"(?<![\w+./:-])(?<!\d[ .-])"
# Not followed by more of a number; an extension (`x204`, `ext. 12`) may follow.
_NOT_BEFORE = r"(?!(?!x\d|ext\b)[\w/-]|[ .-]?\d|\.\d)"
_PHONE_INTL = re.compile(
    rf"{_NOT_AFTER}\+[1-9]\d{{0,2}}(?:[ .-]?\(0?\d{{1,4}}\)|[ .-]?\d{{1,5}})(?:[ .-]?\d{{2,5}}){{1,5}}"
    rf"{_NOT_BEFORE}"
)
_PHONE_US = re.compile(
    rf"{_NOT_AFTER}(?:1[ .-])?(?:\([2-9]\d{{2}}\)[ ]?|[2-9]\d{{2}}(?P<s>[ .-]))"
    rf"[2-9]\d{{2}}[ .-]\d{{4}}{_NOT_BEFORE}"
)
_PHONE_LABELLED = re.compile(
    r"\b(?:phone|tel|telephone|mobile|cell|fax|call|whatsapp|ph)\.?"
    r"(?:\s*(?:no\.?|number|#))?\s*[:=]?\s*"
    r"(?P<v>\+?\(?\d[\d ().-]{5,18}\d)(?![\w-]|[.]\d)",
    re.IGNORECASE,
)


def _phone_digits_ok(value: str, low: int = 7) -> bool:
    return low <= len(re.sub(r"\D", "", value)) <= 15


_PHONE_US_HINTS = (" ", ".", "-")
_PHONE_LABEL_HINTS = ("ph", "tel", "mobile", "cell", "fax", "call", "whatsapp")  # case-folded


def _phones(text: str) -> Iterable[tuple[int, int]]:
    if "+" in text:
        for m in _PHONE_INTL.finditer(text):
            if _phone_digits_ok(m.group(0), 8):
                yield m.span()
    if _hinted(text, _PHONE_US_HINTS):
        for m in _PHONE_US.finditer(text):
            yield m.span()
    if not _hinted(_folded(text), _PHONE_LABEL_HINTS):
        return
    for m in _PHONE_LABELLED.finditer(text):
        value = m.group("v")
        if _phone_digits_ok(value) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
            yield m.span("v")


_DETECTORS: dict[str, Callable[[str], Iterable[tuple[int, int]]]] = {
    "url_password": _url_password,
    "secret": _secrets,
    "card": _cards,
    "national_id": _national_ids,
    "email": _emails,
    "phone": _phones,
}


def _check(kinds: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(kinds)
    unknown = [k for k in chosen if k not in _DETECTORS]
    if unknown:
        raise ValueError(f"unknown redaction kind(s) {unknown}; expected some of {list(KINDS)}")
    return chosen


def find(text: str, kinds: Iterable[str] = KINDS) -> list[Span]:
    """Return the non-overlapping values to redact, in text order."""
    chosen = set(_check(kinds))
    starts: list[int] = []  # accepted spans never overlap, so sorted by start and by end
    taken: list[Span] = []
    for kind in KINDS:
        if kind not in chosen:
            continue
        for start, end in _DETECTORS[kind](text):
            at = bisect.bisect_left(starts, start)
            if start >= end or (at and taken[at - 1].end > start):
                continue
            if at < len(taken) and taken[at].start < end:
                continue
            starts.insert(at, start)
            taken.insert(at, Span(kind, start, end))
    return taken


def redact(text: str, kinds: Iterable[str] = KINDS) -> str:
    """Replace secrets and PII of the given kinds with `[REDACTED:<kind>]`."""
    if not text:
        return text
    spans = find(text, kinds)
    if not spans:
        return text
    out, at = [], 0
    for span in spans:
        out.append(text[at : span.start])
        out.append(marker(span.kind))
        at = span.end
    out.append(text[at:])
    return "".join(out)


_SECRET_KEY = re.compile(rf"(?:^|[_-]){_SECRET_NAME}(?:$|[_-])", re.IGNORECASE)


def secret_key(name: str) -> bool:
    """Tell whether a field name says its value is a secret (`password`, `apiKey`, ...)."""
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    return bool(_SECRET_KEY.search(snake)) and not _NAME_TOKEN.search(snake)


def redact_obj(obj: Any, kinds: Iterable[str] = KINDS, skip_fields: Iterable[str] = ()) -> Any:
    """Redact strings throughout a JSON-like value, returning a new value.

    `skip_fields` names fields left as they are: a plain key (`"tool_call_id"`) skips
    that key at any depth, a dotted path (`"report.final_answer"`, list levels not
    counted) skips it at that place only. With the `secret` kind, a non-empty string
    stored under a secret-looking key is masked whole. Keys and non-string scalars are
    kept.
    """
    chosen = _check(kinds)
    skip = frozenset(skip_fields)
    if not chosen:
        return obj

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            return redact(value, chosen)
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                here = f"{path}.{key}" if path else str(key)
                if str(key) in skip or here in skip:
                    out[key] = item
                elif (
                    "secret" in chosen
                    and isinstance(item, str)
                    and item
                    and isinstance(key, str)
                    and secret_key(key)
                    and not _PLACEHOLDER.match(item)
                ):
                    out[key] = marker("secret")
                else:
                    out[key] = walk(item, here)
            return out
        if isinstance(value, list):
            return [walk(item, path) for item in value]
        if isinstance(value, tuple):
            return tuple(walk(item, path) for item in value)
        return value

    return walk(obj, "")
