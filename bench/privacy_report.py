"""The report of bench.privacy (markdown and PNG), rendered from its JSON alone, so
`python -m bench.privacy --from-json FILE` rewrites both without training anything."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.privacy_plot import plot
from bench.report_parts import failed, ok, plural, ppl
from bench.worldlm_report import group_line, training_line

DIVERGED = 1.10  # a curve "rose" when its final value is this much above its best round's


def render(result: dict[str, Any], out: Path) -> str:
    """Write privacy.md and privacy.png to `out`; return the markdown."""
    text = "\n".join(markdown(result))
    (out / "privacy.md").write_text(text)
    plot(result, out / "privacy.png")
    return text


def big(x: float) -> str:
    """A perplexity or a ratio: one decimal, or three significant digits once it is large."""
    return f"{x:.3g}" if x >= 1e5 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def num(x: float | None, spec: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(res: dict[str, Any]) -> list[str]:
    a = res["args"]
    took = f"{res['minutes']:.1f} min" if "minutes" in res else "unfinished"
    est = ", ".join(f"{k} {v / 60:.0f} min" for k, v in res["estimate_s"].items())
    lines = [
        "# Differential privacy: accuracy against ε, WorldLM under DP, and the accountant"
        + (" — smoke run (--quick: tiny models, a few examples; the numbers mean nothing)" if res["quick"] else ""),
        "",
        f"`{res['command']}`",
        "",
        f"Machine: {res['machine']}. Took {took}" + ("." if res["quick"] else f" (estimated {est} from bench.worldlm's probe rate)."),
        "",
        "Every federation is real: coordinators serve gRPC on 127.0.0.1, each with its own SQLite database, and "
        "workers run the worker's code in threads of one process (bench/worldlm_run.py). All arms of a study use "
        "the same worker data, seeds and local steps (every worker trains exactly max_steps AdamW steps a round). "
        "DP is the coordinator's user-level DP-FedAvg (docs/methods.md section 6): each update clipped to L2 norm "
        "S, equal weights, N(0, (z·S)²) added to every trained coordinate of the sum, the sum divided by "
        f"m = q · members; q = {a['sampling_rate']:g}, δ = {a['delta']:g}; ε from the coordinator's own rounds rows "
        "(dp_epsilon, RDP accountant). z for a budget is the smallest noise multiplier whose planned rounds fit "
        "it (strata.privacy_cli.smallest_z), and the budget is the federation's dp_target_epsilon. The noise "
        "generator is seeded from the operating system, so DP arms differ from run to run; one seed, no "
        "repetitions. Divergence measurement is off in every arm (DP turns it off). DP arms run with "
        "min_updates 1 (DP refuses a quorum)" + ("; every member still takes part in every round (q = 1)." if a["sampling_rate"] >= 1
        else f"; each member takes part in a round with probability {a['sampling_rate']:g}."),
        "",
    ]  # fmt: skip
    if "accuracy" in res:
        lines += section_accuracy(res["accuracy"], a)
    if "worldlm" in res:
        lines += section_worldlm(res["worldlm"], a)
    if "accountant" in res:
        lines += section_accountant(res["accountant"])
    return [*lines, "## What was cut to fit the budget", "", *cuts(res), "", "![curves](privacy.png)", ""]


# ---------------------------------------------------------------------------------------------- study 1


def trains(exp: dict[str, Any], scope: str) -> str:
    sc = exp["scopes"][scope]
    if scope == "full":
        return f"every block ({sc['elements']:,} elements)"
    return f"round 1 every block, then {' + '.join(sc['blocks'])} ({sc['elements']:,} elements)"


def section_accuracy(exp: dict[str, Any], a: dict[str, Any]) -> list[str]:
    arms = ok(exp["arms"])
    n = exp["groups"]["sst2"]["test_rows"]
    maj = exp["majority"]
    se = math.sqrt(0.25 / n)
    blocks, sizes = exp["blocks"], exp["blocks"]["sizes"]
    lines = [
        f"## 1. Accuracy against ε: SST-2, {exp['model']}, {plural(a['a_workers'], 'worker')}",
        "",
        f"Model {exp['model']} ({exp['parameters'] or '?'} parameters, a fresh 2-class head, seeded). Dirichlet "
        f"α = {a['alpha']:g} over labels. " + training_line(exp["settings"], a["rounds_a"]) + f" Test: the first "
        f"{n} rows of the GLUE dev set (majority class {maj:.4f}; one standard error of an accuracy near 0.5 is "
        f"{se:.3f}).",
        "",
        *group_line(exp),
        "",
        f"DP arms: m = {a['sampling_rate']:g} × {a['a_workers']} = {a['sampling_rate'] * a['a_workers']:g} expected "
        "participants; z per budget: " + ", ".join(f"ε {float(e):g} → z {z:.3f}" for e, z in exp["z"].items())
        + ". Adaptive clipping (target quantile 0.5, η_C 0.2, the count's noise by default) starts from the "
        "fixed arm's S and spends part of z on the noised count, so its update noise z_Δ is larger. Clip S "
        f"({exp['clip_source']}): " + ", ".join(f"{k} {num(v, '.4g')}" for k, v in exp["clip"].items() if v is not None)
        + ". (Taking S from non-private norms spares the DP arms a badly chosen clip; a real deployment must pick "
        "S without looking at its members' updates, or spend budget on it.)",
        "",
        "What each arm trains (the `blocks` each round row recorded): **full** trains every block every round"
        + (f"; **head+{blocks['smallest']}** uses targeting (policy random, a byte budget that only the "
           f"{blocks['smallest']} block fits, no refresh, no probe after round 1). Targeting cannot train the head "
           "alone (every policy but full trains at least one block besides it), and pre-selected scheduling trains "
           "every block in round 1 (the probe), so round 1 of these arms trains, clips and noises the whole model."
           if a["targeted"] else "."),
        "",
        *recorded_blocks(arms),
        "| arm | trains | budget ε | z (z_Δ) | S, round 1 | ε spent | final acc | best acc | final loss | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in arms.items():
        dp = r.get("dp")
        acc = r["per_round"]["accuracy"]
        spent = r["rounds"][-1]["epsilon"]
        zs = f"{dp['z']:.3f}" + (f" ({dp['z_update']:.3f})" if r["adaptive"] else "") if dp else "–"
        lines.append(f"| {name} | {trains(exp, r['scope'])} | {num(r['epsilon'], 'g')} | {zs} | "
                     f"{num(r['rounds'][0]['clip'], '.4g')} | {num(spent, '.3f')} | {acc[-1]:.4f} | {max(acc):.4f} | "
                     f"{r['per_round']['loss'][-1]:.4f} | {r['seconds']:.0f} |")  # fmt: skip
    lines += ["", *failed(exp["arms"], "arm"), *verdict_accuracy(arms, maj, se), ""]
    if not arms:
        return lines
    rounds = len(next(iter(arms.values()))["per_round"]["accuracy"])
    lines += [
        "Test accuracy per round:",
        "",
        "| round | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for t in range(rounds):
        lines.append(
            f"| {t + 1} | " + " | ".join(num(r["per_round"]["accuracy"][t]) for r in arms.values()) + " |"
        )
    private = {k: r for k, r in arms.items() if r.get("dp")}
    if private:
        lines += ["", "Clip S used in each round and ε spent after it (adaptive arms: S follows the noised "
                  "count of unclipped updates; fixed arms keep theirs):", "",
                  "| round | " + " | ".join(f"{k}: S | ε" for k in private) + " |", "|---|" + "---|---|" * len(private)]  # fmt: skip
        for t in range(rounds):
            cells = [
                f"{num(r['rounds'][t]['clip'], '.4g')} | {num(r['rounds'][t]['epsilon'], '.3f')}"
                for r in private.values()
            ]
            lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
        lines += ["", *noise_table(exp, private, a, sizes)]
    return [*lines, ""]


def recorded_blocks(arms: dict[str, Any]) -> list[str]:
    out = []
    for name, r in arms.items():
        if r["scope"] == "targeted":
            per = ["every block" if not x["blocks"] else "+".join(x["blocks"]) for x in r["rounds"]]
            out.append(f"- {name}: " + ", ".join(f"round {i + 1}: {b}" for i, b in enumerate(per)) + ".")
    return [*out, ""] if out else []


def verdict_accuracy(arms: dict[str, Any], maj: float, se: float) -> list[str]:
    out = []
    for scope in ("full", "targeted"):
        base = next((r for r in arms.values() if r["scope"] == scope and not r.get("dp")), None)
        if base is None:
            continue
        b = base["per_round"]["accuracy"][-1]
        for name, r in arms.items():
            if r["scope"] != scope or not r.get("dp"):
                continue
            acc = r["per_round"]["accuracy"][-1]
            line = f"- **{name}**: {acc:.4f}, {100 * (acc - b):+.1f} points against no DP ({b:.4f}); "
            if b <= maj + 2 * se:
                line += f"the no-DP arm itself is not above the majority-class rate {maj:.4f} (+2 SE): nothing learned to compare against."
            elif acc <= maj + 2 * se:
                line += f"at or below the majority-class rate {maj:.4f} (+2 SE): DP destroyed what the model learned."
            elif b > maj:
                line += f"keeps {100 * (acc - maj) / (b - maj):.0f} % of the no-DP arm's gain over the majority class."
            out.append(line)
    return ["Against the no-DP arm of the same scope (final accuracy):", "", *out, ""] if out else []


def noise_table(
    exp: dict[str, Any], private: dict[str, Any], a: dict[str, Any], sizes: dict[str, int]
) -> list[str]:
    """Why: the noise on the mean against the largest possible signal, from each arm's settings."""
    lines = [
        "Noise against signal, from the settings (not measured): the mean of m clipped updates has norm at most "
        "S, the noise added to it has per-coordinate standard deviation σ = z_Δ·S/m and expected norm about "
        "σ·√d over the d coordinates a round trains, so E‖noise‖/S = z_Δ·√d/m; near or above 1, one round's "
        "noise is as large as the largest possible step. 'members for 1' is the m at which it would be 1.",
        "",
        "| arm | d (after round 1) | m | z_Δ | S | σ per coordinate | E‖noise‖ / S | members for 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in private.items():
        dp, d = r["dp"], exp["scopes"][r["scope"]]["elements"]
        lines.append(f"| {name} | {d:,} | {dp['m']:g} | {dp['z_update']:.3f} | {dp['clip']:.4g} | "
                     f"{dp['z_update'] * dp['clip'] / dp['m']:.3g} | {dp['z_update'] * math.sqrt(d) / dp['m']:.3g} | "
                     f"{dp['z_update'] * math.sqrt(d):,.0f} |")  # fmt: skip
    head = sum(sizes[h] for h in exp["blocks"]["head"])
    loose = max(exp["z"], key=float)
    z, m = exp["z"][loose], a["sampling_rate"] * a["a_workers"]
    return [*lines, "", f"For reference, the task head alone ({head:,} elements; not something targeting can train "
            f"by itself) at ε {float(loose):g} (z {z:.3f}) would have E‖noise‖/S = {z * math.sqrt(head) / m:.3g} with "
            f"{m:g} members: the regime where user-level DP with this few members is workable.", ""]  # fmt: skip


# ---------------------------------------------------------------------------------------------- study 2


def eps_cell(r: dict[str, Any]) -> str:
    parts = []
    for tier, per in sorted(r.get("epsilon", {}).items()):
        last = {k: v[-1] for k, v in per.items()}
        vals = sorted({round(x, 3) for x in last.values() if x is not None})
        parts.append(f"tier {tier}: " + (f"{vals[0]:.3f}" + (" each" if len(last) > 1 else "") if len(vals) == 1
                     else ", ".join(f"{k} {num(v, '.3f')}" for k, v in last.items())))  # fmt: skip
    return "; ".join(parts) or "–"


def trend(curve: list[float]) -> tuple[str, bool]:
    finite = [i for i, x in enumerate(curve) if math.isfinite(x)]
    if not finite:
        return "overflowed from round 1", True
    if not math.isfinite(curve[-1]):
        return f"overflowed after round {finite[-1] + 1}", True
    best = min(range(len(curve)), key=lambda i: curve[i])
    if curve[-1] > DIVERGED * curve[best]:
        return f"rose to {big(curve[-1] / curve[best])}× its best (round {best + 1})", True
    return "ends at or near its best", False


def section_worldlm(exp: dict[str, Any], a: dict[str, Any]) -> list[str]:
    arms = ok(exp["arms"])
    groups = list(exp["groups"])
    size = exp["gpt2"]
    lines = [
        "## 2. WorldLM under DP: a tree of federations against a flat federation",
        "",
        f"bench.worldlm's experiment B: a GPT-2 built from a config ({size['layers']} layers, hidden {size['hidden']}, "
        f"{size['heads']} heads, vocabulary {exp['vocab']}: {exp['parameters'] or '?'} parameters) trained from scratch; "
        "sources news (ag_news_subset), forum (20newsgroups, headers stripped) and pt (sst2_pt), "
        f"{plural(a['b_workers'], 'worker')} each, Dirichlet α = {a['alpha']:g} over each source's labels. "
        + training_line(exp["settings"], a["rounds_b"]) + f" Key blocks {a['lm_local_blocks']}, β = {a['beta']:g}, "
        f"τ = {a['tau']:g}. A model that guesses uniformly over the vocabulary has perplexity {exp['vocab']}.",
        "",
        *group_line(exp),
        "",
        f"DP: budget ε = {exp['epsilon']:g} at every private coordinator, z = {exp['z']:.3f}, q = {exp['q']:g}, "
        f"δ = {exp['delta']:g}, fixed clip. **DP(workers)**: the unit is one worker, in every arm: flat runs DP over "
        "all its workers at its one coordinator, a tree runs DP in each sub-federation over its own workers with "
        "the same z, S, q and rounds (a sub-federation runs one inner round per parent round), and its parent, "
        "which only sees the sub-federations' released models, is not private (so it may use attention). "
        "**DP(parent)**: the parent runs DP over its member federations: the unit is a whole sub-federation, "
        "a guarantee about a single worker only through covering its whole sub-federation; the sub-federations "
        "are not private. S: " + ", ".join(f"{k} {num(v, '.4g')} ({exp['clip_source'][k]})" for k, v in exp["clip"].items() if v is not None) + ".",
        "",
        "Perplexity on each source's held-out text with the model that source uses (flat: the global model; a tree: "
        "its sub-federation's model, as its coordinator evaluated it), after the last round; ε spent per tier "
        "(tier 0: the top coordinator, tier 1: the sub-federations) after the last round. σ is the noise's "
        "standard deviation per coordinate of a private coordinator's released step: with the same z and S, a "
        "sub-federation divides by its own, smaller, m, so each sub-federation model carries more noise than "
        "the flat model for the same guarantee per worker.",
        "",
        "| arm | DP unit | m | S | σ = z·S/m | ε spent | " + " | ".join(groups) + " | world model (tree parent) | seconds |",
        "|---|---|---|---|---|---|" + "---|" * len(groups) + "---|---|",
    ]  # fmt: skip
    for name, r in arms.items():
        dp = r.get("dp") or {}
        sigma = f"{dp['z'] * dp['clip'] / dp['m']:.3g}" if dp else "–"
        world = " / ".join(f"{big(ppl(r['world'][g]['loss']))}" for g in groups) if "world" in r else "–"
        lines.append(f"| {name} | {dp.get('unit', '–')} | {num(dp.get('m'), 'g')} | {num(dp.get('clip'), '.4g')} | {sigma} | {eps_cell(r)} | "
                     + " | ".join(big(ppl(r['per_round'][g]['loss'][-1])) for g in groups) + f" | {world} | {r['seconds']:.0f} |")  # fmt: skip
    lines += ["", *failed(exp["arms"], "arm")]
    lines += verdict_worldlm(arms, groups)
    if arms:
        lines += ["Perplexity per round (each source's model):", "",
                  "| round | " + " | ".join(f"{n} / {g}" for n in arms for g in groups) + " |",
                  "|---|" + "---|" * (len(arms) * len(groups))]  # fmt: skip
        for t in range(len(next(iter(arms.values()))["per_round"][groups[0]]["loss"])):
            lines.append(
                f"| {t + 1} | "
                + " | ".join(big(ppl(r["per_round"][g]["loss"][t])) for r in arms.values() for g in groups)
                + " |"
            )
    return [*lines, ""]


def verdict_worldlm(arms: dict[str, Any], groups: list[str]) -> list[str]:
    final = {n: {g: ppl(r["per_round"][g]["loss"][-1]) for g in groups} for n, r in arms.items()}
    out = [
        "What DP did to each arm (final perplexity against the same arm without DP, and the curve's shape):",
        "",
    ]
    for name, r in arms.items():
        if r.get("dp_at") is None:
            continue
        base = name.split(" + DP")[0]
        parts = []
        for g in groups:
            shape, _ = trend([ppl(x) for x in r["per_round"][g]["loss"]])
            x, b = final[name][g], final.get(base, {}).get(g, math.nan)
            vs = f"{big(x / b)}× no DP, " if math.isfinite(x) and math.isfinite(b) else ""
            parts.append(f"{g} {big(final[name][g])} ({vs}{shape})")
        out.append(f"- **{name}**: " + "; ".join(parts) + ".")
    flat = "flat + DP(workers)"
    trees = [n for n in arms if n.startswith("tree") and n.endswith("+ DP(workers)")]
    if flat not in arms or not trees:
        return [
            *out,
            "",
            "**WorldLM's claim cannot be judged**: the flat or the tree arm under DP(workers) did not finish.",
            "",
        ]
    rose_flat = any(trend([ppl(x) for x in arms[flat]["per_round"][g]["loss"]])[1] for g in groups)
    out.append("")
    private = [n for n in arms if arms[n].get("dp_at") is not None]
    if all(not math.isfinite(final[n][g]) for n in private for g in groups):
        return [
            *out,
            "**WorldLM's claim cannot be judged at this noise level**: every private arm, flat and tree, "
            "diverged (its perplexity overflowed), so neither stayed stable. The noise per coordinate of each "
            "released step (σ above) is far larger than the weights it is added to; study 1's noise table "
            "shows how many members it takes before user-level DP trains at all.",
            "",
        ]
    for t in trees:
        ratios = {g: final[t][g] / final[flat][g] for g in groups}
        rose = any(trend([ppl(x) for x in arms[t]["per_round"][g]["loss"]])[1] for g in groups)
        better = all(x < 1 for x in ratios.values())
        ok_claim = better and rose_flat and not rose
        out.append(f"- {t} / {flat}: " + ", ".join(f"{g} {big(x)}×" if math.isfinite(x) else f"{g} –" for g, x in ratios.items()) + ". "
                   + ("**WorldLM's claim holds here**: the flat federation's perplexity rose under DP, the tree's did not, and the tree ends lower on every source."
                      if ok_claim else "**WorldLM's claim is not borne out here**: " + (
                          "the tree ends lower on every source, but " if better else "the tree does not end lower on every source; ")
                      + ("the flat federation did not diverge either." if not rose_flat else
                         "the tree's perplexity rose too." if rose else "the flat federation's perplexity rose and the tree's did not.")))  # fmt: skip
    return [*out, ""]


# ---------------------------------------------------------------------------------------------- study 3


def section_accountant(exp: dict[str, Any]) -> list[str]:
    rows = exp["rows"]
    lines = [
        "## 3. The accountant against independent ones",
        "",
        "ε for the same (q, z, rounds, δ) from strata.accountant.epsilon (what the coordinator records: "
        "dp-accounting's RdpAccountant), Opacus's RDPAccountant and PRVAccountant (eps_error "
        f"{exp['prv_eps_error']:g}) and dp-accounting's PLDAccountant (value discretisation {exp['pld_interval']:g}). "
        "RDP accountants give an upper bound through the RDP-to-(ε, δ) conversion; PRV and PLD compute the "
        "privacy-loss distribution numerically and are tighter. The first rows are the studies' own settings "
        "(q = 1: the Gaussian mechanism composed, no subsampling); the last two are subsampled references.",
        "",
        "| setting | q | z | rounds | δ | strata | Opacus RDP | Opacus PRV | dp-accounting PLD | strata against Opacus RDP | strata / PLD |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rel = f"{100 * (r['strata'] / r['opacus_rdp'] - 1):+.3f} %" if r.get("opacus_rdp") else "–"
        tight = f"{r['strata'] / r['pld']:.3f}" if r.get("pld") else "–"
        lines.append(f"| {r['label']} | {r['q']:g} | {r['z']:.4g} | {r['rounds']} | {r['delta']:g} | {r['strata']:.4f} | "
                     f"{num(r.get('opacus_rdp'))} | {num(r.get('opacus_prv'))} | {num(r.get('pld'))} | {rel} | {tight} |")  # fmt: skip
    errors = [f"- {r['label']}: {k[:-6]} failed: `{r[k]}`" for r in rows for k in r if k.endswith("_error")]
    rdp = [abs(r["strata"] / r["opacus_rdp"] - 1) for r in rows if r.get("opacus_rdp")]
    ratios = [r["strata"] / x for r in rows for x in (r.get("pld"), r.get("opacus_prv")) if x]
    lines += ["", *errors]
    if rdp:
        lines.append(
            f"strata and Opacus's RDP accountant agree to within {100 * max(rdp):.3g} % (their RDP orders differ)."
        )
    if ratios:
        lines.append(
            f"The numerical accountants (PLD, PRV) give ε between {100 * (1 - 1 / min(ratios)):.0f} % and "
            f"{100 * (1 - 1 / max(ratios)):.0f} % below strata's: "
            + ("strata's recorded ε is never below them, so it stays a valid (somewhat loose) bound."
               if min(ratios) >= 0.999 else "**strata's ε is below a numerical accountant's in some setting**: check it.")
        )  # fmt: skip
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------- rest


def cuts(res: dict[str, Any]) -> list[str]:
    a = res["args"]
    out = []
    if res["quick"]:
        out.append(
            "- --quick: tiny models (a 2-layer BERT, a 1-layer GPT-2), a handful of examples, 2 rounds; a smoke run only."
        )
    if "accuracy" in res:
        out.append(f"- Accuracy: {a['a_examples']} training examples per worker on average (of 67,349), {a['a_steps']} local "
                   f"steps a round for {plural(a['rounds_a'], 'round')}, texts truncated at {a['max_len_a']} tokens; the test "
                   f"set capped at its first {a['a_test']} of 872 rows; {plural(len(a['epsilons']), 'budget')}"
                   + ("; the targeted arms only at the largest." if a["targeted"] else "; no targeted arms (--no-targeted)."))  # fmt: skip
    if "worldlm" in res:
        out.append(f"- WorldLM: {plural(a['b_workers'], 'worker')} per source × {a['b_examples']} texts, {a['b_steps']} steps a "
                   f"round for {plural(a['rounds_b'], 'round')}, texts truncated at {a['max_len_b']} tokens, {a['b_test']} "
                   f"held-out texts per source; GPT-2 {a['gpt2']}; one budget.")  # fmt: skip
    out.append("- One run per arm: no repetitions, and the DP noise is fresh each run.")
    return out
