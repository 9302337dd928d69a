"""Summaries of a gateway profile (pyinstrument session or py-spy raw stacks) for `bench.ingest`.

Both profilers lose the link between a coroutine and the SQLAlchemy work it runs through
`greenlet_spawn`: such stacks start at the SQLAlchemy entry point (`Session.execute`,
`Session.flush`, ...). They are reported as their own category rather than silently dropped.
"""

from __future__ import annotations

import argparse
import linecache
import re
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Frame = tuple[str, str, int]  # function, file (short), line
OWN_PACKAGES = ("gateway/", "channels/", "routing/", "timeline/")
_ENTRY_FILES = ("gateway/__main__.py", "gateway/cli.py")
TREE_LINES = 70

IDLE = "idle: event loop waiting in epoll"
IMPORTS = "startup: imports"
MIGRATIONS = "startup: migrations (alembic)"
GREENLET = "requests: SQLAlchemy sync work in greenlet_spawn"
REQUESTS = "requests: aiohttp handler chain (excl. greenlet work)"
LOOP = "event loop, sockets, HTTP parsing, thread hand-offs"
WORKER_WAIT = "waiting for work (queue.get)"
WORKER_SQLITE = "running a sqlite3 call (C: execute/step/commit, busy waits)"
WORKER_OTHER = "other"


@dataclass(frozen=True)
class Summary:
    text: str
    data: dict[str, Any]


@dataclass(frozen=True)
class _Sample:
    thread: str  # "main" | "writer" (timeline.db's SQLite writer) | "aiosqlite" | "other"
    stack: tuple[Frame, ...]  # outermost first
    seconds: float


def summarise_pyinstrument(path: Path, *, top: int) -> Summary:
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    session = Session.load(str(path))
    samples = list(_pyinstrument_samples(session.root_frame(trim_stem=False)))
    tree = ConsoleRenderer(time="percent_of_total", unicode=False, color=False).render(session)
    tree_lines = tree.strip("\n").splitlines()
    head = (
        f"pyinstrument: {session.duration:.1f} s wall, {session.cpu_time:.1f} s CPU, "
        f"{session.sample_count} samples of the main (event loop) thread; "
        "the aiosqlite threads are not sampled (use --profiler py-spy)"
    )
    text, data = _summarise(samples, top=top, head=head)
    tree_text = "\n".join(tree_lines[:TREE_LINES])
    if len(tree_lines) > TREE_LINES:
        tree_text += f"\n... ({len(tree_lines) - TREE_LINES} more lines in the session file)"
    data["profiler"] = "pyinstrument"
    data["wall_s"] = round(session.duration, 3)
    data["cpu_s"] = round(session.cpu_time, 3)
    return Summary(f"{text}\n\npyinstrument call tree (top):\n{tree_text}", data)


def _pyinstrument_samples(root: Any) -> Iterable[_Sample]:
    """One sample per `[self]` leaf: its time, with the stack of real frames above it."""
    pending: list[tuple[Any, tuple[Frame, ...]]] = [(child, ()) for child in root.children]
    while pending:
        frame, stack = pending.pop()
        if frame.is_synthetic:
            if frame.time > 0 and stack:
                yield _Sample("main", stack, frame.time)
            continue
        name = f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function
        here = (*stack, (name, frame.file_path_short or "?", frame.line_no or 0))
        pending.extend((child, here) for child in frame.children)


_PY_SPY_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>\d+)\)$")


def summarise_py_spy(path: Path, *, top: int, rate: float) -> Summary:
    samples: list[_Sample] = []
    main_tid: str | None = None
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        label, *frames = stack_text.split(";")
        if "MainThread" in label:
            main_tid = label.split(")")[0]
        parsed = tuple(_py_spy_frame(f) for f in frames)
        samples.append(_Sample(label, parsed, int(count) / rate))
    for index, sample in enumerate(samples):
        if "sqlite-writer" in sample.thread:
            thread = "writer"
        elif "_connection_worker_thread" in sample.thread:
            thread = "aiosqlite"
        elif main_tid is not None and sample.thread.startswith(main_tid):
            thread = "main"
        else:
            thread = "other"
        samples[index] = _Sample(thread, sample.stack, sample.seconds)
    head = (
        f"py-spy: {sum(s.seconds for s in samples):.1f} s of samples at {rate:g} Hz "
        "over all threads (whole process lifetime)"
    )
    text, data = _summarise(samples, top=top, head=head)
    data["profiler"] = "py-spy"
    return Summary(text, data)


