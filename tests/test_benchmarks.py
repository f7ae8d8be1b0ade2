"""The benchmark scripts: their statistics, and the minimal MIC loop on the tiny pair (the full runs are by hand)."""
import ast
import graphlib
import importlib
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.structures import Boxes, Instances

from benchmarks import adaptation, bench_report, bench_runs, bench_stats, pseudo_label_sweep, run_progress
from benchmarks.source_models import source_model_dir, source_options

from .conftest import REPO, TINY_OVERRIDES


def _run(target_ap50):
    numbers = {"target_AP50": target_ap50, "target_AP": 1.0, "source_AP50": 2.0, "source_AP": 1.0,
               "target_AP50_per_class": {"car": target_ap50}}
    return {"models": {"student": numbers}, "pseudo_labels": None}


def test_adaptation_gains_are_paired_against_the_matched_control():
    runs = {
        "control": {0: _run(30.0), 1: _run(34.0), 2: _run(38.0)},
        "mic": {0: _run(32.0), 1: _run(35.0), 2: _run(41.0)},
        "oracle": {0: _run(50.0), 1: _run(50.0), 2: _run(50.0)},
    }
    summary = bench_stats.summarize(runs, ["control", "mic", "oracle"], [0, 1, 2],
                              ("target_AP50", "target_AP", "source_AP50", "source_AP"), "target_AP50")
    mic = summary["mic/student"]
    assert mic["target_AP50"]["mean"] == pytest.approx(36.0)
    assert mic["fraction_of_oracle"] == pytest.approx(36.0 / 50.0)
    # Paired differences 2, 1, 3: mean 2, std 1 (the source model's spread cancels out).
    g = mic["gain_over_control"]
    assert g["values"] == pytest.approx([2.0, 1.0, 3.0])
    assert g["mean"] == pytest.approx(2.0) and g["std"] == pytest.approx(1.0) and g["in_std"] == pytest.approx(2.0)
    assert "gain_over_control" not in summary["control/student"]
    verdicts = {v["target"]: v["met"] for v in bench_stats.verdicts(summary, "target_AP50")}
    assert verdicts == {
        "mic target_AP50 above the matched control by more than 3 paired std": False,  # 2.0 < 3 x 1.0
        # control 34, MIC 36, oracle 50: 2 of the 16 points of the gap.
        "mic closes >= 60% of the gap from the control to the oracle (target_AP50)": False,
        "no adaptation method ends below its control on any seed (target_AP50)": True,
        "mic >= 90% of the oracle (target_AP50)": False,
    }
    assert mic["gap_closed"] == pytest.approx(2.0 / 16.0)
    table = "\n".join(bench_report.main_table(summary, {"mic": "MIC"}, [("target AP50", "target_AP50")]))
    assert "| MIC | 36.0 ± 4.6 | 2.0 ± 1.0 | +2.0 | +2.0, +1.0, +3.0 | 72 |" in table


@pytest.mark.parametrize("minimal, met", [((31.0, 35.0, 40.0), True), ((31.0, 36.0, 30.0), False)])
def test_sanity_verdict_compares_the_minimal_loop_seed_by_seed(minimal, met):
    runs = {
        "control": {0: _run(30.0), 1: _run(34.0), 2: _run(38.0)},
        "mic": {0: _run(32.0), 1: _run(35.0), 2: _run(41.0)},
        # In the second case MIC's mean is higher (36.0 vs 32.3), yet it loses seed 1: missed.
        "minimal_mic": {s: _run(v) for s, v in enumerate(minimal)},
    }
    summary = bench_stats.summarize(runs, list(runs), [0, 1, 2], ("target_AP50",), "target_AP50")
    (v,) = [v for v in bench_stats.verdicts(summary, "target_AP50") if "minimal_mic" in v["target"]]
    assert v["met"] is met
    assert v["numbers"]["values"] == pytest.approx([32.0 - minimal[0], 35.0 - minimal[1], 41.0 - minimal[2]])


