"""`eval omp-speed`: one row per (m, N, s) of SHAPES, the default cache's (64, 4096, 8) among them."""

import json
import math

from lexico_chat import native
from lexico_chat.cli import main
from lexico_chat.evals.omp_speed import SHAPES


def test_reports_every_shape_including_the_default_cache(capsys):
    assert main(["eval", "omp-speed", "--vectors", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"].startswith("cpu (") and out["native_selection"] == native.available()
    assert [(r["m"], r["N"], r["s"]) for r in out["results"]] == list(SHAPES)
    assert (64, 1024, 8) in SHAPES and (64, 4096, 8) in SHAPES
    for row in out["results"]:
        assert set(row) == {"m", "N", "s", "vectors_per_s", "vectors_per_s_fp32_select"}
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("vectors_per_s", "vectors_per_s_fp32_select"))


def test_vectors_must_be_positive(capsys):
    assert main(["eval", "omp-speed", "--vectors", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--vectors" in err, err