def _py_spy_frame(text: str) -> Frame:
    match = _PY_SPY_FRAME.match(text)
    if match is None:
        return (text, "?", 0)
    return (match["function"], match["file"], int(match["line"]))


def _main_category(stack: Sequence[Frame]) -> str:
    function, file, _ = stack[-1]
    if function in ("epoll.poll", "EpollSelector.select", "select") and file in (
        "<built-in>",
        "selectors.py",
    ):
        return IDLE
    if any(
        f.startswith("alembic/") or (fn == "upgrade" and f == "timeline/db.py")
        for fn, f, _ in stack
    ):
        return MIGRATIONS
    if any("importlib" in f or fn == "_find_and_load" for fn, f, _ in stack):
        return IMPORTS
    if stack[0][1].startswith("sqlalchemy/"):
        return GREENLET
    if any(fn.endswith("_handle_request") and f.startswith("aiohttp/") for fn, f, _ in stack):
        return REQUESTS
    return LOOP


def _worker_category(stack: Sequence[Frame], sources: dict[str, str]) -> str:
    function, file, line = stack[-1]
    if function != "_connection_worker_thread":
        return WORKER_OTHER
    source = linecache.getline(sources.get(file, ""), line) if file in sources else ""
    if "get(" in source:
        return WORKER_WAIT
    if "function()" in source:
        return WORKER_SQLITE
    return WORKER_OTHER


def _package(stack: Sequence[Frame]) -> str:
    """The package of the innermost frame that is Python code (built-ins count as their caller)."""
    for _, file, _ in reversed(stack):
        if file not in ("<built-in>", "?") and not file.startswith("<"):
            return file.split("/", 1)[0] if "/" in file else file.removesuffix(".py")
    return "<built-in>"


def _is_own(file: str) -> bool:
    """Our packages, minus the CLI frames every request sits under (they say nothing)."""
    return file.startswith(OWN_PACKAGES) and file not in _ENTRY_FILES


def _most(tally: dict[str, float], n: int | None = None) -> list[tuple[str, float]]:
    return sorted(tally.items(), key=lambda item: -item[1])[:n]