def test_gap_and_no_loss_verdicts():
    runs = {
        "control": {0: _run(30.0), 1: _run(34.0)},
        "mic": {0: _run(45.0), 1: _run(46.0)},  # closes (45.5 - 32) / (50 - 32) = 75%
        "sada": {0: _run(31.0), 1: _run(33.5)},  # below its control on seed 1
        "oracle": {0: _run(50.0), 1: _run(50.0)},
    }
    summary = bench_stats.summarize(runs, list(runs), [0, 1], ("target_AP50",), "target_AP50")
    verdicts = {v["target"]: v for v in bench_stats.verdicts(summary, "target_AP50")}
    gap = verdicts["mic closes >= 60% of the gap from the control to the oracle (target_AP50)"]
    assert gap["met"] and gap["numbers"]["gap_closed"] == pytest.approx(0.75)
    loss = verdicts["no adaptation method ends below its control on any seed (target_AP50)"]
    assert loss["met"] is False and loss["numbers"]["worst_paired_gain"] == pytest.approx({"mic": 12.0, "sada": -0.5})


def test_one_seed_gives_no_verdict_on_spread():
    runs = {"control": {0: _run(30.0)}, "mic": {0: _run(40.0)}}
    summary = bench_stats.summarize(runs, ["control", "mic"], [0], ("target_AP50",), "target_AP50")
    v = bench_stats.verdicts(summary, "target_AP50")[0]
    assert v["met"] is None and v["numbers"]["mean"] == pytest.approx(10.0)


def test_adaptation_command_starts_every_method_from_the_source_checkpoint(tmp_path):
    args, budget = adaptation.parse_args(["--quick", "--shift", "night", "--source-iters", "200", "--adapt-iters", "50"])
    assert budget.methods == ["control", "mic", "oracle"] and budget.lr_step == 150 and budget.total == 250
    # --quick runs the full benchmark's budget, in folders and a report of its own: never the full run's.
    assert budget.overrides == []
    assert args.out_dir.endswith("bench_adaptation_quick/night") and args.output.endswith("adaptation_night_quick.json")
    cmd = adaptation.adapt_command("mic", 0, str(tmp_path), budget, "src")
    opts = dict(zip(cmd[5::2], cmd[6::2]))
    assert cmd[3] == "configs/synthetic_night/mic.yaml" and cmd[4] == "--resume"
    assert opts["MIC.BURN_IN_ITERS"] == "200" and opts["SOLVER.MAX_ITER"] == "250"
    # The source model's schedule (x0.1 at 150), then adaptation's own: restarted at 200, x0.1 at 237.
    assert opts["SOLVER.STEPS"] == "(150,237)" and opts["SOLVER.RESTART_ITERS"] == "(200,)"
    assert opts["DATASETS.TEST"] == "('synthetic_night_val','synthetic_clear_val')"
    source = dict(zip(*[iter(source_options(0, budget.source_iters, budget.overrides))] * 2))
    assert source["SOLVER.STEPS"] == "(150,)" and source["SOLVER.RESTART_ITERS"] == "()"
    # --decayed-adaptation: adaptation at the source schedule's lr x0.1, in runs of their own.
    _, decayed = adaptation.parse_args(["--quick", "--source-iters", "200", "--adapt-iters", "50", "--decayed-adaptation"])
    opts = dict(zip(*[iter(adaptation.adapt_command("mic", 0, str(tmp_path), decayed, "src")[5:])] * 2))
    assert opts["SOLVER.STEPS"] == "(150,)" and opts["SOLVER.RESTART_ITERS"] == "()"
    assert decayed.identity_overrides != budget.identity_overrides
    with pytest.raises(SystemExit):
        adaptation.parse_args(["SOLVER.MAX_ITER", "5"])  # the benchmark's own key


def test_the_default_methods_are_the_recorded_ones_and_the_longest_runs_are_queued_first():
    _, default = adaptation.parse_args([])
    assert default.methods == ["control", "mic", "oracle"] and default.seeds == [0, 1, 2]
    _, budget = adaptation.parse_args(["--seeds", "0,1", "--methods", "oracle,mic,sada,mic_sada"])
    order = adaptation.run_order(budget)
    assert order[:2] == [("mic_sada", 0), ("mic_sada", 1)] and order[2] == ("mic", 0)
    assert sorted(order) == sorted((m, s) for m in budget.methods for s in (0, 1))  # each run once
    costs = [adaptation.METHODS[m].step_cost for m, _ in order]
    assert costs == sorted(costs, reverse=True)


