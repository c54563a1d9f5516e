"""`farm best` and `farm cheapest`: answers read from the store, the fastest (or cheapest) eligible build per
model, target and batch size (farm.results.select, farm.results.cheapest; the rules in docs/verdicts.md)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.markup import escape

from farm.cli.common import (
    BAD_INPUT,
    NOTHING,
    AsJson,
    DataDir,
    DbUrl,
    EligibilityOption,
    FloorOption,
    MarginOption,
    MaxAccuracyDropOption,
    MinCosineOption,
    ObjectiveOption,
    PricesOption,
    SweepOption,
    Wide,
    checked_constraints,
    checked_objective,
    checked_prices,
    fail,
    fitted_console,
    one_line_errors,
    results_store,
)


def best(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    target: Annotated[str | None, typer.Option(help="Only targets whose id contains this text.")] = None,
    objective: ObjectiveOption = "p50",
    min_top1_agreement: FloorOption = 0.99,
    min_cosine: MinCosineOption = None,
    max_accuracy_drop: MaxAccuracyDropOption = None,
    eligibility: EligibilityOption = "evidence",
    confident_margin: MarginOption = 0.1,
    sweep_id: SweepOption = None,
    prices_file: PricesOption = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
    wide: Wide = False,
) -> None:
    """The answer per model, target and batch size: the fastest build that meets the constraints, with a
    verdict on whether it really beats the runner-up; and the builds of targets nothing here can time."""
    from farm.results import queries
    from farm.cli.terminal import answer_json, print_answers
    from farm.results.select import answers, candidates, prices_for, rejected_variants, untimed

    with one_line_errors(as_json):
        chosen = checked_objective(objective)
        constraints = checked_constraints(min_top1_agreement, min_cosine, max_accuracy_drop, eligibility, confident_margin)
        override = checked_prices(prices_file)
        store = results_store(data_dir, db_url)
        with store.session() as s:
            found = candidates(s, model=model, target=target, sweep_id=sweep_id, prices=prices_for(s, sweep_id, override))
            rejected = rejected_variants(s, model=model, sweep_id=sweep_id)
            groups = answers(found, chosen, constraints, rejected)
            build_only = untimed(s, model=model, target=target, sweep_id=sweep_id)
            if not any(a.winner for a in groups) and not build_only:  # one line: the closest build and by how much it missed
                raise fail(*_why_no_answer(s, found, model, target, sweep_id, constraints))
            shown = [answer_json(a, queries.build_provenance(s, a.winner.build_key) if a.winner else None, constraints.confident_margin)
                     for a in groups]
    if as_json:
        print(json.dumps({"objective": chosen, "constraints": asdict(constraints), "rule": constraints.rule_text(),
                          "winners": [g for g in shown if g.get("build_key")], "unanswered": [g for g in shown if not g.get("build_key")],
                          "rejected": [x.to_json(constraints.confident_margin) for x in rejected],
                          "built_not_timed": [asdict(u) | {"short_key": u.short_key} for u in build_only]}, indent=2, default=str))
        return
    console = fitted_console()
    print_answers(console, groups, build_only, chosen, f"Winners by {objective}, {constraints.describe()}", constraints.confident_margin, wide)
    console.print(f"rule: {escape(constraints.rule_text())}", highlight=False, soft_wrap=True)


def cheapest(
    max_p99_ms: Annotated[float, typer.Option("--max-p99-ms", min=0.0, help="The latency bound: p99 of one batch, in ms.")],
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="Only this batch size (by default any batch size the sweep timed).")] = None,
    min_top1_agreement: FloorOption = 0.99,
    min_cosine: MinCosineOption = None,
    max_accuracy_drop: MaxAccuracyDropOption = None,
    eligibility: EligibilityOption = "evidence",
    confident_margin: MarginOption = 0.1,
    sweep_id: SweepOption = None,
    prices_file: PricesOption = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
    wide: Wide = False,
) -> None:
    """The cheapest target for each model under a p99 bound: per target, the build and batch size with the lowest
    cost per million inferences whose p99 is at most --max-p99-ms and that meets the fidelity constraints."""
    from farm.cli.terminal import cheapest_json, print_cheapest
    from farm.results.cheapest import cheapest as cheapest_of
    from farm.results.select import candidates, prices_for

    with one_line_errors(as_json):
        constraints = checked_constraints(min_top1_agreement, min_cosine, max_accuracy_drop, eligibility, confident_margin)
        override = checked_prices(prices_file)
        store = results_store(data_dir, db_url)
        with store.session() as s:
            prices = prices_for(s, sweep_id, override)
            found = candidates(s, model=model, sweep_id=sweep_id, prices=prices)
            if not found:
                raise fail(*_why_no_answer(s, found, model, None, sweep_id, constraints))
        answers = cheapest_of(found, max_p99_ms, constraints, batch)
    if as_json:
        print(json.dumps({"max_p99_ms": max_p99_ms, "constraints": asdict(constraints), "prices": asdict(prices),
                          "models": [cheapest_json(a) for a in answers]}, indent=2, default=str))
    else:
        print_cheapest(fitted_console(), answers, prices, wide)
    if not any(a.answer for a in answers):
        raise typer.Exit(NOTHING)


def _why_no_answer(s: Any, found: list[Any], model: str | None, target: str | None, sweep_id: int | None,
                   constraints: Any) -> tuple[str, int]:
    """Advice that fits: a filter that names nothing (a typo: exit 2), an empty store, or constraints
    nothing meets (exit 3), with the best value reached."""
    from farm.results import queries, rows

    if model is not None and model not in (known := rows.model_names(s)):
        return f"--model {model!r}: no such model in the store (known: {', '.join(known) or 'none'})", BAD_INPUT
    if sweep_id is not None and queries.sweep(s, sweep_id) is None:
        return f"--sweep {sweep_id}: no such sweep", BAD_INPUT
    if target is not None and not rows.target_ids(s, containing=target):
        known = rows.target_ids(s)
        return f"--target {target!r}: no such target in the store (known: {'; '.join(known) or 'none'})", BAD_INPUT
    if not found:
        return "no benchmarked build yet" + (" for these filters" if model or target or sweep_id else "") + ": run `farm sweep SPEC`", NOTHING
    closest = max(found, key=lambda c: (c.evidence.interval[1] if c.evidence else c.agreement_share or 0.0))
    reached = closest.evidence.describe(constraints.confident_margin) if closest.evidence else f"top-1 agreement {closest.agreement_share}"
    missed = "; ".join(constraints.failures(closest))
    return (f"no build meets {constraints.describe()} among {len(found)} benchmarks (closest: {closest.engine}, {reached}: {missed}); "
            "relax the constraints (--min-top1-agreement ...)"), NOTHING