def _summarise(samples: list[_Sample], *, top: int, head: str) -> tuple[str, dict[str, Any]]:
    import aiosqlite.core

    sources = {"aiosqlite/core.py": aiosqlite.core.__file__}
    main = [s for s in samples if s.thread == "main" and s.stack]
    main_total = sum(s.seconds for s in main) or 1e-9
    categories: dict[str, float] = defaultdict(float)
    busy: list[_Sample] = []
    for sample in main:
        category = _main_category(sample.stack)
        categories[category] += sample.seconds
        if category in (GREENLET, REQUESTS, LOOP):
            busy.append(sample)
    busy_total = sum(s.seconds for s in busy) or 1e-9

    self_time: dict[str, float] = defaultdict(float)
    packages: dict[str, float] = defaultdict(float)
    own_inclusive: dict[str, float] = defaultdict(float)
    for sample in busy:
        function, file, _ = sample.stack[-1]
        self_time[f"{function}  ({file})"] += sample.seconds
        packages[_package(sample.stack)] += sample.seconds
        for name in {f"{fn}  ({f})" for fn, f, _ in sample.stack if _is_own(f)}:
            own_inclusive[name] += sample.seconds

    workers: dict[str, float] = defaultdict(float)
    for sample in samples:
        if sample.thread == "aiosqlite" and sample.stack:
            workers[_worker_category(sample.stack, sources)] += sample.seconds

    writer: dict[str, float] = defaultdict(float)
    for sample in samples:
        if sample.thread == "writer" and sample.stack:
            idle = sample.stack[-1][0] == "_worker" or sample.stack[-1][1].startswith("queue")
            writer["(waiting for work)" if idle else "(running a unit of work)"] += sample.seconds
            for name in {f"{fn}  ({f})" for fn, f, _ in sample.stack if _is_own(f)}:
                writer[name] += sample.seconds

    def pct(value: float, total: float) -> str:
        return f"{100 * value / total:5.1f}%"

    lines = [head, "", "main thread, by activity (% of sampled main-thread time):"]
    lines += [f"  {pct(v, main_total)}  {k}" for k, v in _most(categories)]
    lines += ["", f"busy main thread by package (self time, % of busy {busy_total:.2f} s):"]
    lines += [f"  {pct(v, busy_total)}  {k}" for k, v in _most(packages, 12)]
    lines += ["", f"busy main thread, top {top} functions by self time:"]
    lines += [f"  {pct(v, busy_total)}  {k}" for k, v in _most(self_time, top)]
    lines += ["", "our code, inclusive (greenlet work not attributable; % of busy):"]
    lines += [f"  {pct(v, busy_total)}  {k}" for k, v in _most(own_inclusive, top)]
    if workers:
        worker_total = sum(workers.values())
        lines += ["", f"aiosqlite worker threads ({worker_total:.2f} s sampled, all connections):"]
        lines += [f"  {pct(v, worker_total)}  {k}" for k, v in _most(workers)]

    if writer:
        writer_total = writer["(waiting for work)"] + writer["(running a unit of work)"]
        lines += ["", f"SQLite writer thread ({writer_total:.2f} s sampled; our code inclusive):"]
        lines += [f"  {pct(v, writer_total)}  {k}" for k, v in _most(writer, top)]

    def rounded(tally: dict[str, float], n: int) -> list[list[Any]]:
        return [[k, round(v, 4)] for k, v in _most(tally, n)]

    data: dict[str, Any] = {
        "main_thread_s": round(main_total, 3),
        "main_by_activity_s": rounded(categories, 20),
        "busy_s": round(busy_total, 3),
        "busy_by_package_s": rounded(packages, 20),
        "busy_top_self_s": rounded(self_time, top),
        "own_code_inclusive_s": rounded(own_inclusive, top),
        "aiosqlite_threads_s": {k: round(v, 3) for k, v in workers.items()},
        "sqlite_writer_s": rounded(writer, top),
    }
    return "\n".join(lines), data


REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PY_SPY_RATE = 250  # samples/s


def report(profile: Path, *, name: str, profiler: str, top: int) -> dict[str, Any]:
    """Keep the raw profile as `<name>-gateway.*`, print and write its summary; its data."""
    if not profile.exists():
        print(f"\nno profile was written ({profile.name} missing)", file=sys.stderr)
        return {"error": "no profile written"}
    kept = RESULTS / f"{name}-gateway.{profile.name.split('.', 1)[1]}"
    shutil.copyfile(profile, kept)
    if profiler == "py-spy":
        summary = summarise_py_spy(profile, top=top, rate=PY_SPY_RATE)
    else:
        summary = summarise_pyinstrument(profile, top=top)
    text_path = RESULTS / f"{name}-profile.txt"
    text_path.write_text(summary.text + "\n")
    print()
    print(summary.text)
    print(f"\nprofile: {kept.relative_to(REPO)}, summary: {text_path.relative_to(REPO)}")
    return summary.data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The profiling and clean-up options every benchmark takes."""
    parser.add_argument(
        "--profile", action="store_true", help="run the gateway under a sampling profiler"
    )
    parser.add_argument(
        "--profiler",
        choices=["pyinstrument", "py-spy"],
        default="pyinstrument",
        help="which profiler --profile uses (py-spy also samples the database writer threads)",
    )
    parser.add_argument("--top", type=int, default=25, help="rows of each profile summary")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
