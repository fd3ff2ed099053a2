"""Text normalisation and tokenisation for FAQ retrieval.

Contract:
- ``normalize(text)`` returns the canonical form used for both indexing and querying: NFKC
  (full width -> half width), control/format characters removed, traditional -> simplified,
  lower case, a few colloquial variants mapped to one spelling (咋么 -> 怎么, 可否 -> 可以 ...),
  greetings / politeness fillers / sentence-final particles stripped (你好, 请问, 吗, 呢, 啊 ...),
  whitespace collapsed. It never returns an empty string for a non-blank input that had any
  letters or digits: if stripping fillers would leave nothing, the unstripped form is kept.
  Only the first ``MAX_TEXT_CHARS`` characters are read, and the result is at most that long
  (NFKC can turn one character into 18, so the input is cut before it and the output after).
  Every step is linear in the length: no pattern can backtrack over a run it has already read.
- ``tokenize(normalized)`` returns the index terms of a normalised text as a list (with
  repeats): jieba words of 2+ characters prefixed ``w``, single characters / alphanumeric runs
  prefixed ``c`` and adjacent-character bigrams prefixed ``b``. The prefixes keep the three
  signals apart so they can be weighted separately and so a bigram never collides with a word.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import stat
import tempfile
import threading
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

USER_DICT_PATH = Path(__file__).with_name("user_dict.txt")

WORD, CHAR, BIGRAM = "w", "c", "b"

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_opencc_lock = threading.Lock()
_jieba: Any = None
_opencc: Any = None
_cache_dir: Path | None = None


def private_dir(path: str | os.PathLike[str]) -> Path | None:
    """``path`` as a folder only this process's user can read or write (created mode 0700; an
    existing one of ours is tightened to 0700), or None when that cannot be had (owned by another
    user, not a folder, not creatable): then nothing is cached on disk."""
    folder = Path(path).expanduser().resolve()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(folder)
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(str(folder))
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            logger.warning("cache folder %s belongs to another user: not used", folder)
            return None
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(folder, 0o700)
    except OSError as exc:
        logger.warning("cache folder %s is unusable (%s): caches are rebuilt in memory", folder, exc)
        return None
    return folder


def set_cache_dir(path: str | os.PathLike[str] | None) -> Path | None:
    """Where jieba's dictionary cache and the background statistics are kept (Settings.cache_path).

    Never the shared temp dir: whoever can write a cache file there chooses what the server loads.
    None, or a folder that cannot be made private: nothing is cached on disk (about 3 s more at
    start-up). Returns the folder in use.
    """
    global _cache_dir
    _cache_dir = private_dir(path) if path is not None else None
    return _cache_dir


def cache_dir() -> Path | None:
    """The private cache folder, checked again now (None: build in memory, write nothing)."""
    folder = _cache_dir
    return private_dir(folder) if folder is not None else None


def _jieba_cache_name(jieba: Any) -> str:
    # jieba trusts its cache of the default dictionary without checking its date: key the name
    # by jieba's version and dictionary so an upgrade never reads a stale cache.
    h = hashlib.sha256(str(getattr(jieba, "__version__", "")).encode())
    dictionary = os.path.join(os.path.dirname(jieba.__file__), "dict.txt")
    try:
        info = os.stat(dictionary)
        h.update(f"{info.st_size}:{info.st_mtime_ns}".encode())
    except OSError:
        pass
    return f"jieba.{h.hexdigest()[:16]}.cache"


def get_jieba() -> Any:
    """Process-wide jieba tokenizer, created on first use with the user dictionary loaded.

    A private ``jieba.Tokenizer`` (not the global one) so the app's other jieba users are not
    affected by our dictionary; jieba's logger is set to WARNING so loading is quiet. jieba keeps
    its dictionary cache (a ``marshal`` file it loads unchecked) in the shared temp dir unless told
    otherwise: here it goes to ``cache_dir()``, or to a throw-away private folder when there is none.
    """
    global _jieba
    if _jieba is None:
        with _lock:
            if _jieba is None:
                import jieba

                logging.getLogger("jieba").setLevel(logging.WARNING)
                jieba.setLogLevel(logging.WARNING)
                tok = jieba.Tokenizer()
                folder = cache_dir()
                if folder is not None:
                    tok.tmp_dir = str(folder)
                    tok.cache_file = _jieba_cache_name(jieba)
                    tok.initialize()
                else:
                    with tempfile.TemporaryDirectory(prefix="c_app-jieba-") as scratch:  # mode 0700
                        tok.tmp_dir = scratch
                        tok.initialize()
                with USER_DICT_PATH.open("rb") as handle:  # jieba leaves a path's file open
                    tok.load_userdict(handle)
                _jieba = tok
    return _jieba


def _get_opencc() -> Any:
    global _opencc
    if _opencc is None:
        with _lock:
            if _opencc is None:
                import opencc

                _opencc = opencc.OpenCC("t2s")
    return _opencc


# Colloquial / variant spellings -> one canonical spelling. General Chinese usage, written by
# hand (not derived from any evaluation data). Applied longest-first on the normalised text, so
# both the KB wording and the customer's wording end up in the same form.
# fmt: off
VARIANTS: dict[str, str] = {
    # "how"
    "咋么": "怎么", "怎么样": "怎么", "怎样": "怎么", "如何": "怎么", "咋样": "怎么",
    "咋": "怎么", "肿么": "怎么", "怎摸": "怎么", "怎莫": "怎么",
    # "why"
    "为啥": "为什么", "为何": "为什么", "干嘛": "为什么", "干吗": "为什么", "咋回事": "为什么",
    "怎么回事": "为什么",
    # "what"
    "啥": "什么", "神马": "什么", "什麽": "什么",
    # "can / may"
    "可不可以": "可以", "能不能": "可以", "能否": "可以", "可否": "可以", "是否可以": "可以",
    "是否能": "可以", "可以不可以": "可以", "行不行": "可以", "能够": "可以",
    # "how long"
    "多长时间": "多久", "多少时间": "多久", "多长期限": "多久", "要多久": "多久",
    # "where"
    "哪儿": "哪里", "哪边": "哪里",
    # "not have"
    "木有": "没有", "没得": "没有",
    # pronouns
    "您": "你", "俺": "我",
    # common variant characters / typos in customer-service text
    "帐": "账", "登陆": "登录", "手机号码": "手机号", "电话号码": "手机号",
    "撤销": "取消", "撤消": "取消",
    "更换": "修改", "更改": "修改", "变更": "修改",
    "退钱": "退款", "付钱": "付款",
    # "how do I do it": the vague verb carries nothing ("咋弄" is "how")
    "怎么弄": "怎么", "怎么整": "怎么", "怎么搞": "怎么", "怎么操作": "怎么", "怎么做": "怎么",
    "咋弄": "怎么", "咋整": "怎么", "咋搞": "怎么", "咋操作": "怎么", "咋做": "怎么",
    "如何操作": "怎么", "咋办": "怎么办", "该怎么办": "怎么办", "怎么处理": "怎么办",
    "如何处理": "怎么办", "咋处理": "怎么办", "怎么解决": "怎么办", "如何解决": "怎么办",
    # "when", "is there"
    "啥时候": "什么时候", "啥时": "什么时候", "几时": "什么时候", "何时": "什么时候",
    "有木有": "有没有", "有没得": "有没有",
}
# fmt: on

# Synonym groups: a text holding any word of a group (or its head word) also gets the head word as
# a word term (``tokenize``); the text itself is left as written, so the characters still match
# what was typed. Written by hand from general customer-service vocabulary of online shops, parcel
# delivery, banking, telecoms and accounts (not derived from any evaluation set): each group is
# what customers and help-centre pages say for one thing.
# fmt: off
SYNONYM_GROUPS: dict[str, tuple[str, ...]] = {
    # people
    "快递员": ("快递小哥", "快递哥", "快递师傅", "配送员", "派件员", "派送员", "送货员", "取件员",
             "收件员", "揽件员", "送件员"),
    "客服": ("客服人员", "客服小姐姐", "服务人员"),
    # things
    "快件": ("包裹", "快递包裹", "邮件包裹"),
    "物品": ("东西", "货物", "货品"),
    "手机卡": ("电话卡", "号卡", "sim卡", "手机sim卡"),
    "银行卡": ("储蓄卡", "借记卡"),
    "验证码": ("校验码", "动态码", "短信码", "动态密码"),
    "身份证": ("身份证件", "二代证"),
    "营业厅": ("门店", "营业网点", "服务网点", "服务点", "营业点"),
    # money
    "费用": ("收费", "价格", "价钱", "资费", "花多少钱"),
    "支付": ("付款", "付费", "交钱", "缴费", "交费", "结账", "买单"),
    "充值": ("冲值", "充钱", "充费"),
    "退款": ("退费", "退回款项"),
    "优惠": ("打折", "折扣", "便宜点", "减免", "特价"),
    "优惠券": ("代金券", "抵用券", "折扣券", "消费券", "满减券"),
    "赔偿": ("赔付", "赔钱", "补偿", "理赔款"),
    # what happened
    "丢失": ("丢了", "弄丢", "遗失", "丢掉了", "不见了"),
    "损坏": ("坏了", "坏掉", "破损", "摔坏", "压坏", "损毁", "碎了", "破了"),
    "填错": ("写错", "输错", "打错", "填写错误", "弄错"),
    "忘记": ("忘了", "忘掉", "想不起来", "不记得"),
    "联系不上": ("联系不到", "打不通", "找不到人", "没人接", "不接电话"),
    # doing
    "取消": ("退订", "不要了"),
    "查询": ("查看", "查一下", "查下", "看一下", "看看"),
    "注销": ("销户", "销号", "销卡"),
    "实名": ("实名认证", "实名登记", "实名验证", "实名制"),
    # time
    "晚上": ("夜间", "夜里", "晚间", "夜晚", "半夜"),
    "周末": ("星期六", "星期天", "星期日", "周六", "周日", "礼拜天", "礼拜六"),
    "春节": ("过年", "大年", "年三十"),
    "多久": ("几天", "多少天", "几个小时", "多少小时"),
}
# fmt: on
SYNONYMS: dict[str, str] = {
    **{canon: canon for canon in SYNONYM_GROUPS},
    **{word: canon for canon, words in SYNONYM_GROUPS.items() for word in words},
}
_VARIANT_RE = re.compile("|".join(sorted(map(re.escape, VARIANTS), key=len, reverse=True)))
_SYNONYM_RE = re.compile("|".join(sorted(map(re.escape, SYNONYMS), key=len, reverse=True)))

# Greetings / politeness openers stripped at the start of a text (repeatedly; see _strip_leading).
# fmt: off
_LEADING_FILLERS = [
    "你好", "你们好", "hello", "hi", "哈喽", "嗨", "亲爱的", "亲", "在吗", "在不在", "喂",
    "请问一下", "请问下", "请问", "我想问一下", "我想问下", "想问一下", "想问下", "问一下",
    "问下", "咨询一下", "咨询下", "我想咨询一下", "我想咨询", "麻烦问一下", "麻烦问下",
    "麻烦你", "麻烦", "打扰一下", "打扰了", "客服你好", "那个", "就是",
    "我想了解一下", "我想了解下", "我想了解", "想了解一下", "想了解下", "想了解", "了解一下",
    "我想知道", "想知道",
]
# fmt: on
_LEADING_RE = re.compile(
    r"(?:" + "|".join(sorted(map(re.escape, _LEADING_FILLERS), key=len, reverse=True)) + r")[\s,.!?~、]*"
)
# Thanks / politeness anywhere.
_ANYWHERE_RE = re.compile(r"谢谢你们|谢谢你|谢谢|多谢|谢了|感谢|请问")
# Sentence-final / interjection particles: removed where they end a clause (before punctuation,
# space or the end), so 吧台 / 吗啡 keep their characters. 额 is NOT here (额度). A run is taken
# whole or not at all: the lookbehind starts a match only at a run's first particle and the
# possessive ``++`` never gives one back (a plain ``+`` retried every suffix of a long run that is
# followed by a letter: quadratic).
_PARTICLES = "吗嘛呢啊呀吧哦噢嗯啦哈哇呐咯哟喔呗"
_PARTICLE_RE = re.compile(rf"(?<![{_PARTICLES}])[{_PARTICLES}]++(?=[\s,.!?~:;、\"'()\[\]]|$)")
# List numbering / junk that customers paste in front: "1.", "12:", "#", "'", "%" ... One step
# of it, matched at a position (see _strip_leading). No ``\s*`` before the number: a space is
# junk on its own, and a run of spaces before something else would be rescanned from each space.
_LEADING_JUNK_RE = re.compile(r"(?:\d{1,2}\s*[.、:)](?!\d)|[\s\W_])++")
_WS_RE = re.compile(r"\s+")

# Longest text analysed, in characters, before NFKC and after it: the longest query the API
# accepts. Beyond it nothing is indexed or matched (a private memory may be 10,000 characters
# long: its first 2,000 are what it is found by). Analysing 2,000 characters costs at most about
# 0.15 s of CPU (jieba on 2,000 distinct characters), 10,000 about 0.8 s.
MAX_TEXT_CHARS = 2_000
# Texts up to this long are cached (queries and questions repeat; a long memory is read once).
_CACHED_CHARS = 256


def _is_junk(ch: str) -> bool:
    # What ``[\s\W_]`` matches: not a letter or digit (whitespace never is), or "_".
    return ch == "_" or not ch.isalnum()


def _strip_trailing_junk(text: str) -> str:
    # A loop from the end, not ``[\s\W_]+$``: the pattern was tried from every junk character of a
    # long run that something else follows, reading the rest of the run each time (quadratic).
    end = len(text)
    while end and _is_junk(text[end - 1]):
        end -= 1
    return text[:end]


def _strip_leading(text: str) -> str:
    # Numbering, junk and greetings in front, repeatedly ("1. 你好，请问…"): matched at a moving
    # position, so the text is copied once, not once per greeting.
    pos = 0
    while True:
        start = pos
        for pattern in (_LEADING_JUNK_RE, _LEADING_RE):
            match = pattern.match(text, pos)
            if match:
                pos = match.end()
        if pos == start:
            return text[pos:]


def _strip_controls(text: str) -> str:
    # Cc (control) and Cf (format, e.g. zero-width space) become spaces: they often separate words.
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text)


def _strip_fillers(text: str) -> str:
    text = _strip_leading(text)
    text = _ANYWHERE_RE.sub(" ", text)
    text = _PARTICLE_RE.sub("", text)
    # Trailing punctuation carries no meaning for matching ("退款？" is "退款").
    return _strip_trailing_junk(text)


def normalize(text: str) -> str:
    """Canonical form of ``text`` for indexing and querying (see module docstring)."""
    if not text:
        return ""
    text = text[:MAX_TEXT_CHARS]
    return _normalize_cached(text) if len(text) <= _CACHED_CHARS else _normalize(text)


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)[:MAX_TEXT_CHARS]
    text = _strip_controls(text)
    with _opencc_lock:  # one conversion at a time: analysis runs in worker threads
        text = _get_opencc().convert(text)
    text = text.lower()
    # Lower case and the variants can lengthen the text (咋 -> 怎么): bounded again; what follows
    # only shortens it.
    text = _VARIANT_RE.sub(lambda m: VARIANTS[m.group(0)], text)[:MAX_TEXT_CHARS]
    base = _WS_RE.sub(" ", text).strip()
    stripped = _WS_RE.sub(" ", _strip_fillers(base)).strip()
    # Keep something matchable: a text that was only a greeting ("你好") stays as it was.
    return stripped if _has_content(stripped) else base


# Repeated queries (and tests) skip OpenCC and the patterns; small: short strings only.
_normalize_cached = lru_cache(maxsize=4096)(_normalize)


def _has_content(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


_UNIT_RE = re.compile(r"[a-z0-9]+|[^\W\d_a-z]", re.UNICODE)


def char_units(text: str) -> list[list[str]]:
    """Runs of character units: each CJK character or alphanumeric run is a unit; any other
    character (punctuation, space) ends a run, so bigrams never span a clause boundary."""
    runs: list[list[str]] = []
    cur: list[str] = []
    pos = 0
    for m in _UNIT_RE.finditer(text):
        if m.start() != pos and cur:
            runs.append(cur)
            cur = []
        cur.append(m.group(0))
        pos = m.end()
    if cur:
        runs.append(cur)
    return runs


# What jieba segments as one block (its ``re_han_default``); text between blocks is split into
# single characters, so cutting a text before a block changes nothing in its segmentation.
_JIEBA_BLOCK_RE = re.compile(r"[\u4E00-\u9FD5a-zA-Z0-9+#&._%\-]+")
# Longest piece given to jieba at once. Its HMM (finalseg.viterbi) copies the path so far at
# every character of a run of unknown characters: quadratic in the run (8,000 x 吗: 3 s).
_JIEBA_CHARS = 256


def _jieba_pieces(text: str) -> list[str]:
    """``text`` cut before jieba blocks into pieces of at most _JIEBA_CHARS characters; a block
    longer than that alone (no punctuation or space in 256 characters) is cut inside."""
    if len(text) <= _JIEBA_CHARS:
        return [text]
    pieces: list[str] = []
    start = 0
    for block in _JIEBA_BLOCK_RE.finditer(text):
        if block.end() - start > _JIEBA_CHARS and block.start() > start:
            pieces.append(text[start : block.start()])
            start = block.start()
        while block.end() - start > _JIEBA_CHARS:
            pieces.append(text[start : start + _JIEBA_CHARS])
            start += _JIEBA_CHARS
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def words(text: str) -> list[str]:
    """jieba words (precise mode) of a normalised text, punctuation/space dropped."""
    jieba = get_jieba()
    return [w for piece in _jieba_pieces(text) for w in jieba.lcut(piece) if w.strip() and _has_content(w)]


def tokenize(normalized: str) -> list[str]:
    """Index terms (with repeats) of an already normalised text; see module docstring."""
    text = normalized
    terms: list[str] = []
    seen: set[str] = set()
    for w in words(text):
        if len(w) >= 2 and not w.isascii():
            terms.append(WORD + w)
            seen.add(w)
    for match in _SYNONYM_RE.finditer(text):
        head = SYNONYMS[match.group(0)]
        if head not in seen:  # once per text, unless jieba found the head word itself
            terms.append(WORD + head)
            seen.add(head)
    for run in char_units(text):
        terms.extend(CHAR + u for u in run)
        terms.extend(BIGRAM + a + b for a, b in itertools.pairwise(run))
    return terms
