"""Sweeps of any config, locally or on SLURM: ``python -m qmri_jax.sweep``.

  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_grid.py:cpu --out=DIR
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_grid.py --out=DIR --backend=slurm \\
      --partition=gpu --gpus-per-trial=1 --time-min=240
  python -m qmri_jax.sweep --collect --out=DIR/thesis_grid

Each trial runs ``python -m qmri_jax.main`` in ``OUT/<sweep>/<trial>``. A trial that finished is
never run again; a failed one is listed with its error and re-run only with ``--retry-failed``;
a preempted or killed one resumes from its checkpoint on the next run. ``docs/sweeps.md`` has the
details (cluster set-up, reading the results).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys

from qmri_jax.sweeps import backends, collect as collect_lib, runner
from qmri_jax.sweeps.spec import load_sweep


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qmri_jax.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", help="configs/sweeps/NAME.py[:preset]")
    p.add_argument("--out", required=True,
                   help="output folder (trials go to OUT/<sweep name>/); with --collect: the "
                        "sweep's own folder OUT/<sweep name>")
    p.add_argument("--backend", choices=("local", "slurm"), default="local")
    p.add_argument("--dry-run", action="store_true", help="list the trials and their state only")
    p.add_argument("--only", default="",
                   help="trials whose name matches this glob (or contains it, without * ? [)")
    p.add_argument("--retry-failed", action="store_true", help="re-run only the failed trials")
    p.add_argument("--collect", action="store_true", help="write results.csv / results.md")
    p.add_argument("--parallel", type=int, default=1, help="local: trials at a time")
    p.add_argument("--gpus-per-trial", type=int, default=None,
                   help="local: GPUs per trial (CUDA_VISIBLE_DEVICES); slurm: GPUs per node")
    p.add_argument("--mem-fraction", type=float, default=None,
                   help="XLA_PYTHON_CLIENT_MEM_FRACTION of each trial (default: no "
                        "preallocation, XLA_PYTHON_CLIENT_PREALLOCATE=false)")
    g = p.add_argument_group("slurm (defaults from the sweep file's `slurm` dict)")
    g.add_argument("--partition")
    g.add_argument("--nodes", type=int)
    g.add_argument("--tasks-per-node", type=int,
                   help="processes per node (default: one per GPU, or 1)")
    g.add_argument("--cpus-per-trial", type=int, help="CPU cores per task (process)")
    g.add_argument("--mem-gb", type=float)
    g.add_argument("--time-min", type=int, help="time limit of one attempt (minutes)")
    g.add_argument("--array-parallelism", type=int)
    g.add_argument("--signal-delay-s", type=int)
    g.add_argument("--max-requeues", type=int)
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option (repeatable): --sbatch account=abc --sbatch qos=high")
    g.add_argument("--setup", action="append", default=[],
                   help="shell line run before each trial (repeatable): --setup='module load cuda'")
    g.add_argument("--no-wait", action="store_true", help="submit and return")
    return p


def _slurm_options(sweep, args) -> backends.SlurmOptions:
    opts = backends.SlurmOptions(**sweep.slurm)
    for name, attr in (("partition", "partition"), ("nodes", "nodes"),
                       ("tasks_per_node", "tasks_per_node"),
                       ("cpus_per_trial", "cpus_per_task"), ("mem_gb", "mem_gb"),
                       ("time_min", "time_min"), ("array_parallelism", "array_parallelism"),
                       ("signal_delay_s", "signal_delay_s"), ("max_requeues", "max_requeues"),
                       ("gpus_per_trial", "gpus_per_node")):
        v = getattr(args, name)
        if v is not None:
            setattr(opts, attr, v)
    for kv in args.sbatch:
        if "=" not in kv:
            raise SystemExit(f"--sbatch {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        opts.extra[k.strip().lstrip("-")] = v
    if args.setup:
        opts.setup = tuple(opts.setup) + tuple(args.setup)
    return opts


def _select(trials, states, args):
    if args.only:
        pat = args.only if any(c in args.only for c in "*?[") else f"*{args.only}*"
        trials = [t for t in trials if fnmatch.fnmatchcase(t.name, pat)]
    if args.retry_failed:
        return [t for t in trials if states[t.name] == "failed"]
    return [t for t in trials if states[t.name] not in runner.TERMINAL]


def _print_table(trials, sweep_dir):
    width = max([len(t.name) for t in trials] + [5])
    print(f"{'trial':<{width}}  state      attempts")
    for t in trials:
        st = runner.read_status(os.path.join(sweep_dir, t.name))
        err = (st.get("error") or "").strip().splitlines()
        extra = f"  {err[-1][:100]}" if st["state"] == "failed" and err else ""
        print(f"{t.name:<{width}}  {st['state']:<9}  {st.get('attempts', 0)}{extra}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.collect and not args.sweep:
        summary = collect_lib.collect(args.out)
        print(f"wrote {args.out}/results.csv, results.md, trials.csv "
              f"({', '.join(f'{n} {s}' for s, n in sorted(summary['states'].items()))})")
        return 0
    if not args.sweep:
        raise SystemExit("--sweep=configs/sweeps/NAME.py[:preset] is required (or --collect)")
    sweep, sweep_file = load_sweep(args.sweep)
    config_path = sweep.resolve_config(sweep_file)
    sweep_dir = os.path.abspath(os.path.join(args.out, sweep.name))
    trials = sweep.trials()
    if args.collect:
        summary = collect_lib.collect(sweep_dir)
        print(f"wrote {sweep_dir}/results.csv, results.md, trials.csv")
        return 0
    os.makedirs(sweep_dir, exist_ok=True)
    runner.write_json(os.path.join(sweep_dir, "sweep.json"),
                      sweep.meta(config_path, args.sweep))
    states = {t.name: runner.read_status(os.path.join(sweep_dir, t.name))["state"]
              for t in trials}
    todo = _select(trials, states, args)
    n_done = sum(s == "done" for s in states.values())
    print(f"sweep {sweep.name}: {len(trials)} trials ({n_done} done, "
          f"{sum(s == 'failed' for s in states.values())} failed); running {len(todo)} "
          f"({args.backend}) in {sweep_dir}")
    if args.dry_run:
        _print_table(trials, sweep_dir)
        for t in todo:
            print("would run:", " ".join(runner.command(
                runner.trial_spec(t, config_path, sweep_dir))[1:]))
        return 0
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if args.mem_fraction is None else {
        "XLA_PYTHON_CLIENT_MEM_FRACTION": str(args.mem_fraction)}
    specs = [runner.trial_spec(t, config_path, sweep_dir, env=env) for t in todo]
    if args.retry_failed:  # a fresh start of the failed ones' status (their logs are kept)
        for s in specs:
            st = runner.read_status(s["workdir"])
            runner.write_json(os.path.join(s["workdir"], runner.STATUS_FILE),
                              {**st, "state": "pending", "previous_error": st.get("error"),
                               "error": None})
    if specs and args.backend == "local":
        backends.run_local(specs, parallel=args.parallel,
                           gpus_per_trial=args.gpus_per_trial or 0)
    elif specs:
        jobs = backends.run_slurm(specs, os.path.join(sweep_dir, ".submitit"),
                                  _slurm_options(sweep, args), name=sweep.name)
        job_ids = [j.job_id for j in jobs]
        runner.write_json(os.path.join(sweep_dir, "slurm_jobs.json"),
                          dict(zip([s["name"] for s in specs], job_ids)))
        print(f"submitted {len(jobs)} trials as SLURM job array {job_ids[0].split('_')[0]}")
        if args.no_wait:
            return 0
        states = backends.wait_for_trials(specs, job_ids)
        lost = [n for n, st in states.items() if st not in runner.TERMINAL]
        if lost:
            print(f"{len(lost)} trials left SLURM's queue without finishing (cancelled, node "
                  f"failure, or the job could not start): their SLURM logs are in "
                  f"{sweep_dir}/.submitit/; run the same command again to resume them")
    _print_table(trials, sweep_dir)
    summary = collect_lib.collect(sweep_dir)
    print(f"wrote {sweep_dir}/results.csv, results.md")
    bad = summary["states"].get("failed", 0)
    unfinished = len(trials) - summary["states"].get("done", 0) - bad
    return 1 if bad or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
