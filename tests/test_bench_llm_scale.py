"""The LLM-scale benchmark's smoke run writes every figure the issue asks for."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("token_form_bytes_per_sample_layer0", "alpha_bytes_per_sample_layer0", "effects_over_forward",
        "lens_peak_extra_gib", "weights_identity_s", "topk_mode_disk_gb_per_layer_10k")


def test_quick_run_writes_the_figures(tmp_path):
    out = tmp_path / "scale.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_llm_scale.py"), "--quick", "--json", str(out)],
                   check=True, timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                               "OE_ASSETS_CACHE": str(tmp_path / "cache")})
    figures = json.loads(out.read_text())
    for key in KEYS:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, key
    # the stored forms at the 8B shape come from the writer's size rule: 992 paths, 14,336 neurons, 128 tokens
    assert 0 <= figures["alpha_bytes_per_sample_layer0"] - 992 * 14_336 * 4 < 1024  # + scale and the like
    assert figures["token_form_bytes_per_sample_layer0"] < figures["alpha_bytes_per_sample_layer0"] / 5
    assert figures["topk_mode_disk_gb_per_layer_10k"] <= 10
