"""`groundwork kb ...`: build and query the local knowledge base. Parses, calls library code,
renders; exit codes follow the main CLI (1 failed, e.g. a corrupt index; 2 bad input or
configuration, e.g. a missing knowledge base or another embedder).

Everything printed that came from a file name, a document, a setting or an argument is plain
text: the consoles have markup, emoji codes and highlighting off, cells are `Text` objects,
and `one_line` strips escape sequences and control characters first. So a file
named `[bold red]x\x1b[31m.png` prints as `[bold red]x.png`, styled like any other name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.errors import GroundworkError
from retrieval.api import IndexCorruptError
from retrieval.text import one_line

if TYPE_CHECKING:
    from retrieval.ingest import IngestReport
    from retrieval.settings import RetrievalSettings

kb_app = typer.Typer(
    help="The local knowledge base: your images and documents, embedded (CLIP for images, "
    "MiniLM for text) into faiss indexes the agent searches offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(markup=False, emoji=False, highlight=False)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False)
EXIT_FAILED, EXIT_USAGE = 1, 2

KbDirOpt = Annotated[
    Path | None, typer.Option("--kb-dir", help="Knowledge base folder (retrieval.kb_dir).")
]
ClipOpt = Annotated[
    str | None,
    typer.Option("--clip-model", help="open_clip model name or local-dir:PATH."),
]
ClipTagOpt = Annotated[
    str | None,
    typer.Option("--clip-pretrained", help="open_clip pretrained tag or weights file."),
]
TextModelOpt = Annotated[
    str | None, typer.Option("--text-model", help="sentence-transformers model name or folder.")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")]


def _settings(
    kb_dir: Path | None = None,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
    text_model: str | None = None,
    device: str | None = None,
    **more: object,
) -> RetrievalSettings:
    """Settings() (env, .env, defaults) with command options on top."""
    from cli.common import load_settings

    try:
        base = load_settings().retrieval
    except GroundworkError as exc:  # InputError: an invalid GROUNDWORK_ value
        raise _fail(exc, EXIT_USAGE) from None
    overrides: dict[str, object] = {
        k: v
        for k, v in {
            "kb_dir": kb_dir,
            "clip_model": clip_model,
            "clip_pretrained": clip_pretrained,
            "text_model": text_model,
            "device": device,
            **more,
        }.items()
        if v is not None
    }
    try:
        return base.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise _fail(f"invalid option: {_first_error(exc)}", EXIT_USAGE) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc']) or '(root)'}: {err['msg']}"


def _plain(value: object, limit: int | None = None) -> Text:
    """One line of untrusted text, shown as is (no markup, no escapes, no control chars)."""
    return Text(one_line(value, limit))


def _fail(msg: object, code: int = EXIT_FAILED) -> typer.Exit:
    err_console.print(Text("error: ", style="bold red") + _plain(msg), soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _errors_as_exit() -> Iterator[None]:
    """Local-state and configuration problems end the command with one line, not a traceback:
    a damaged index exits 1 (the message says how to rebuild), a missing knowledge base, model
    or mismatched embedder exits 2, a file-system error exits 1."""
    try:
        yield
    except IndexCorruptError as exc:
        raise _fail(exc, EXIT_FAILED) from None
    except GroundworkError as exc:
        raise _fail(exc, EXIT_USAGE) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise _fail(f"{exc.strerror or exc}{where}", EXIT_FAILED) from None


def _json_line(data: Any, indent: int | None = None) -> str:
    """JSON escapes C0 controls itself; also escape DEL and C1 (\x9b is a one-byte CSI)."""
    text = json.dumps(data, ensure_ascii=False, indent=indent)
    return "".join(f"\\u{ord(c):04x}" if 0x7F <= ord(c) <= 0x9F else c for c in text)


@kb_app.command("add")
def add(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest.")],
    kb_dir: KbDirOpt = None,
    clip_model: ClipOpt = None,
    clip_pretrained: ClipTagOpt = None,
    text_model: TextModelOpt = None,
    device: DeviceOpt = None,
    index_kind: Annotated[
        str | None, typer.Option("--index", help="auto, flat, ivf or hnsw.")
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Forget entries under PATHS whose files are gone.")
    ] = False,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild", help="Drop an index built by another embedder instead of refusing."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Ingest images (captions from sidecar .txt/.json or file names) and text documents."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from retrieval.ingest import Progress as Tick
    from retrieval.ingest import ingest
    from retrieval.kb import KnowledgeBase

    if index_kind not in (None, "auto", "flat", "ivf", "hnsw"):
        raise _fail(f"--index must be auto, flat, ivf or hnsw, not {index_kind!r}", EXIT_USAGE)
    missing = [p for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise _fail(f"no such file or folder: {', '.join(map(str, missing))}", EXIT_USAGE)
    settings = _settings(
        kb_dir, clip_model, clip_pretrained, text_model, device, index_kind=index_kind
    )
    with _errors_as_exit():
        kb = KnowledgeBase.open(settings, create=True, rebuild=rebuild)

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} files/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, disable=quiet, transient=False) as bar:
        task = bar.add_task("ingesting", total=None, rate="-")

        def on_tick(t: Tick) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, total=t.total, completed=t.done, rate=f"{speed:.1f}" if speed else "-")

        with _errors_as_exit():
            report = ingest(kb, list(paths), progress=on_tick, prune=prune)
    _render_report(report)


def _render_report(report: IngestReport) -> None:
    console.print(
        f"added {report.images_added} images, {report.documents_added} documents "
        f"({report.passages_added} passages); updated {report.images_updated} images, "
        f"{report.documents_updated} documents; removed {report.removed_entries} entries; "
        f"{report.files_seen} files in {report.seconds:.1f}s",
        highlight=False,
    )
    if not report.skipped:
        return
    counts = report.skipped_by_reason()
    table = Table(title=Text(f"skipped {len(report.skipped)} files"), show_lines=False)
    table.add_column("reason")
    table.add_column("files", justify="right")
    table.add_column("examples")
    for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        examples = [s for s in report.skipped if s.reason == reason][:3]
        text = Text("\n").join(
            _plain(f"{Path(s.path).name}{': ' + s.detail if s.detail else ''}", 200)
            for s in examples
        )
        table.add_row(Text(reason), Text(str(n)), text)
    console.print(table)


@kb_app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    kind: Annotated[str, typer.Option("--kind", help="passages, images or both.")] = "both",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=100)] = 5,
    kb_dir: KbDirOpt = None,
    clip_model: ClipOpt = None,
    clip_pretrained: ClipTagOpt = None,
    text_model: TextModelOpt = None,
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON hit per line.")] = False,
) -> None:
    """Search passages (text model) and images (CLIP) for a text query."""
    from retrieval.kb import KnowledgeBase

    if kind not in ("passages", "images", "both"):
        raise _fail(f"--kind must be passages, images or both, not {kind!r}", EXIT_USAGE)
    settings = _settings(kb_dir, clip_model, clip_pretrained, text_model, device)
    with _errors_as_exit():
        kb = KnowledgeBase.open(settings)
        hits = []
        if kind in ("passages", "both"):
            hits += kb.search_passages(query, top_k)
        if kind == "images" or (kind == "both" and settings.clip_model):
            hits += kb.search_images(query, top_k)
    if as_json:
        for h in hits:
            typer.echo(_json_line(h.model_dump(mode="json")))
        return
    if not hits:
        console.print("no results")
        return
    for label, which in (("passages", "text"), ("images", "image")):
        rows = [h for h in hits if h.kind == which]
        if not rows:
            continue
        table = Table(title=Text(f"{label} for ") + _plain(repr(query), 120))
        table.add_column("score", justify="right")
        table.add_column("file")
        table.add_column("caption" if which == "image" else "passage")
        for h in rows:
            body = h.caption if which == "image" else (h.text or "")
            name = Path(h.path).name if h.path else h.url or ""
            table.add_row(Text(f"{h.score:.3f}"), _plain(name, 120), _plain(body, 160))
        console.print(table)


@kb_app.command("stats")
def stats(
    kb_dir: KbDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What the knowledge base holds: entries, files, embedders, index kind, size on disk."""
    from retrieval.kb import KnowledgeBase

    settings = _settings(kb_dir)
    with _errors_as_exit():
        kb = KnowledgeBase.open(settings)
        st = kb.stats()
    if as_json:
        typer.echo(_json_line(st.model_dump(mode="json"), indent=2))
        return
    table = Table(title=Text("knowledge base ") + _plain(st.kb_dir, 200))
    for col in ("collection", "entries", "files", "embedder", "dim", "index", "on disk"):
        table.add_column(col)
    for c in st.collections:
        emb = c.embedder + (f" ({c.tag})" if c.tag else "")
        cells = (c.name, c.count, c.files, emb, c.dim, c.kind, f"{c.bytes_on_disk / 1e6:.2f} MB")
        table.add_row(*(_plain(v, 120) for v in cells))
    console.print(table)
    if not st.clip_configured:
        console.print("CLIP: not configured (images are skipped; set retrieval.clip_model)")


@kb_app.command("remove")
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to forget.")],
    kb_dir: KbDirOpt = None,
) -> None:
    """Forget every entry that came from these files (or from files under these folders)."""
    from retrieval.kb import KnowledgeBase

    settings = _settings(kb_dir)
    with _errors_as_exit():
        kb = KnowledgeBase.open(settings)
        with kb.writing():
            n = kb.remove_paths(list(paths))
            kb.save()
    console.print(f"removed {n} entries")
