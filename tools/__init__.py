"""Tools of the source tree that are not benchmarks, run from the repository root:

* ``tools/gpu_check.sh``     the GPU check on the lent GPU machine (build, CUDA tests, the benchmarks with
                             ``--device cuda``, compute-sanitizer, the suite) as one command; ``--dry-run`` here
* ``tools.gpu_report``       its Python parts no benchmark does: environment, build check, summary files
* ``tools.make_wheelhouse``  the wheels gpu_check.sh carries to that machine, and their install there
* ``tools.learning_curve``   held-out scores of a run's step checkpoints, and their plot
"""
