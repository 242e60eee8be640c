"""report.md: each section of the report's content (sections.py) rendered as Markdown.

Knows the report's words and number formats: the metrics table (mean (std) cells, the broken-text
share), config settings written as YAML, figure links relative to the run directory. `table` also
serves `prefalign compare`. report.html is this Markdown rendered as one page (html.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from prefalign.report.comparison import Comparison
from prefalign.report.evidence import EvidenceSection, judge_names
from prefalign.report.sections import (
    Examples,
    FrontierSection,
    Intro,
    ModelsSection,
    OnlineSection,
    PairsSection,
    ReportContent,
    TrainingRow,
)
from prefalign.report.tables import UNREADABLE_SHARE


def _cell(mean: float, sd: float) -> str:
    return f"{mean:.3f} ({sd:.3f})" if np.isfinite(sd) else f"{mean:.3f}"


def scored_columns(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, heading) of the reward terms' means (reward.terms), the judges' mean rewards and the fluency
    score, where the rows have them."""
    terms = [c for c in rows.columns if c.startswith("reward_") and c.endswith("_mean") and c != "reward_mean"]
    out = [(c, f"term {c[len('reward_') : -len('_mean')]}") for c in terms]
    out += [(f"judge_{j}_reward_mean", f"judge {j}") for j in judge_names(rows.columns)]
    return out + ([("fluency", "fluency")] if "fluency" in rows.columns else [])


def table(rows: pd.DataFrame, label) -> str:
    """Markdown table of the main metrics (and the judges' and fluency scores, when measured);
    `label(row)` names each line."""
    has_kl, scored = "kl_seq" in rows.columns, scored_columns(rows)
    head = "| model | reward | diversity | distinct-2 | positive rate |" + (
        " KL (seq) | KL / token |" if has_kl else ""
    )
    head += "".join(f" {name} |" for _, name in scored)
    lines = [head + " mean length | broken texts |", "|---" * (head.count("|") - 1 + 2) + "|"]
    for _, r in rows.iterrows():
        kl_token = f"{r.kl_token:.4f}" if np.isfinite(r.kl_token) else "n/a"  # best-of-N: no per-token value
        kl = f" {_cell(r.kl_seq, r.kl_seq_sd)} | {kl_token} |" if has_kl else ""
        extra = "".join(f" {_cell(r[c], r.get(f'{c}_sd', np.nan))} |" for c, _ in scored)
        broken = r.get("broken_share", float("nan"))  # absent from evaluations older than metrics-v3
        lines.append(
            f"| {label(r)} | {_cell(r.reward_mean, r.reward_mean_sd)} | {_cell(r.diversity, r.diversity_sd)} | "
            f"{r.distinct_2:.3f} | {_cell(r.positive_rate, r.positive_rate_sd)} |{kl}{extra} {r.mean_tokens:.1f} | "
            f"{f'{100 * broken:.1f}%' if np.isfinite(broken) else 'n/a'} |"
        )
    return "\n".join(lines)


def settings_text(settings: dict) -> str:
    """Config settings as the YAML a user writes: `logging_steps: 5` (validation stores 5.0); empty ones left out."""

    def value(v):
        return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 else v

    return ", ".join(f"`{k}: {value(v)}`" for k, v in settings.items() if v is not None)


def image(figure) -> list[str]:
    return [f"![{figure.alt}]({figure.path})", ""]


def names(models) -> str:
    return ", ".join(f"`{m}`" for m in models)


def intro(s: Intro) -> list[str]:
    kl = (
        "; KL is KL(policy || original) in nats per text (and per generated token), estimated on the run's "
        "own top-k / top-p samples from both models' full log-probs (biased; see metrics.kl_estimate)"
    )
    if s.repeats != 1:
        cells = (
            f". Every model was trained with {s.repeats} training seeds; cells: mean over the seeds (std across the "
            f"seeds), each seed's value the mean of {s.runs} runs of {s.samples} samples; the "
            "std across runs is in summary.csv (`*_run_sd`), each seed's numbers in results.csv."
        )
    elif s.runs == 1:
        cells = f". Cells: one evaluation run of {s.samples} samples (no std: set evaluate.runs above 1 for one)."
    else:
        cells = f". Cells: mean (std across {s.runs} runs of {s.samples} samples)."
    return [
        f"# prefalign report: {s.name}",
        "",
        f"Generated {s.generated} from `{s.root}`. Rewards are "
        + (
            "the weighted sum of the reward terms listed under Models (`term` columns: each term's mean value)"
            if s.composed
            else "the classifier's " + ("single logit" if s.single_logit else f"`{s.positive_label}` logit")
        )
        + "; diversity is the entropy (nats) of the unigram distribution of "
        "policy token ids over each run's texts; distinct-2 is the share of distinct token bigrams; positive rate "
        "is the share of texts the classifier labels positive" + (kl if s.kl else "") + cells,
        "",
    ]