def test_a_folder_holding_another_run_is_refused_and_kept(tmp_path):
    """Skipping or resuming whatever a run folder holds would report (or continue) another budget's run
    as this one: only the same run, or the same run continued for more steps, is taken."""
    _, budget = adaptation.parse_args(["--adapt-iters", "500", "MIC.EMA_ALPHA", "0.99"])
    wanted = bench_runs.run_identity("mic", "/cache/source_seed0_1000_abc", budget.adapt_iters, budget.overrides)
    out = tmp_path / "0" / "mic"
    bench_runs.check_run_folder(str(out), wanted)  # nothing there yet
    out.mkdir(parents=True)
    bench_runs.check_run_folder(str(out), wanted)  # a folder from before the records: taken as it is
    (out / "model_final.pth").write_bytes(b"weights")
    record = out / bench_runs.RUN_OF
    record.write_text(json.dumps(wanted))
    bench_runs.check_run_folder(str(out), wanted)
    record.write_text(json.dumps(dict(wanted, adapt_iters=250)))
    bench_runs.check_run_folder(str(out), wanted)  # the same run, continued to more steps
    for other in (dict(wanted, adapt_iters=1000), dict(wanted, overrides=["MIC.EMA_ALPHA", "0.999"]),
                  dict(wanted, source_model="source_seed0_1000_def")):
        record.write_text(json.dumps(other))
        with pytest.raises(RuntimeError, match=f"{out}.*another --out-dir"):
            bench_runs.check_run_folder(str(out), wanted)
    assert (out / "model_final.pth").read_bytes() == b"weights"
    # The control ignores MIC's keys: one control serves every MIC ablation.
    control = bench_runs.run_identity("control", "/cache/source_seed0_1000_abc", 500, budget.overrides)
    assert control == bench_runs.run_identity("control", "/cache/source_seed0_1000_abc", 500, [])


def _record(path, overrides, values, source_iters=1000, adapt_iters=500, shift="fog"):
    mean = sum(values) / len(values)
    path.write_text(json.dumps({
        "budget": {"shift": shift, "source_iters": source_iters, "adapt_iters": adapt_iters,
                   "seeds": list(range(len(values))), "overrides": overrides},
        "summary": {"mic/student": {"gain_over_control": {"mean": mean, "std": 1.5, "values": values}}}}))
    return str(path)


def test_the_demo_reads_its_seed_against_the_recorded_spread_only_for_the_same_budget(tmp_path):
    """`make demo` is seed 0 of the full benchmark's budget and quotes the record of that budget; with
    DEMO_ARGS that match no record it must not call another budget 'the same'."""
    _, budget = adaptation.parse_args(["--demo"])
    assert budget.overrides == [] and budget.seeds == [0] and budget.methods == ["control", "mic"]
    steps = dict(source_iters=budget.source_iters, adapt_iters=budget.adapt_iters)  # the configs' schedule
    small = ["INPUT.MIN_SIZE_TRAIN", "(160,)"]
    full = _record(tmp_path / "adaptation_fog.json", [], [2.1, 4.1, 1.2], **steps)
    other = _record(tmp_path / "adaptation_fog_small.json", small, [3.0, 2.0, 4.0], **steps)
    night = _record(tmp_path / "adaptation_night.json", [], [9.0, 9.0], shift="night", **steps)
    one_seed = _record(tmp_path / "adaptation_fog_seed0.json", [], [5.0], **steps)
    line = adaptation.recorded_spread(budget, [other, night, one_seed, full])
    assert full in line and f"same budget {budget.source_iters}+{budget.adapt_iters}" in line
    assert "+2.5 ± 1.5" in line and "+2.1, +4.1, +1.2" in line
    assert "NOT above the control" in line  # 2.5 < 3 x 1.5: the demo says the gain is not established
    strong = _record(tmp_path / "adaptation_fog_strong.json", [], [5.0, 6.0, 7.0], **steps)  # 6.0 > 3 x 1.5
    assert "NOT" not in adaptation.recorded_spread(budget, [strong]) and "above the control by more than 3" in \
        adaptation.recorded_spread(budget, [strong])
    # Without a record of its budget: the first readable one, said to be another budget.
    line = adaptation.recorded_spread(budget, [str(tmp_path / "missing.json"), other])
    assert other in line and "same budget" not in line and "another budget" in line
    _, longer = adaptation.parse_args(["--demo", "--source-iters", "2000", "--adapt-iters", "1000"])
    line = adaptation.recorded_spread(longer, [full, other])
    assert "same budget" not in line and "another budget" in line and "2000+1000" in line
    _, small_input = adaptation.parse_args(["--demo"] + small)
    assert small_input.overrides == small
    assert "same budget" in adaptation.recorded_spread(small_input, [full, other])
    assert "No recorded" in adaptation.recorded_spread(budget, [str(tmp_path / "missing.json"), one_seed])
    # An override that only adds a measurement (pseudo-label precision) trains the same runs.
    logged = _record(tmp_path / "adaptation_fog_logged.json", ["MIC.LOG_PSEUDO_LABEL_QUALITY", "True"], [2.0, 3.0], **steps)
    assert "same budget" in adaptation.recorded_spread(budget, [logged])


