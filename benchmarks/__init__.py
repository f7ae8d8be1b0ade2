"""mic_det's benchmarks: scripts run as modules from the repository root (``python -m benchmarks.adaptation``).

The modules import each other relatively and without cycles: ``protocol`` (the detection benchmark's
shifts, methods and budget), ``bench_stats``, ``bench_report``, ``run_progress``, ``bench_runs`` and
``source_models`` are libraries; ``adaptation``, ``task_adaptation``, ``speed``, ``eval_speed``, ``gpu_check``, ``minimal_mic``
and ``pseudo_label_sweep`` are the scripts (benchmarks/README.md lists what each measures).
"""
