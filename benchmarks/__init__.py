"""mgid's benchmarks: a package of the source tree (not installed with ``mgid``), run from the repository root
as ``python -m benchmarks.<name> --help``; reports go to ``benchmarks/results/`` (indexed in its README.md).

Scripts (each has ``--help``; most have ``--quick``):

* ``bench_ops``            the memory and whitening ops, fused vs reference, compiled, SDPA and the public loop
                           (CPU or ``--device cuda``; ``mgid bench`` runs it)
* ``bench_train``          training throughput per setting: `MGIDObjective` + `optimizer_step`, what
                           ``mgid train`` runs (CPU or ``--device cuda``), data loading, loss curves
* ``step_time``            seconds per training step of whichever ``mgid`` is importable (compares checkouts)
* ``bench_derain``         de-raining speed per precision and memory format, and what it costs in PSNR
* ``bench_derain_memory``  peak memory of de-raining against megapixels; the record ``--tile auto`` reads
* ``derain_large_photos``  ``mgid derain`` on large photos under a memory budget
* ``bench_export``         the exported ONNX network against PyTorch eager: speed and agreement
* ``bench_public``         scores on public paired test sets beside published results
* ``rain_kinds_ab``        each kind of rain the renderer gained, on the held-out sets
* ``recalibrated_score``   held-out gain of step checkpoints after BatchNorm recalibration
* ``video_finetune``       fine-tuning on a synthetic static camera, measured

Modules the scripts share: ``harness`` (timer, environment, report files), ``op_cases`` (shapes and case
builders of the op benchmarks), ``bench_memory`` / ``bench_whitening`` (the op families of ``bench_ops``),
``public_loop`` (the public code's per-item loop, the slow baseline), ``train_cases`` / ``train_data`` /
``train_curve`` / ``train_report`` (the parts of ``bench_train``).

Not benchmarks: ``tools/`` holds the GPU check (``tools/gpu_check.sh``), its wheel helper and the learning-curve
plotter.
"""
