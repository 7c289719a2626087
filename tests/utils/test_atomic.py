"""Atomic outputs: files and folders appear whole with the modes the umask allows, and the temporaries of a process
killed mid-write are removed (a folder killed between its two renames is put back)."""

from __future__ import annotations

import os

import pytest


@pytest.mark.parametrize("umask, dirs, files", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)], ids=["022", "027"])
def test_atomic_outputs_get_the_umask_modes(tmp_path, umask, dirs, files):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_revdarts.utils.atomic import atomic_folder, atomic_savefig, atomic_write_json

    previous = os.umask(umask)
    try:
        with atomic_folder(tmp_path / "best") as tmp:
            (tmp / "weights.bin").write_bytes(b"x")
            atomic_write_json(tmp / "config.json", {"a": 1})
        atomic_write_json(tmp_path / "summary.json", {"a": 1})
        fig = plt.figure()
        atomic_savefig(fig, tmp_path / "plot.png")
        plt.close(fig)
    finally:
        os.umask(previous)
    assert (tmp_path / "best").stat().st_mode & 0o777 == dirs
    for path in (tmp_path / "best" / "weights.bin", tmp_path / "best" / "config.json", tmp_path / "summary.json",
                 tmp_path / "plot.png"):
        assert path.stat().st_mode & 0o777 == files, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "plot.png", "summary.json"], "no temporaries"


def test_a_folder_killed_between_its_two_renames_is_put_back(tmp_path):
    from hf_revdarts.utils.atomic import remove_stale_temporaries

    (tmp_path / ".old-best-4242").mkdir()
    (tmp_path / ".old-best-4242" / "model.safetensors").write_text("previous best")
    (tmp_path / ".tmp-best-0a1b2c3d").mkdir()
    (tmp_path / ".old-published-77").mkdir()
    (tmp_path / "published").mkdir()
    (tmp_path / ".tmp-eval_test.json-89abcdef").write_text('{"bleu": 1')  # an evaluation killed mid-write
    (tmp_path / ".tmp-genotype.png-01234567.png").write_bytes(b"\x89PNG")  # a figure killed mid-write
    remove_stale_temporaries(tmp_path, "best")
    assert (tmp_path / "best" / "model.safetensors").read_text() == "previous best"
    assert (tmp_path / ".tmp-eval_test.json-89abcdef").exists(), "only the named target's leftovers go"
    remove_stale_temporaries(tmp_path, "eval_test.json")
    remove_stale_temporaries(tmp_path, "genotype.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".old-published-77", "best", "published"]
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "published"]
