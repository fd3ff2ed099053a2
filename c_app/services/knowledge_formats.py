"""Knowledge-base file formats: JSON Lines, CSV and Markdown in; JSON Lines and CSV out.

Parsers turn text into raw rows (`RawRow`: the line it starts on and a dict in the import shape,
or why the line could not be read); validating a row is the knowledge service's job.

Markdown. Only ATX headings (`#` … `######`) outside code fences count. A heading is a
*question* when, after any list number or "Q:"/"问：" label, it ends with ？ or ?, or starts
with an interrogative word (如何, 怎么, 为什么, 什么, 哪, 是否, 能否, 可以, 有没有, 多久, 多少,
几, how, what, why …). A question heading becomes one entry: the heading is the question, the
text under it (its sub-headings included) is the answer, and the outermost heading above it is
the category. Text under any other heading (and before the first heading) is document text: it
is cut at headings and paragraphs into chunks of at most CHUNK_CHARS characters (a paragraph that
is too long is cut between sentences), each chunk an entry titled by its heading path, with
metadata {"document", "position", "heading"}. So a FAQ file gives one entry per question, a
policy document gives chunks, and a mixed file gives both. Every Markdown entry's external_id is
"<document>#<position>", so importing the same file again updates rather than duplicates.

CSV. A cell a spreadsheet would read as a formula (it starts with =, +, -, @, a tab or a carriage
return) is written with a single quote in front (OWASP's advice against CSV injection), and so is
a cell that starts with a quote; on import a quote followed by one of those is taken off again,
so export -> import gives back the same entries (and '=x typed in a spreadsheet means =x there too).

Every parser is linear in the size of its input (no pattern here can backtrack over a run twice);
they are CPU work all the same: the knowledge service runs them in a worker thread.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..db.models import Memory

FORMATS = ("jsonl", "csv", "markdown")
EXPORT_FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ["external_id", "title", "category", "question", "similar_questions", "answer", "metadata"]
CHUNK_CHARS = 500
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".md": "markdown",
    ".markdown": "markdown",
}


@dataclass(slots=True)
class RawRow:
    line: int
    data: dict[str, Any] | None = None
    error: str | None = None


def infer_format(filename: str | None) -> str | None:
    name = (filename or "").lower()
    for extension, fmt in _EXTENSIONS.items():
        if name.endswith(extension):
            return fmt
    return None


def external_prefix(document: str) -> str:
    """The external_id prefix shared by every entry imported from one Markdown document."""
    return f"{document[:180]}#"


# -- JSON Lines ----------------------------------------------------------------------------------


def parse_jsonl(text: str) -> Iterator[RawRow]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRow(number, error=f"JSON 格式错误：{exc.msg}（第 {exc.colno} 列）")
            continue
        if not isinstance(data, dict):
            yield RawRow(number, error="每行必须是一个 JSON 对象")
            continue
        yield RawRow(number, data)


# -- CSV -----------------------------------------------------------------------------------------


# A cell starting with one of these is a formula to a spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ESCAPED_START = (*_FORMULA_START, "'")


def escape_cell(value: str) -> str:
    """`value` as a CSV cell no spreadsheet runs as a formula: a quote in front when needed."""
    return "'" + value if value.startswith(_ESCAPED_START) else value


def unescape_cell(cell: str) -> str:
    """The value `escape_cell` wrote as `cell` (a cell it left alone comes back as it is)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_ESCAPED_START) else cell


def _similar_cell(cell: str) -> Any:
    cell = cell.strip()
    if cell.startswith("["):  # written as JSON when a question itself holds "|"
        return json.loads(cell)
    return [part.strip() for part in cell.split("|") if part.strip()]


def parse_csv(text: str) -> Iterator[RawRow]:
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        yield RawRow(1, error=f"CSV 格式错误：{exc}")
        return
    next_line = reader.line_num + 1
    while True:
        start = next_line
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RawRow(start, error=f"CSV 格式错误：{exc}")
            return
        next_line = reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            yield RawRow(start, error=f"列数（{len(cells)}）多于表头（{len(header)}）")
            continue
        data: dict[str, Any] = {
            name: unescape_cell(cell) for name, cell in zip(header, cells, strict=False) if cell != ""
        }
        try:
            if "similar_questions" in data:
                data["similar_questions"] = _similar_cell(data["similar_questions"])
            if "metadata" in data:
                data["metadata"] = json.loads(data["metadata"])
        except json.JSONDecodeError:
            yield RawRow(start, error="similar_questions 或 metadata 不是合法的 JSON")
            continue
        yield RawRow(start, data)


# -- Markdown ------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_LABEL = re.compile(
    r"^(?:\d+[.、)]\s*|[一二三四五六七八九十]+、\s*|(?:q\d*|问题?)\s*[:：.]\s*)", re.IGNORECASE
)
_INTERROGATIVE = re.compile(
    r"^(?:如何|怎么|怎样|为什么|为何|为啥|什么|哪|是否|能否|能不能|可否|可以|可不可以|会不会|有没有|是不是|"
    r"要不要|多久|多少|多长|几|啥|咋|请问|how\b|what\b|why\b|when\b|where\b|which\b|can\b|do\b|does\b|is\b)",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"[^。！？!?；;\n]*[。！？!?；;]+\n?|[^。！？!?；;\n]+\n?|\n")


@dataclass(slots=True)
class _Section:
    level: int  # 0: text before the first heading
    heading: str
    line: int
    body: list[str]


def question_text(heading: str) -> str | None:
    """The question a heading asks, or None when it is not a question (see module docstring)."""
    text = _LABEL.sub("", heading.strip(), count=1).strip()
    if text.endswith(("？", "?")) or _INTERROGATIVE.match(text):
        return text
    return None