def models(s: ModelsSection) -> list[str]:
    prompts = "BOS token only" if s.prompts is None else settings_text(s.prompts)
    return [
        "## Models",
        "",
        f"- policy: `{s.policy}`" + (f" (held-out perplexity {s.perplexity:.1f})" if s.perplexity is not None else ""),
        f"- reward model: `{s.reward_model}`"
        + (f" (held-out accuracy {s.accuracy:.3f})" if s.accuracy is not None else ""),
        f"- training recipe: `{s.recipe}`" + (f", overrides {settings_text(s.overrides)}" if s.overrides else ""),
        f"- prompts: {prompts}",
        f"- pair samples: {s.pair_samples} texts, mean reward {s.pair_reward_mean:.3f}",
        "",
    ] + (terms(s) if s.terms else [])


def terms(s: ModelsSection) -> list[str]:
    """The reward terms: weights, settings, and each term's scale on the original's samples (to set weights by)."""
    how = "each term standardised on the original's samples, then weighted" if s.normalize else "weighted values"
    lines = [
        f"The reward is the sum of these terms ({how}; column `reward_<term>` of samples.parquet and of every "
        "evaluation run holds a term's value):",
        "",
        "| term | type | weight | settings | mean on the original's samples | std |",
        "|---|---|---|---|---|---|",
    ]
    for t in s.terms:
        lines.append(
            f"| {t['name']} | {t['type']} | {t['weight']:g} | {settings_text(t['settings']) or '-'} | "
            f"{t['mean']:.3f} | {t['std']:.3f} |"
        )
    return lines + [""]


def pairs(s: PairsSection) -> list[str]:
    rule, meta = ", ".join(f"{k} {v}" for k, v in s.rule.items()), s.meta
    nan = float("nan")
    return [
        f"## Pairs: {s.strategy}" + (f" ({rule})" if rule else ""),
        "",
        f"{meta.get('pairs', '?')} pairs, mean reward gap {meta.get('mean_gap', nan):.3f} "
        f"(chosen {meta.get('chosen_reward_mean', nan):.3f} +- {meta.get('chosen_reward_std', nan):.3f}, "
        f"rejected {meta.get('rejected_reward_mean', nan):.3f}).",
        "",
        table(s.rows, lambda r: "original model" if r.method == "original" else f"{r.loss} {r.beta:g} ({r.recipe})"),
        "",
        *image(s.rewards),
        *image(s.curves),
    ]


def online(s: OnlineSection) -> list[str]:
    return [
        "## On-policy rounds and online RL",
        "",
        "Iterative DPO: each round samples from the previous round's model, scores, pairs and trains "
        f"(`{s.iterative_strategy}` pairs, reference fixed to the original); round 1 is the grid model with "
        "the chain's settings. RLOO: TRL's RLOOTrainer with the classifier's positive logit as reward, "
        f"{s.steps} steps.",
        "",
        table(s.rows, lambda r: s.labels[r.model]),
        "",
        *[line for figure in s.curves for line in image(figure)],
    ]


def comparison(c: Comparison, spread: str) -> list[str]:
    """Which challengers beat every baseline model; when none does, the closest and its shortfall."""
    group = f"`{c.baseline}`-recipe" if c.is_recipe else f"`{c.baseline}`"
    lines = [
        f"Models beating every {group} model on reward and diversity at once, with lower KL, each by more "
        f"than {spread}: " + (names(c.better) if c.better else "none") + ".",
        "",
    ]
    if c.closest:
        worst = c.closest.worst.items()
        lines += [
            f"Closest: `{c.closest.model}`, which beats {c.closest.wins} of the {c.models}. Its smallest lead over "
            f"them on each axis, net of {spread} (negative: short): "
            + "; ".join(f"{axis} {lead:+.3f} (against `{model}`)" for axis, (lead, model) in worst)
            + ".",
            "",
        ]
    return lines


def frontier(s: FrontierSection) -> list[str]:
    lines = ["## Frontier", "", *[line for figure in s.figures for line in image(figure)]]
    lines += [
        f"Pareto-optimal models (no other model has higher-or-equal reward and diversity"
        f"{' and lower-or-equal KL' if s.kl else ''}, better in one; on run means):",
        "",
        table(s.front, lambda r: r.model) if len(s.front) else "none: every model is left out (below).",
        "",
    ]
    if s.unreadable:
        lines += [
            f"Left out of the front and of the comparisons below: more than {UNREADABLE_SHARE:.0%} of their texts "
            "hold undecodable bytes (U+FFFD), so their diversity is not a diversity of text: "
            + names(s.unreadable)
            + ".",
            "",
        ]
    spread = "the std across training seeds" if s.repeats > 1 else "the run-to-run std"
    lines += comparison(s.comparison, spread) if s.comparison else []
    lines += [
        f"Who beats whom (higher reward and diversity{', lower KL' if s.kl else ''}, each by more than {spread}):"
    ]
    lines += [""] + (
        [f"- `{m}` beats " + names(beaten) for m, beaten in s.wins.items()] or ["- no model beats another"]
    )
    return lines + [""]


