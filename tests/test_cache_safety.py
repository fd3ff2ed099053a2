"""Start-up caches live in a private folder and are never trusted: nothing is loaded from the shared temp dir."""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from c_app.config import Settings
from c_app.container import build_services
from c_app.retrieval import background, text

FAKE = {"w退款": 0.25, "c退": 0.5, "b退款": 0.125}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A fresh 'shared temp dir' (to see that nothing lands there) and module state restored afterwards."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(text, "_cache_dir", None)
    monkeypatch.setattr(text, "_jieba", text._jieba)
    monkeypatch.setattr(background, "_probs", None)
    yield shared


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the 2-second build with a tiny one and count the builds."""
    calls: list[int] = []

    def fake_build() -> dict[str, float]:
        calls.append(1)
        return dict(FAKE)

    monkeypatch.setattr(background, "_build", fake_build)
    return calls


def marker_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when loaded: proof of whether anything unpickled it."""

    class Payload:
        def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
            return (os.mkdir, (str(marker),))

    return pickle.dumps(Payload())


def test_cache_folder_follows_settings(tmp_path: Path) -> None:
    db = tmp_path / "db" / "customer_service.db"
    assert Settings(_env_file=None, memory_db_path=str(db)).cache_path == db.parent / "cache"  # type: ignore[call-arg]
    explicit = tmp_path / "elsewhere"
    settings = Settings(_env_file=None, memory_db_path=str(db), cache_dir=str(explicit))  # type: ignore[call-arg]
    assert settings.cache_path == explicit


def test_services_make_a_private_cache_folder(tmp_path: Path, isolated: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, memory_db_path=str(tmp_path / "customer_service.db"), upload_dir=str(tmp_path / "u")
    )
    build_services(settings)  # the app, the CLI and the benches all build their services here
    assert settings.cache_path.is_dir()
    assert mode(settings.cache_path) == 0o700
    assert text.cache_dir() == settings.cache_path
    assert not settings.cache_path.is_relative_to(isolated)


def test_existing_folder_is_tightened_and_a_foreign_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)
    assert text.set_cache_dir(folder) == folder
    assert mode(folder) == 0o700
    if hasattr(os, "getuid"):
        real = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real + 1)
        assert text.set_cache_dir(folder) is None  # someone else's folder: nothing cached on disk
        assert text.cache_dir() is None


def test_statistics_are_cached_in_the_private_folder_only(
    tmp_path: Path, isolated: Path, builds: list[int]
) -> None:
    folder = text.set_cache_dir(tmp_path / "cache")
    assert folder is not None
    assert background._load_or_build() == FAKE
    assert background._load_or_build() == FAKE
    assert len(builds) == 1  # the second came from the file
    files = list(folder.iterdir())
    assert [f.name for f in files] == [background.cache_file(folder, background._source_key()).name]
    assert files[0].suffix == ".npz"
    assert list(isolated.iterdir()) == []


def test_without_a_private_folder_nothing_is_written(isolated: Path, builds: list[int]) -> None:
    text.set_cache_dir(None)
    assert background._load_or_build() == FAKE
    assert background._load_or_build() == FAKE
    assert len(builds) == 2
    assert list(isolated.iterdir()) == []


def _valid(path: Path, key: str) -> None:
    background.save(path, key, dict(FAKE))


