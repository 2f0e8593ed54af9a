"""
Every detector of a comparison at its own learning rate: each is trained at
every rate of a grid with one seed (the tuning seed) and evaluated on the
validation split; the rate with the best AP is chosen per detector, and the
detector is trained again at that rate with fresh seeds (none of them the
tuning seed). The report gives the tuning grid, the chosen rate, mean ± std
over the fresh seeds and the number of runs that collapsed (AP < 1).

The studies supply how one run is trained and evaluated (``run_one``), so the
same procedure serves the ablation (``tools/ablation.py --lrs``) and the
own-data study (``tools/own_data_study.py --lrs``).
"""

import threading
from typing import Callable, Dict, List, Sequence

from .reports import mean_std

__all__ = ["COLLAPSED_AP", "choose_lrs", "tune_then_seeds", "render", "collapsed", "in_parallel"]

COLLAPSED_AP = (
    1.0  # below this AP a run counts as collapsed (it returns next to no correct detection)
)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def collapsed(runs: Sequence[Dict]) -> int:
    """How many of ``runs`` (each with ``metrics``) ended below :data:`COLLAPSED_AP`."""
    return sum(1 for r in runs if not _ap(r) >= COLLAPSED_AP)


def _ap(run: Dict) -> float:
    """A run's AP; none (NaN: not a single detection) ranks below every number."""
    ap = run["metrics"].get("AP", float("nan"))
    return ap if ap == ap else float("-inf")


def choose_lrs(runs: Sequence[Dict]) -> Dict[str, float]:
    """
    Per model, the rate of its best tuning run (AP on the validation split; a tie goes to the
    smaller rate).
    """
    best = {}
    for r in sorted((r for r in runs if r["phase"] == "tune"), key=lambda r: r["lr"]):
        if r["model"] not in best or _ap(r) > _ap(best[r["model"]]):
            best[r["model"]] = r
    return {m: r["lr"] for m, r in best.items()}


def in_parallel(jobs: int, todo: List, work: Callable) -> None:
    """
    ``work(item)`` for every item, ``jobs`` at a time; the first failure stops handing out new
    items.
    """
    lock, errors, queue = threading.Lock(), [], list(todo)

    def worker():
        while True:
            with lock:
                if not queue or errors:
                    return
                item = queue.pop(0)
            try:
                work(item)
            except Exception as e:  # the runs already started finish; the failure is raised below
                errors.append(e)
                print(f"FAILED: {e}", flush=True)
                return

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} run(s) failed: {errors[0]}")


def tune_then_seeds(
    models: Sequence[str],
    lrs: Sequence[float],
    tune_seed: int,
    seeds: Sequence[int],
    run_one: Callable[[str, float, int], Dict],
    jobs: int = 1,
    on_result: Callable[[List[Dict]], None] = lambda runs: None,
) -> List[Dict]:
    """
    Phase "tune": every model at every rate of ``lrs`` with ``tune_seed``;
    phase "final": every model at its chosen rate with each of ``seeds``.
    ``run_one(model, lr, seed)`` trains (or finds finished) one run and
    returns its validation metrics. ``on_result`` gets all runs so far after
    each one (to write the report). Returns the runs: dicts of model, lr,
    seed, phase, metrics.
    """
    if tune_seed in seeds:
        raise SystemExit(
            f"the tuning seed {tune_seed} is one of the final seeds {list(seeds)}: choose another"
        )
    if len(set(lrs)) < 2:
        raise SystemExit(f"tuning needs at least two learning rates, got {list(lrs)}")
    runs, lock = [], threading.Lock()

    def work(phase):
        def one(item):
            model, lr, seed = item
            metrics = run_one(model, lr, seed)
            with lock:
                runs.append(dict(model=model, lr=lr, seed=seed, phase=phase, metrics=metrics))
                on_result(sorted(runs, key=_order(models)))

        return one

    in_parallel(jobs, [(m, lr, tune_seed) for lr in lrs for m in models], work("tune"))
    chosen = choose_lrs(runs)
    in_parallel(jobs, [(m, chosen[m], s) for s in seeds for m in models], work("final"))
    return sorted(runs, key=_order(models))


def _order(models):
    return lambda r: (
        r["phase"] != "tune",
        models.index(r["model"]) if r["model"] in models else len(models),
        r["lr"],
        r["seed"],
    )


def render(data: Dict) -> str:
    """
    The report of a tuning study: ``data`` holds ``setup`` (a sentence
    ``what``, ``tune_seed``, ``seeds``, ``lrs``, date, device, torch) and ``runs``.
    """
    setup, runs = data["setup"], data["runs"]
    models = list(dict.fromkeys(r["model"] for r in runs))
    chosen = choose_lrs(runs)
    lrs = sorted(setup["lrs"])
    lines = [
        f"{setup['what']} Measured {setup['date']} on {setup['device']}, torch {setup['torch']}. "
        f"A run with AP < {COLLAPSED_AP:g} counts as collapsed.",
        "",
        f"### The learning rate, chosen on the validation split (seed {setup['tune_seed']})",
        "",
        "| model | " + " | ".join(f"AP at lr {lr:g}" for lr in lrs) + " | chosen lr |",
        "|---|" + "---:|" * (len(lrs) + 1),
    ]
    for m in models:
        ap = {r["lr"]: r["metrics"]["AP"] for r in runs if r["model"] == m and r["phase"] == "tune"}
        cells = [("–" if ap[lr] != ap[lr] else f"{ap[lr]:.1f}") if lr in ap else "…" for lr in lrs]
        done = m in chosen and len(ap) == len(lrs)  # chosen once the whole grid has run
        lines.append(
            f"| {m} | " + " | ".join(cells) + (f" | {chosen[m]:g} |" if done else " | … |")
        )
    seeds = ", ".join(map(str, setup["seeds"]))
    lines += [
        "",
        f"### At the chosen learning rate, fresh seeds ({seeds})",
        "",
        "| model | lr | " + " | ".join(METRICS) + " | seeds | collapsed | AP per seed |",
        "|---|---:|" + "---:|" * (len(METRICS) + 3),
    ]
    for m in models:
        final = [r for r in runs if r["model"] == m and r["phase"] == "final"]
        if not final:
            continue
        cells = [mean_std([r["metrics"].get(k, float("nan")) for r in final]) for k in METRICS]
        per_seed = ", ".join(
            f"{r['metrics']['AP']:.1f}" for r in sorted(final, key=lambda r: r["seed"])
        )
        lines.append(
            f"| {m} | {final[0]['lr']:g} | "
            + " | ".join(cells)
            + f" | {len(final)} | {collapsed(final)} | {per_seed} |"
        )
    return "\n".join(lines)
