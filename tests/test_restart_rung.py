"""benchmarks/restart_rung.py on the two audits kept in the repository: the documented command runs as written."""

import importlib.util
import json


from conftest import ROOT

spec = importlib.util.spec_from_file_location("restart_rung", ROOT / "benchmarks" / "restart_rung.py")
restart_rung = importlib.util.module_from_spec(spec)
spec.loader.exec_module(restart_rung)

RESULTS = ROOT / "docs" / "results"


def test_kept_audits_compare_and_the_restart_equals_the_proxy_at_its_epoch(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert restart_rung.main([str(RESULTS / "audit-resnest-digits_hard-2026-12-08"),
                              str(RESULTS / "audit-resnest-restart-2026-12-08"), "--at", "3", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["n"] == 24
    # the restarted schedule's first 3 epochs are the complete 3-epoch proxy run, bitwise
    assert record["bitwise_equal_to_proxy"] == 24
    plain, restarted = record["rungs"].values()
    assert restarted["spearman"] > plain["spearman"]
    assert "24 of 24" in capsys.readouterr().out


def test_a_directory_without_runs_exits_2(tmp_path, capsys):
    assert restart_rung.main([str(tmp_path), str(tmp_path)]) == 2
    assert "no models/ folder" in capsys.readouterr().err