def test_a_measurement_only_override_is_the_same_run(tmp_path):
    logged = ["MIC.LOG_PSEUDO_LABEL_QUALITY", "True"]
    assert bench_runs.training_overrides(logged + ["MIC.EMA_ALPHA", "0.9"]) == ["MIC.EMA_ALPHA", "0.9"]
    plain = bench_runs.run_identity("mic", "/cache/source_seed0_1000_abc", 500, [])
    assert bench_runs.run_identity("mic", "/cache/source_seed0_1000_abc", 500, logged) == plain
    # A folder recorded with the override is this run, and an ablation's folder is not.
    (tmp_path / bench_runs.RUN_OF).write_text(json.dumps({**plain, "overrides": logged}))
    bench_runs.check_run_folder(str(tmp_path), plain)
    with pytest.raises(RuntimeError, match="holds another run"):
        bench_runs.check_run_folder(str(tmp_path), bench_runs.run_identity(
            "mic", "/cache/source_seed0_1000_abc", 500, ["MIC.EMA_ALPHA", "0.9"]))


def test_pseudo_label_sweep_precision_recall_f1():
    pred = Instances(
        (100, 100),
        pred_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])),
        scores=torch.tensor([0.9, 0.6, 0.4]),
        pred_classes=torch.tensor([0, 0, 0]),
    )
    gt = Instances((100, 100), gt_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80]])),
                   gt_classes=torch.tensor([0, 0, 0]))
    rows = pseudo_label_sweep.sweep([pred], [gt], [0.3, 0.5, 0.8], nms_thresh=0.5)
    # 0.3: 3 boxes, 2 right; 0.5: 2 of 2; 0.8: 1 of 1; always 3 labels
    assert [r["precision"] for r in rows] == pytest.approx([2 / 3, 1.0, 1.0])
    assert [r["recall"] for r in rows] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    assert rows[1]["f1"] == pytest.approx(0.8)
    assert [r["boxes_per_image"] for r in rows] == [3.0, 2.0, 1.0]


