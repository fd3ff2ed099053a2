"""`c-app`: manage the knowledge base from a shell with the app's own settings and services.

    c-app migrate
    c-app import FILE [--format jsonl|csv|markdown] [--strict] [--progress/--no-progress]
    c-app export [--format jsonl|csv] [-o FILE]
    c-app search QUERY [--limit N]
    c-app serve [--host H] [--port P]

Settings come from the environment (MEMORY_DB_PATH, DATABASE_URL, ...) exactly as for the server,
and every command first brings the schema to the newest revision.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from .config import Settings, get_settings
from .container import build_services
from .errors import AppError
from .services.golden import parse_golden
from .services.knowledge_service import ImportReport, KnowledgeService

# Exit statuses of `c-app import`.
EXIT_OK, EXIT_REJECTED, EXIT_PARTIAL = 0, 1, 2


@asynccontextmanager
async def knowledge_service(
    settings: Settings, *, load_index: bool = False
) -> AsyncIterator[KnowledgeService]:
    if not settings.database_url:
        Path(settings.memory_db_path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    services = build_services(settings)
    try:
        # Only `search` needs the index; no command loads the sample knowledge base into an operator's.
        await services.start(index=load_index, sample_kb=False)
        yield services.knowledge
    finally:
        await services.aclose()


async def run_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async with knowledge_service(settings):
        pass
    print("数据库已升级到最新版本")
    return EXIT_OK


def _progress_bar(show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=0, unit="条", file=sys.stderr, disable=not show, dynamic_ncols=True)


async def run_import(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.file)
    data = path.read_bytes()
    # A bar only for a person watching: not when stdout goes to a file or pipe, unless asked.
    show = args.progress if args.progress is not None else sys.stdout.isatty()
    with _progress_bar(show) as bar:

        def advance(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(done)

        golden = parse_golden(Path(args.golden).read_text(encoding="utf-8-sig")) if args.golden else None
        async with knowledge_service(settings) as knowledge:
            report = await knowledge.import_bytes(
                data,
                filename=path.name,
                fmt=args.format,
                strict=args.strict,
                progress=advance,
                golden=golden,
                min_right=args.min_right,
            )
    return _report(report)


def _report(report: ImportReport) -> int:
    for error in report.errors:
        print(f"第 {error['line']} 行：{error['error']}", file=sys.stderr)
    if report.failed > len(report.errors):
        print(f"……另有 {report.failed - len(report.errors)} 行错误未列出", file=sys.stderr)
    if report.rejected:
        print(f"严格模式：{report.failed} 行数据有误，未导入任何条目")
        return EXIT_REJECTED
    if report.gate is not None and report.gated:
        print(
            f"黄金问题正确率将为 {report.gate.right_rate:.1%}，低于 {report.gate.min_right:.1%}，未导入任何条目"
        )
        return EXIT_REJECTED
    print(
        f"新增 {report.created} 条，更新 {report.updated} 条，失败 {report.failed} 条，删除 {report.deleted} 条"
    )
    print(f"导入 {report.imported} 条，用时 {report.seconds:.2f} 秒，每秒 {report.rate:.0f} 条")
    return EXIT_PARTIAL if report.failed else EXIT_OK


async def run_eval(settings: Settings, args: argparse.Namespace) -> int:
    golden = parse_golden(Path(args.file).read_text(encoding="utf-8-sig"))
    async with knowledge_service(settings, load_index=True) as knowledge:
        report = await knowledge.evaluate_golden(golden, min_right=args.min_right)
    for failure in report.failures:
        got = "、".join(str(g) for g in failure["got"]) or "无"
        print(
            f"[{_OUTCOME_NAMES[failure['outcome']]}] {failure['question']}  应为 {failure['expected'] or '不作答'}，实得 {got}"
        )
    print(
        f"共 {report.total} 题：答对 {report.right}，答错 {report.wrong}，反问 {report.clarified}，"
        f"未命中 {report.missed}；正确率 {report.right_rate:.1%}（阈值 {report.min_right:.1%}）"
    )
    return EXIT_OK if report.passed else EXIT_REJECTED


_OUTCOME_NAMES = {"wrong": "答错", "clarified": "反问", "missed": "未命中"}


async def run_export(settings: Settings, args: argparse.Namespace) -> int:
    async with knowledge_service(settings) as knowledge:
        chunks = knowledge.export(args.format)
        if args.output and args.output != "-":
            async with await anyio.open_file(args.output, "w", encoding="utf-8", newline="") as handle:
                async for chunk in chunks:
                    await handle.write(chunk)
        else:
            async for chunk in chunks:
                sys.stdout.buffer.write(chunk.encode("utf-8"))
            sys.stdout.flush()
    return EXIT_OK


async def run_search(settings: Settings, args: argparse.Namespace) -> int:
    async with knowledge_service(settings, load_index=True) as knowledge:
        result = await knowledge.hit_test(args.query, limit=args.limit)
    print(f"归一化：{result.get('normalized', '')}")
    print(f"直接作答阈值：{result['threshold']:.2f}（{'会' if result['answered'] else '不会'}直接作答）")
    if not result["hits"]:
        print("没有命中任何条目")
    for rank, hit in enumerate(result["hits"], 1):
        mark = "*" if hit["above_threshold"] else " "
        label = hit["question"] or hit["title"]
        category = f"[{hit['category']}] " if hit["category"] else ""
        print(f"{rank:>2}. {mark}{hit['score']:.4f}  #{hit['id']}  {category}{label}")
    return EXIT_OK


# uvicorn's backstop after the app's own drain (SHUTDOWN_GRACE_SECONDS) has stopped every turn:
# time for the interrupted answers to be stored and their streams to end.
DRAIN_BACKSTOP_SECONDS = 10.0


def run_serve(settings: Settings, args: argparse.Namespace) -> int:
    """The API server (the container's entry point): SIGTERM drains, see c_app/api/lifecycle.py."""
    import uvicorn

    from .privacy.logfilter import uvicorn_log_config

    uvicorn.run(
        "c_app.main:app",
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings.log_format),
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds + DRAIN_BACKSTOP_SECONDS),
        # Behind the load balancer: client addresses (rate limits, audit) from X-Forwarded-For,
        # trusted from FORWARDED_ALLOW_IPS (uvicorn's setting; 127.0.0.1 unless set).
        proxy_headers=True,
        # h11 (when chosen) refuses a request head past this (run_server.py does the same).
        h11_max_incomplete_event_size=settings.max_header_bytes + 8 * 1024,
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="c-app", description="智能客服知识库管理（使用与服务相同的环境变量配置）"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="输出运行日志")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="把数据库升级到最新版本")

    imp = commands.add_parser(
        "import",
        help="导入知识库文件",
        epilog="退出码：0 全部导入；1 严格模式下有错误、未导入；2 部分行有错误、其余已导入",
    )
    imp.add_argument("file", help="JSON Lines、CSV 或 Markdown 文件")
    imp.add_argument("--format", choices=["jsonl", "csv", "markdown"], help="文件格式（默认按扩展名判断）")
    imp.add_argument("--strict", action="store_true", help="任何一行有误则什么都不导入")
    imp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="显示进度条（默认：终端中显示）",
    )
    imp.add_argument("--golden", help="黄金问题集（JSONL）：导入后的正确率低于 --min-right 时不导入任何条目")
    imp.add_argument(
        "--min-right", type=float, default=0.8, help="与 --golden 一起使用的答对率阈值（默认 0.8）"
    )

    ev = commands.add_parser("eval", help="用黄金问题集评测当前知识库（低于阈值时退出码为 1）")
    ev.add_argument("file", help='JSON Lines：每行 {"question": ..., "external_id": ...}')
    ev.add_argument("--min-right", type=float, default=0.8, help="答对率阈值（默认 0.8）")

    exp = commands.add_parser("export", help="导出整个知识库")
    exp.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    exp.add_argument("-o", "--output", help="输出文件（默认：标准输出）")

    search = commands.add_parser("search", help="在知识库中检索并显示得分")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=10)

    serve = commands.add_parser("serve", help="启动 API 服务（HOST、PORT 等取自环境变量）")
    serve.add_argument("--host", help="监听地址（默认：HOST）")
    serve.add_argument("--port", type=int, help="端口（默认：PORT）")
    return parser


COMMANDS = {
    "migrate": run_migrate,
    "import": run_import,
    "eval": run_eval,
    "export": run_export,
    "search": run_search,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":  # uvicorn runs its own event loop and logging
        return run_serve(get_settings(), args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(COMMANDS[args.command](get_settings(), args))
    except AppError as exc:
        print(f"错误：{exc.message}", file=sys.stderr)
        return EXIT_REJECTED
    except OSError as exc:
        print(f"错误：{exc}", file=sys.stderr)
        return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
