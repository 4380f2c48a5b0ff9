"""Launching the protocol's runs: one after another, side by side on one machine, or on a Slurm cluster.

``scripts/protocol.py`` decides *which* runs make up the protocol (targets x unseen classes x seeds x
methods, their commands and output folders); this package decides *where and how* they run:

- :mod:`launch.runs`: a run (output folder, command, method), its console log, torchrun wrapping, and the
  function a cluster job executes;
- :mod:`launch.pool`: every GPU of one machine busy (one run per GPU, or per group of GPUs), or N runs at
  once on CPUs, with a progress line and clean Ctrl-C;
- :mod:`launch.slurm`: a Slurm cluster through submitit (an optional dependency, imported only there),
  with a record of submitted jobs beside the outputs so that re-running the command collects and resubmits;
- :mod:`launch.estimate`: the cost of the runs left, before anything runs.

Why a package rather than more of ``scripts/protocol.py``: the pool, the cluster launcher and the
estimate are each a few hundred lines with their own tests, and a Slurm job must import the function it
runs on the compute node, which needs an installed module (a script's functions are not importable there).
``pool``, ``runs`` and ``slurm`` import nothing of this project but ``engine.utils.errors`` and
``engine.utils.processes`` (neither imports torch); ``estimate``
reads configs and splits through the engine, the datasets and the trainers.
"""