def test_the_control_of_one_shift_is_found_for_another(tmp_path):
    """Source-only training never sees the target: a finished fog control of the seed serves night,
    but only the same run (source model, steps, overrides), whatever the folders beside it hold."""
    import json

    _, budget = adaptation.parse_args(["--shift", "night", "--source-iters", "200", "--adapt-iters", "50",
                                       "MIC.EMA_ALPHA", "0.99", "INPUT.MIN_SIZE_TEST", "160"])
    source = str(tmp_path / "cache" / "source_seed1_200_abc")
    night_out = tmp_path / "night" / "1" / "control"
    find = lambda out=night_out, b=budget: bench_runs.finished_control_elsewhere(str(out), b, source)  # noqa: E731
    assert find() is None
    fog = tmp_path / "fog" / "1" / "control"
    fog.mkdir(parents=True)
    (fog / "model_final.pth").write_bytes(b"")
    (fog / "metrics.json").write_text(json.dumps({"iteration": 250, "student/x/bbox/AP50": 1.0}) + "\n")
    assert find() is None  # no record of what it was trained from: not known to be the same run
    # A fog run of the same source model and input size; MIC's keys do not reach the control.
    _, fog_budget = adaptation.parse_args(["--source-iters", "200", "--adapt-iters", "50", "INPUT.MIN_SIZE_TEST", "160"])
    (fog / bench_runs.RUN_OF).write_text(json.dumps(
        bench_runs.run_identity("control", source + "/", fog_budget.adapt_iters, fog_budget.overrides)))
    assert find() == str(fog / "model_final.pth")
    (fog / "metrics.json").write_text(json.dumps({"iteration": 120, "student/x/bbox/AP50": 1.0}) + "\n")
    assert find() is None  # unfinished: not the same run
    (fog / "metrics.json").write_text(json.dumps({"iteration": 250, "student/x/bbox/AP50": 1.0}) + "\n")
    assert find(tmp_path / "night" / "2" / "control") is None  # another seed
    _, other_size = adaptation.parse_args(["--shift", "night", "--source-iters", "200", "--adapt-iters", "50"])
    assert find(b=other_size) is None  # another input size at test time


def test_a_run_found_finished_keeps_the_training_time_its_log_recorded(tmp_path):
    """Re-running a report finds the runs finished; their time is the sum of Detectron2's timer lines, one per launch."""
    run = tmp_path / "mic"
    run.mkdir()
    assert bench_report.logged_training_seconds(str(run)) is None  # no log: nothing to say
    (run / "log.txt").write_text(
        "[11/29 23:27:52] d2.engine.hooks INFO: Total training time: 0:10:01 (0:00:00 on hooks)\n"
        "[11/30 02:35:50] d2.utils.events INFO:  eta: 0:00:00  iter: 1499\n"
        "[11/30 02:35:50] d2.engine.hooks INFO: Total training time: 1:41:04 (0:00:01 on hooks)\n")
    assert bench_report.logged_training_seconds(str(run)) == 10 * 60 + 1 + 3600 + 41 * 60 + 4  # and a resume
    (run / "log.txt").write_text("x INFO: Total training time: 1 day, 0:00:05 (0:00:01 on hooks)\n")
    assert bench_report.logged_training_seconds(str(run)) == 86400 + 5

    timings = {"mic": {0: {"wall_seconds": 12.4, "steps_run": 500},
                       1: {"wall_seconds": None, "logged_training_seconds": 86405.0, "steps_run": 500},
                       2: {"wall_seconds": None, "steps_run": 500}}}
    lines = bench_report.time_table(timings, {"mic": "MIC"}, [0, 1, 2])
    assert lines[2] == "| MIC | 500 | 12 | 86405* | – |"
    assert "found finished" in lines[-1]
    # Nothing found finished: no footnote.
    assert len(bench_report.time_table({"mic": {0: {"wall_seconds": 3.0, "steps_run": 5}}}, {}, [0])) == 3


def test_the_minimal_loop_runs_from_a_source_checkpoint_and_logs_its_time(source_only_run, tiny_pair, tmp_path):
    """benchmarks/minimal_mic.py end to end: the sanity row the report compares MIC with, timed like any run."""
    out = tmp_path / "minimal_mic"
    cmd = [sys.executable, "-m", "benchmarks.minimal_mic",
           "--config-file", "configs/synthetic/mic.yaml", "--weights", str(source_only_run / "model_final.pth"),
           *TINY_OVERRIDES, "DATASETS.SYNTHETIC_ROOT", str(tiny_pair), "OUTPUT_DIR", str(out),
           "MIC.BURN_IN_ITERS", "200", "SOLVER.MAX_ITER", "206", "SOLVER.STEPS", "(180,)",
           "DATASETS.TEST", "('synthetic_clear_train',)"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record,) = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert record["iteration"] == 206
    # The checkpoint was loaded: the source model scores > 10 AP50 on its training images (test_train_net), and
    # after 6 steps at EMA 0.99 the teacher is still 94% that model; the student has moved away from it.
    ap = {tag: record[f"{tag}/synthetic_clear_train/bbox/AP50"] for tag in ("student", "teacher")}
    assert ap["teacher"] > 10.0 and ap["student"] > 10.0, ap
    assert record["student/synthetic_clear_train/bbox/AP"] != record["teacher/synthetic_clear_train/bbox/AP"]
    assert bench_report.logged_training_seconds(str(out)) is not None