def _fields(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _rewrite(path: Path, **changes: Any) -> None:
    fields = _fields(path)
    fields.update(changes)
    with path.open("wb") as f:
        np.savez(f, **fields)


def _garbage(path: Path, key: str) -> None:
    path.write_bytes(b"\x00not a zip archive" * 10)


def _truncated(path: Path, key: str) -> None:
    _valid(path, key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_version(path: Path, key: str) -> None:
    _valid(path, key)
    _rewrite(path, version=np.array([background.FORMAT_VERSION + 1], dtype="<i8"))


def _other_source(path: Path, key: str) -> None:
    _valid(path, key)
    _rewrite(path, source=np.frombuffer(b"0" * len(key), dtype="u1"))


def _edited_value(path: Path, key: str) -> None:
    _valid(path, key)
    probs = _fields(path)["probs"].copy()
    probs[0] = 0.999
    _rewrite(path, probs=probs)


def _out_of_range_with_matching_digest(path: Path, key: str) -> None:
    _valid(path, key)
    fields = _fields(path)
    probs = np.array([5.0, -1.0, float("nan")], dtype="<f8")
    terms = fields["terms"].tobytes()
    digest = background._digest(terms, probs.tobytes())
    _rewrite(path, probs=probs, digest=np.frombuffer(digest, dtype="u1"))


def _wrong_shape(path: Path, key: str) -> None:
    _valid(path, key)
    _rewrite(path, probs=np.zeros((3, 1), dtype="<f8"))


def _extra_field(path: Path, key: str) -> None:
    _valid(path, key)
    _rewrite(path, extra=np.zeros(1))


def _object_array(path: Path, key: str) -> None:
    _valid(path, key)
    fields = _fields(path)
    fields["probs"] = np.array([0.25, 0.5, 0.125], dtype=object)
    with path.open("wb") as f:
        np.savez(f, allow_pickle=True, **fields)  # an object array is stored as a pickle


@pytest.mark.parametrize(
    "spoil",
    [
        _garbage,
        _truncated,
        _wrong_version,
        _other_source,
        _edited_value,
        _out_of_range_with_matching_digest,
        _wrong_shape,
        _extra_field,
        _object_array,
    ],
)
def test_a_spoiled_cache_is_rebuilt_not_loaded(
    tmp_path: Path, builds: list[int], spoil: Callable[[Path, str], None]
) -> None:
    folder = text.set_cache_dir(tmp_path / "cache")
    assert folder is not None
    key = background._source_key()
    path = background.cache_file(folder, key)
    spoil(path, key)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; loading it is the failure
        background.load(path, key)
    assert background._load_or_build() == FAKE
    assert len(builds) == 1
    assert background.load(path, key) == FAKE  # replaced by a good file


def test_a_pickle_in_the_cache_folder_is_never_unpickled(tmp_path: Path, builds: list[int]) -> None:
    folder = text.set_cache_dir(tmp_path / "cache")
    assert folder is not None
    marker = tmp_path / "code-ran"
    path = background.cache_file(folder, background._source_key())
    path.write_bytes(marker_pickle(marker))
    assert background._load_or_build() == FAKE
    assert not marker.exists()
    assert len(builds) == 1


def _old_temp_dir_name() -> str:
    """Where the previous version looked for its pickle (its own naming, reproduced here)."""
    import jieba

    h = hashlib.sha1()
    for path in (
        os.path.join(os.path.dirname(jieba.__file__), "dict.txt"),
        str(text.USER_DICT_PATH),
        background.__file__,
    ):
        st = os.stat(path)
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"c_app_retrieval_bg.{h.hexdigest()[:16]}.pkl"


@pytest.mark.parametrize("configured", [True, False])
def test_a_pickle_planted_in_the_temp_dir_is_never_read(
    tmp_path: Path, isolated: Path, builds: list[int], configured: bool
) -> None:
    marker = tmp_path / "code-ran"
    for name in (_old_temp_dir_name(), "c_app_retrieval_bg.pkl", "background.npz"):
        (isolated / name).write_bytes(marker_pickle(marker))
    text.set_cache_dir(tmp_path / "cache" if configured else None)
    assert background.doc_prob("w退款") == FAKE["w退款"]
    assert not marker.exists()
    assert len(builds) == 1


def test_real_statistics_survive_the_cache_exactly(tmp_path: Path) -> None:
    folder = text.set_cache_dir(tmp_path / "cache")
    assert folder is not None
    built = background._load_or_build()
    assert (
        background.load(background.cache_file(folder, background._source_key()), background._source_key())
        == built
    )


def test_jieba_keeps_its_cache_in_the_private_folder(tmp_path: Path, isolated: Path) -> None:
    folder = text.set_cache_dir(tmp_path / "cache")
    assert folder is not None
    text._jieba = None  # restored by the fixture
    tok = text.get_jieba()
    assert tok.tmp_dir == str(folder)
    cache = Path(tok.tmp_dir) / tok.cache_file
    assert cache.is_file()
    assert cache.parent == folder
    assert list(isolated.iterdir()) == []
    assert "退款" in tok.lcut("我要退款")


def test_jieba_without_a_private_folder_leaves_nothing_in_the_temp_dir(isolated: Path) -> None:
    text.set_cache_dir(None)
    text._jieba = None  # restored by the fixture
    (isolated / "jieba.cache").write_bytes(b"planted")  # jieba's default name in the shared temp dir
    tok = text.get_jieba()
    assert Path(tok.tmp_dir).parent == isolated and not Path(tok.tmp_dir).exists()  # a scratch folder, gone
    assert sorted(p.name for p in isolated.iterdir()) == ["jieba.cache"]
    assert (isolated / "jieba.cache").read_bytes() == b"planted"
    assert "退款" in tok.lcut("我要退款")