def parse_heading(line: str) -> tuple[int, str] | None:
    """An ATX heading's level and text, or None: 1-6 "#", whitespace, the text, then any closing
    "#"s and whitespace (what ``^(#{1,6})\\s+(.+?)\\s*#*\\s*$`` matches, its text stripped).

    String operations, not that pattern: its lazy text followed by two ``\\s*`` around ``#*`` tried
    every split of a long run of spaces (cubic: "# a" + 1,500 spaces + "x" took 6 s)."""
    rest = line.lstrip("#")
    level = len(line) - len(rest)
    if not 1 <= level <= 6 or not rest[:1].isspace():
        return None
    text = rest.lstrip()
    if not text:  # only whitespace: the text is one whitespace character (so there must be two)
        return (level, "") if len(rest) >= 2 else None
    # The closing sequence is taken off; a text that is all "#"s keeps its first character.
    return level, text.rstrip().rstrip("#").rstrip() or text[0]


def _sections(text: str) -> list[_Section]:
    sections = [_Section(0, "", 1, [])]
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
        found = None if fenced else parse_heading(line)
        if found:
            sections.append(_Section(found[0], found[1], number, []))
        else:
            sections[-1].body.append(line)
    return sections


def _cut_long(paragraph: str, limit: int) -> list[str]:
    """A paragraph longer than `limit`, cut between sentences (mid-sentence only when one is too long)."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE.findall(paragraph):
        # Cut by position: slicing the rest off each time copied a long sentence once per piece.
        start = 0
        while len(sentence) - start > limit:
            pieces.extend([current] if current else [])
            current = ""
            end = start + limit
            cut = max(sentence.rfind("，", start, end), sentence.rfind(",", start, end)) + 1 or end
            pieces.append(sentence[start:cut])
            start = cut
        sentence = sentence[start:]
        if current and len(current) + len(sentence) > limit:
            pieces.append(current)
            current = ""
        current += sentence
    if current:
        pieces.append(current)
    return [piece.strip() for piece in pieces if piece.strip()]


def chunk_text(body: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs packed into chunks of at most `limit` characters."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", body):
        paragraph = paragraph.strip()
        if paragraph:
            pieces.extend([paragraph] if len(paragraph) <= limit else _cut_long(paragraph, limit))
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > limit:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def parse_markdown(text: str, *, document: str) -> Iterator[RawRow]:
    prefix = external_prefix(document)
    stem = re.sub(r"\.(md|markdown)$", "", document, flags=re.IGNORECASE) or document
    sections = _sections(text)
    stack: list[_Section] = []
    position = 0
    index = 0
    while index < len(sections):
        section = sections[index]
        index += 1
        while stack and stack[-1].level >= section.level:
            stack.pop()
        ancestors = [s.heading for s in stack]
        if section.level:
            stack.append(section)
        question = question_text(section.heading) if section.level else None
        if question is not None:
            answer = list(section.body)
            while index < len(sections) and sections[index].level > section.level:
                sub = sections[index]
                answer += ["#" * sub.level + " " + sub.heading, *sub.body]
                index += 1
            position += 1
            yield RawRow(
                section.line,
                {
                    "external_id": f"{prefix}{position}",
                    "category": ancestors[0][:100] if ancestors else "",
                    "question": question,
                    "answer": "\n".join(answer).strip(),
                    "metadata": {"document": document, "position": position, "heading": question},
                },
            )
            continue
        path = [*ancestors, section.heading] if section.level else []
        heading = " > ".join(path)
        for chunk in chunk_text("\n".join(section.body)):
            position += 1
            yield RawRow(
                section.line,
                {
                    "external_id": f"{prefix}{position}",
                    "title": (heading or stem)[:500],
                    "category": path[0][:100] if path else "",
                    "answer": chunk,
                    "metadata": {"document": document, "position": position, "heading": heading},
                },
            )


def parse(text: str, fmt: str, *, document: str) -> Iterator[RawRow]:
    if fmt == "jsonl":
        return parse_jsonl(text)
    if fmt == "csv":
        return parse_csv(text)
    return parse_markdown(text, document=document)


# -- export --------------------------------------------------------------------------------------


def export_row(memory: Memory) -> dict[str, Any]:
    return {
        "external_id": memory.external_id,
        "title": memory.title,
        "category": memory.category,
        "question": memory.question,
        "similar_questions": list(memory.similar_questions or []),
        "answer": memory.content,
        "metadata": dict(memory.meta or {}),
    }


def jsonl_lines(rows: Iterable[Memory]) -> str:
    return "".join(json.dumps(export_row(row), ensure_ascii=False) + "\n" for row in rows)


def csv_header() -> str:
    # The BOM lets spreadsheet programs open the file as UTF-8; the importer accepts it.
    return "\ufeff" + _csv_text([CSV_COLUMNS])


def csv_lines(rows: Iterable[Memory]) -> str:
    out = []
    for row in rows:
        item = export_row(row)
        similar = item["similar_questions"]
        item["similar_questions"] = (
            json.dumps(similar, ensure_ascii=False)
            if any("|" in q for q in similar) or "|".join(similar).startswith("[")
            else "|".join(similar)
        )
        item["metadata"] = json.dumps(item["metadata"], ensure_ascii=False) if item["metadata"] else ""
        item["external_id"] = item["external_id"] or ""
        out.append([escape_cell(v) if isinstance(v := item[column], str) else v for column in CSV_COLUMNS])
    return _csv_text(out)


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()
