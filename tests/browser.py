"""Drive Debian's headless Chromium from tests: rendered DOM, screenshots, and the page's test hooks.

Pages under test (``web/ops.html``) mark every number a test reads with ``data-testid`` and
put its raw value in ``data-value``; :func:`test_values`, :func:`texts` and :func:`rows` read
those back from a DOM dumped by :func:`rendered_dom`, with nothing but the stdlib html.parser.

Each call starts a fresh Chromium (``/usr/bin/chromium``, or ``$GOCHAT_CHROMIUM``) with a
temporary profile. ``--virtual-time-budget`` lets the page's timers and first fetches run
before the DOM is dumped, so ``wait_ms`` is virtual time: 5000 covers the page's first fetch
and two more 2 s polls, and takes about 1-2 s of wall time here (up to ~4 s on a busy machine).
No sandbox: tests run as root.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = os.environ.get("GOCHAT_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_S = 60
INSTALL_HINT = "install Debian's `chromium` package (apt-get install chromium)"

# Elements the HTML serializer writes without an end tag.
_VOID = frozenset(
    "area base br col embed hr img input link meta param source track wbr".split()
)
_NO_TEXT = frozenset({"script", "style", "template", "noscript"})
_INLINE = frozenset(
    "a abbr b bdi bdo cite code data dfn em i kbd label mark q s samp small span strong sub sup time u var".split()
)


class BrowserError(RuntimeError):
    """Chromium failed, timed out, or could not load the page."""


def _chromium(url: str, wait_ms: int, *extra: str) -> str:
    """Run headless Chromium on ``url`` with ``extra`` flags and return its stdout."""
    with tempfile.TemporaryDirectory(prefix="gochat-chromium-", ignore_cleanup_errors=True) as profile:
        cmd = [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={int(wait_ms)}",
            *extra,
            url,
        ]
        try:
            # Own session, so a hung browser can be killed with all its helper processes.
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise BrowserError(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}") from None
        with proc:
            try:
                out, err = proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                out, err = proc.communicate()
                raise BrowserError(
                    f"chromium timed out after {TIMEOUT_S}s on {url}\n--- stderr ---\n{_decode(err)}"
                ) from None
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited with {proc.returncode} on {url}\n--- stderr ---\n{_decode(err)}")
    return _decode(out)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the browser's process group; only while ``proc`` is unreaped, so its pid is still ours."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def _check_loaded(dom: str, url: str) -> None:
    """Chromium exits 0 and dumps its own error page when it cannot load ``url``."""
    if re.search(r"<body[^>]*\bclass=\"[^\"]*\bneterror\b", dom):
        code = re.search(r'"errorCode":"([A-Z_]+)"', dom)
        raise BrowserError(f"chromium could not load {url}: {code.group(1) if code else 'network error'}")


def rendered_dom(url: str, *, wait_ms: int = 5000, flags: tuple[str, ...] = ()) -> str:
    """The page's DOM, serialized as HTML, after ``wait_ms`` of (virtual) time of running its scripts.

    ``flags``: more Chromium switches (a test's certificate pin, say).
    """
    dom = _chromium(url, wait_ms, "--dump-dom", *flags)
    _check_loaded(dom, url)
    return dom


def screenshot(url: str, path: Path, *, wait_ms: int = 5000, size: tuple[int, int] = (1280, 900)) -> None:
    """Save a PNG of the page's viewport (``size`` is width, height in CSS pixels) to ``path``."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    width, height = size
    # --dump-dom as well, only to notice Chromium's own "site can't be reached" page.
    dom = _chromium(url, wait_ms, "--dump-dom", f"--screenshot={path}", f"--window-size={width},{height}")
    _check_loaded(dom, url)
    if not path.is_file() or path.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot to {path} for {url}")


# ---- reading the dumped DOM ---------------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def iter(self) -> Iterator[Element]:
        """This element and all its descendant elements, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def text(self) -> str:
        """The text content, whitespace collapsed, with a space between block/cell elements; no script/style."""
        parts: list[str] = []

        def walk(el: Element) -> None:
            for child in el.children:
                if isinstance(child, str):
                    parts.append(child)
                elif child.tag in _INLINE:
                    walk(child)
                elif child.tag not in _NO_TEXT:
                    parts.append(" ")  # block and table-cell boundaries separate words
                    walk(child)
                    parts.append(" ")

        walk(self)
        return " ".join("".join(parts).split())


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(el)
        if tag not in _VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return  # an end tag with no open element is ignored, as browsers do

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(dom: str) -> Element:
    """A minimal element tree of ``dom`` (the dumped HTML)."""
    builder = _TreeBuilder()
    builder.feed(dom)
    builder.close()
    return builder.root


def _with_testid(dom: str) -> Iterator[Element]:
    return (el for el in parse(dom).iter() if "data-testid" in el.attrs)


def test_values(dom: str) -> dict[str, str]:
    """``{data-testid: data-value}`` for every element that has both; a repeated testid keeps the last.

    ``data-value`` is the raw number as JavaScript wrote it (``"123.4"``, ``"1500"``), or ``""``
    where the API gave null/nothing. Use :func:`rows` for repeated testids such as table rows.
    """
    return {el.attrs["data-testid"]: el.attrs["data-value"] for el in _with_testid(dom) if "data-value" in el.attrs}


test_values.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into a test module


def texts(dom: str) -> dict[str, str]:
    """``{data-testid: visible text}`` (whitespace collapsed) for every element with a testid; last wins."""
    return {el.attrs["data-testid"]: el.text() for el in _with_testid(dom)}


@dataclass
class Row:
    """One element carrying a (repeated) testid, typically a table row."""

    attrs: dict[str, str]  # all its attributes: data-value, data-topic, data-group, class, ...
    cells: list[str]  # text of its direct <td>/<th> children, in order
    text: str  # its whole text

    @property
    def value(self) -> str:
        return self.attrs.get("data-value", "")


def rows(dom: str, testid: str) -> list[Row]:
    """Every element with ``data-testid=testid``, in document order."""
    return [
        Row(
            attrs=dict(el.attrs),
            cells=[c.text() for c in el.children if isinstance(c, Element) and c.tag in ("td", "th")],
            text=el.text(),
        )
        for el in _with_testid(dom)
        if el.attrs["data-testid"] == testid
    ]