def judged_table(rows: pd.DataFrame) -> str:
    """Each model's reward and positive rate beside each judge's, and its fluency."""
    judges = judge_names(rows.columns)
    head = "| model | reward | positive rate |" + "".join(f" judge {j} | judge {j} positive rate |" for j in judges)
    head += " fluency | not fluent |" if "fluency" in rows.columns else ""
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for _, r in rows.iterrows():
        cells = [_cell(r.reward_mean, r.reward_mean_sd), f"{r.positive_rate:.3f}"]
        for j in judges:
            c = f"judge_{j}_"
            cells += [_cell(r[c + "reward_mean"], r[c + "reward_mean_sd"]), f"{r[c + 'positive_rate']:.3f}"]
        if "fluency" in rows.columns:
            cells += [_cell(r.fluency, r.fluency_sd), f"{100 * r.fluency_low_share:.1f}%"]
        lines.append(f"| {r.model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The "above the curve" cell: None is a negative KL estimate (biased: see metrics.kl_estimate).
ABOVE = {True: "yes", False: "no", None: "n/a: KL estimate < 0"}


def evidence(s: EvidenceSection) -> list[str]:
    """The best-of-N ladder, each trained model against its curve, the judges' scores."""
    lines = ["## Evidence: best-of-N, judges, fluency", ""]
    if len(s.ladder):
        lines += [
            "Best-of-N policies of the original: each evaluation run draws N texts per chosen text and keeps the "
            "highest-reward one (draw 0 is the original's own evaluation run). Their KL is the analytic "
            "log N - (N-1)/N nats, an upper bound on the true KL (no sample estimate exists for it).",
            "",
            table(s.ladder, lambda r: r.model),
            "",
        ]
    if len(s.versus):
        lines += [
            "Each trained model against the best-of-N curve at its KL (linear in log(1 + KL) between the ladder's "
            "points; beyond the ladder, its largest N). Above it: a gain a reranker of the original's samples "
            "would not match at that KL. `beaten by`: the smallest N scoring at least as high at no more KL.",
            "",
            "| model | KL (seq) | reward | best-of-N at that KL | margin | above the curve | beaten by |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.model} | {r.kl_seq:.3f} | {_cell(r.reward_mean, r.reward_mean_sd)} | {r.curve_reward:.3f} | "
            f"{r.margin:+.3f} | {ABOVE[r.above]} | {r.beaten_by or '-'} |"
            for _, r in s.versus.iterrows()
        ]
        lines += [""]
    if len(s.judged):
        what = [f"the judge `{j}`" for j in s.judges] + (["the fluency model"] if s.fluency else [])
        lines += [
            f"Scored by {' and '.join(what)}, which no model was trained on: a reward gain the judges do not "
            "share, or one that costs fluency (mean log-probability per token under a language model that is "
            "not the policy; `not fluent`: the share of texts below its threshold), is the classifier being gamed.",
            "",
            judged_table(s.judged),
            "",
        ]
    return lines + [line for figure in s.figures for line in image(figure)]


def training(rows: tuple[TrainingRow, ...]) -> list[str]:
    lines = ["## Training", "", "| model | pairs / steps | seconds | pairs/s | final loss |", "|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.amount} | {r.seconds} | {r.pairs_per_second} | {r.final_loss:.4f} |" for r in rows]
    return lines + [""]


def examples(shown: tuple[Examples, ...]) -> list[str]:
    lines = ["## Example texts (evaluation run 0: highest, median and lowest reward)", ""]
    for e in shown:
        lines += [f"**{e.model}**", ""] + [f"- ({r:+.2f}) {t.strip()!r}" for r, t in e.picks] + [""]
    return lines + ["Per-run numbers: [results.csv](results.csv).", ""]


def render_markdown(content: ReportContent) -> str:
    """report.md: every section in order."""
    lines = intro(content.intro) + models(content.models)
    lines += [line for section in content.pairs for line in pairs(section)]
    lines += online(content.online) if content.online else []
    lines += frontier(content.frontier) + (evidence(content.evidence) if content.evidence else [])
    lines += training(content.training) + examples(content.examples)
    return "\n".join(lines)