def _gpu_check(args, env=None):
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", *args]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
                          capture_output=True, text=True, timeout=300)


def test_the_gpu_check_runs_its_cpu_path_and_reports_finite_mic_losses(tiny_pair, tmp_path):
    """benchmarks/gpu_check.py on the CPU: the Cityscapes -> Foggy MIC model (R50-FPN, full heads), 3 steps at
    128 px on the tiny pair; threshold 0 so every step runs the masked forward and its losses are real."""
    out = tmp_path / "gpu_check.json"
    proc = _gpu_check(["--device", "cpu", "--iters", "3", "--size", "128", "--out", str(out),
                       "--tmp", str(tmp_path / "run"), *TINY_OVERRIDES, "DATASETS.SYNTHETIC_ROOT", str(tiny_pair),
                       "MIC.PSEUDO_SCORE_THRESH", "0.0"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["config"] == "configs/cityscapes_foggy/mic_R50_FPN.yaml" and report["device"] == "cpu"
    assert report["model"]["depth"] == 50 and report["model"]["norm"] == "GN"  # no weights: trained from scratch
    assert report["amp"] is False and report["peak_gpu_memory_mb"] is None  # AMP only acts on CUDA
    assert report["iters"] == 3 and report["warmup"] == 1 and report["image_size"] == [128, 256]
    assert report["step_s_median"] > 0 and report["peak_rss_mb"] > 0
    losses = report["mic_losses"]
    assert set(losses) == {"loss_cls_mic", "loss_box_reg_mic", "loss_rpn_cls_mic", "loss_rpn_loc_mic"}
    assert report["mic_losses_finite"] and all(math.isfinite(v) for v in losses.values())
    assert losses["loss_cls_mic"] > 0  # the masked forward ran on pseudo-boxes
    assert report["pseudo_boxes_per_image"] > 0 and report["steps_with_pseudo_boxes"] == 1.0
    assert "| step s (median of 2, after 1 warm-up) |" in proc.stdout and "| loss_cls_mic" in proc.stdout


@pytest.mark.slow  # a subprocess or a training run
def test_the_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _gpu_check(["--out", str(out)], env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.splitlines() == ["CUDA is not available: GPU check skipped (--device cpu runs it on the CPU)."]
    assert not out.exists()


def test_progress_line_reads_step_eta_loss_and_the_target_metric_from_metrics_json(tmp_path):
    line = run_progress.progress_line("[seed 0] mic", str(tmp_path), 1500)
    assert line.endswith("starting (building the model and data)")
    rows = [
        {"iteration": 999, "total_loss": 1.5, "eta_seconds": 400.0},
        {"iteration": 999, "student/tgt_val/bbox/AP50": 61.25, "teacher/tgt_val/bbox/AP50": 60.0,
         "student/src_val/bbox/AP50": 90.0},
        {"iteration": 1119, "total_loss": 0.8234, "eta_seconds": 190.0},
    ]
    with open(tmp_path / "metrics.json", "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + '\n{"iteration": 11')  # a partly written last row
    line = run_progress.progress_line("[seed 0] mic", str(tmp_path), 1500, dataset="tgt_val")
    assert line == ("[seed 0] mic: step 1120/1500, total_loss 0.823, ETA 3 min 10 s, "
                    "bbox/AP50 (tgt_val) at step 999: student 61.2, teacher 60.0")


def test_a_benchmark_run_prints_where_its_log_is_and_its_progress_while_it_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_progress, "PROGRESS_SECONDS", 0.2)
    script = ("import json, time\n"
              f"f = open({str(tmp_path / 'metrics.json')!r}, 'w')\n"
              "f.write(json.dumps({'iteration': 19, 'total_loss': 2.0, 'eta_seconds': 61}) + '\\n'); f.flush()\n"
              "time.sleep(1.0)\n")
    run_progress.execute([sys.executable, "-c", script], str(tmp_path / "stdout.txt"), None,
                         label="[seed 0] mic", total_iters=40)
    out = capsys.readouterr().out
    assert f"log {tmp_path / 'log.txt'}; TensorBoard: tensorboard --logdir {tmp_path}" in out
    assert "[seed 0] mic: step 20/40, total_loss 2.000, ETA 1 min 01 s" in out


def test_lines_said_from_two_threads_stay_whole(monkeypatch):
    """``--jobs 2`` reports from two threads; ``print`` writes a line and its newline apart."""
    import threading
    import time

    class SlowStream:  # gives the other thread the GIL at every write, as a busy terminal may
        def __init__(self):
            self.parts = []

        def write(self, text):
            self.parts.append(text)
            time.sleep(0.0005)

        def flush(self):
            pass

    stream = SlowStream()
    monkeypatch.setattr(sys, "stdout", stream)
    lines = {name: [f"[{name}] line {i}" for i in range(50)] for name in ("seed 0", "seed 1")}
    threads = [threading.Thread(target=lambda ls=ls: [run_progress.say(x) for x in ls]) for ls in lines.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    said = "".join(stream.parts).splitlines()
    assert sorted(said) == sorted(lines["seed 0"] + lines["seed 1"])


def test_a_source_models_cache_folder_follows_config_values_through_bases_not_comments(tmp_path):
    """One rule names the cached source models of every benchmark (detection, segmentation, classification)."""
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.02\n")
    (tmp_path / "run.yaml").write_text('_BASE_: "base.yaml"\nSEED: 1\n')
    opts = source_options(0, 40, ["MIC.EMA_ALPHA", "0.9", "INPUT.MIN_SIZE_TRAIN", "(96,)"])
    assert "MIC.EMA_ALPHA" not in opts and opts[-2:] == ["INPUT.MIN_SIZE_TRAIN", "(96,)"]  # no effect on source-only

    def folder(data=None):
        return source_model_dir(str(tmp_path), "seg_", 0, 40, str(tmp_path / "run.yaml"), opts, data)

    first = folder()
    assert os.path.basename(first).startswith("seg_source_seed0_40_") and folder() == first
    assert folder(data=["generator", 1]) != first  # detection adds the built-in set's parameters
    (tmp_path / "base.yaml").write_text("# the lr is measured in BENCHMARKS.md\nSOLVER:\n  BASE_LR: 0.02  # chosen\n")
    assert folder() == first
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.01\n")
    changed = folder()
    assert changed != first
    # A key the run's options set is not part of it: a config's schedule edit keeps the source models.
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.01\n  MAX_ITER: 1500\n  STEPS: (9,)\n")
    assert folder() == changed


# ------------------------------------------------------------------ the package
BENCHMARKS = os.path.join(REPO, "benchmarks")
SCRIPTS = sorted(f[:-3] for f in os.listdir(BENCHMARKS) if f.endswith(".py") and f != "__init__.py")


def _benchmark_imports(name):
    """The benchmarks modules that ``benchmarks/<name>.py`` imports, wherever the import is (module level, in a
    function, under ``TYPE_CHECKING``) and however it is spelled (relative, ``benchmarks.x`` or a bare ``x``)."""
    with open(os.path.join(BENCHMARKS, f"{name}.py")) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.add(parts[1] if parts[0] == "benchmarks" and len(parts) > 1 else parts[0])
        elif isinstance(node, ast.ImportFrom):
            parts = node.module.split(".") if node.module else []
            if node.level or parts[:1] == ["benchmarks"]:
                rest = parts if node.level else parts[1:]
                found.update(rest[:1] or [alias.name for alias in node.names])
            else:
                found.add(parts[0])
    return found & set(SCRIPTS) - {name}


def test_benchmarks_is_a_package_whose_modules_import_each_other_without_a_cycle():
    """Every import between benchmark modules, counted even when only a type checker follows it, forms a DAG."""
    assert os.path.isfile(os.path.join(BENCHMARKS, "__init__.py"))
    graph = {name: _benchmark_imports(name) for name in SCRIPTS}
    assert graph["task_adaptation"] and graph["adaptation"]  # the walk sees the imports
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle in benchmarks/: {' -> '.join(e.args[1])}")


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_benchmark_module_imports_its_siblings_from_the_package_and_edits_no_sys_path(name):
    with open(os.path.join(BENCHMARKS, f"{name}.py")) as f:
        tree = ast.parse(f.read())
    edits = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "path"
             and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert not edits, f"benchmarks/{name}.py uses sys.path (lines {edits}): import through the package instead"
    bare = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level
            and node.module in SCRIPTS] + [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                                           for alias in node.names if alias.name in SCRIPTS]
    assert not bare, f"benchmarks/{name}.py imports {bare} by bare name: use `from .{bare[0]} import ...`"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_module_imports_from_the_package_and_its_main_answers_help(name, monkeypatch, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    if not hasattr(module, "main"):
        return
    monkeypatch.setattr(sys, "argv", [f"benchmarks.{name}", "--help"])
    with pytest.raises(SystemExit) as exit:
        module.main()
    assert exit.value.code == 0 and "usage:" in capsys.readouterr().out


def test_the_documented_benchmark_commands_run_the_scripts_as_modules_from_the_repository_root():
    """``python -m benchmarks.<name>``: the scripts import each other through the package, so a path does not run."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.task_adaptation", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--task" in proc.stdout, proc.stderr[-2000:]
    docs = ["Makefile", "README.md", "BENCHMARKS.md", os.path.join("benchmarks", "README.md")]
    docs += [os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md")]
    docs += [os.path.join("benchmarks", f"{name}.py") for name in SCRIPTS]
    by_path = re.compile(r"(python\S*|\$\(PY\))\s+benchmarks/\w+\.py|`benchmarks/\w+\.py --")
    found = []
    for doc in docs:
        if doc == os.path.join("docs", "benchmarks_archive.md"):
            continue  # the archive keeps the commands as they were run
        with open(os.path.join(REPO, doc)) as f:
            found += [f"{doc}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if by_path.search(line)]
    assert not found, "\n".join(found)


def test_the_demo_trains_its_source_model_with_one_thread_as_the_benchmark_does(monkeypatch, tmp_path):
    """The thread count changes the trained weights and the cache key does not hold it: the demo's one
    source model must train as the benchmark's do (one thread a run), not with the idle worker's core."""
    seen = {}

    class Stop(Exception):
        pass

    def source_model(seed, budget, cache_dir, threads):
        seen[seed] = threads
        raise Stop

    monkeypatch.setattr(adaptation, "source_model", source_model)
    monkeypatch.setattr(adaptation, "source_data_key", lambda: ["the built-in set"])  # draws nothing
    for flags in (["--demo"], ["--jobs", "2", "--seeds", "0,1,2"]):
        seen.clear()
        with pytest.raises(Stop):
            adaptation.main(flags + ["--out-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "r.json"),
                                     "--cache-dir", str(tmp_path / "cache"), "--progress-every", "0"])
        assert set(seen.values()) == {1}, (flags, seen)


def test_the_source_models_key_is_read_from_the_built_in_set_drawn_first(monkeypatch, tmp_path):
    """On a fresh clone the set is not drawn yet when the benchmark names its source models: the key must
    come from the set as it will be (drawn first), or the demo's model lands in a folder no later run finds."""
    import mic_det.data.synthetic as synthetic

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))  # nothing drawn there
    drawn = []
    pair = {"generator": "scenes", "version": 3, "seed": 0, "height": 192, "width": 320,
            "splits": {"source_train": 600}}

    def ensure_synthetic_set(root, night=False, **kwargs):
        drawn.append((root, night))
        return pair, ({"exposure": 0.1} if night else None)

    monkeypatch.setattr(synthetic, "ensure_synthetic_set", ensure_synthetic_set)
    assert adaptation.source_data_key() == ["scenes", 3, 0, 192, 320, 600]
    assert adaptation.dataset_info("night")["night"] == {"exposure": 0.1}
    assert [n for _, n in drawn] == [False, True] and all(r.startswith(str(tmp_path)) for r, _ in drawn)
