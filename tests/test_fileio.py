"""Atomic writes of files and folders (tui_trainer/fileio.py)."""

import json

from tui_trainer.fileio import atomic_write_json, atomic_write_text, remove_path, replace_path


def test_atomic_write_leaves_only_the_final_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    assert (tmp_path / "a.txt").read_text() == "two"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


def test_replace_path_swaps_a_folder_whole(tmp_path):
    final, tmp = tmp_path / "out", tmp_path / ".tmp-out"
    tmp.mkdir()
    (tmp / "f").write_text("new")
    replace_path(tmp, final)  # nothing there yet: one rename
    assert (final / "f").read_text() == "new" and not tmp.exists()
    (final / "stale").write_text("old only")
    tmp.mkdir()
    (tmp / "f").write_text("newer")
    replace_path(tmp, final)  # the old folder goes entirely, not merged
    assert sorted(p.name for p in final.iterdir()) == ["f"] and (final / "f").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .old- or temp name left


def test_replace_path_takes_a_file_over_a_file_and_remove_path_any_kind(tmp_path):
    (tmp_path / "model.gguf").write_text("old")
    (tmp_path / ".t").write_text("new")
    replace_path(tmp_path / ".t", tmp_path / "model.gguf")
    assert (tmp_path / "model.gguf").read_text() == "new"
    (tmp_path / "d" / "e").mkdir(parents=True)
    remove_path(tmp_path / "d")
    remove_path(tmp_path / "model.gguf")
    remove_path(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []
