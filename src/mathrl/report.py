"""The study report: results table (mean ± std over seeds), plots, timing, and the paper's findings re-tested.

``report.md`` references the PNGs next to it; ``report.html`` embeds them (base64), so it is one file that opens
anywhere. Every finding states its rule and the numbers it was decided on.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from pathlib import Path

from mathrl.plots import _pyplot

FINDINGS = {
    "F1": "EI >= PPO >= RCRL on maj@1 (from SFT, sparse reward)",
    "F2": "RL raises maj@1 and pass@K together, while longer SFT trades them",
    "F3": "EI and PPO need a similar, small rollout budget",
    "F4": "dense and ORM rewards add little over sparse",
    "F5": "the pretrained-vs-SFT gap narrows after RL",
    "F6": "pass@K saturates early in RL training",
}


def _mean_std(xs):
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    if not xs:
        return None, None
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def _fmt(m, s):
    """``m ± s`` whenever there is a spread over seeds (also when it is 0), ``m`` for one seed."""
    if m is None:
        return "–"
    return f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"


def _auc(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(root: Path, all_stages: dict) -> dict:
    """Per model: final eval metrics per seed; per RL run: histories; SFT epoch records; stage times."""
    data = {"evals": {}, "histories": {}, "sft_epochs": {}, "times": {}, "meta": {}, "orm": {}}
    for seed, stages in all_stages.items():
        seed_root = root / f"seed-{seed}"
        for s in stages:
            done = _load(seed_root / s.name / "stage.json")
            if done:
                data["times"].setdefault(s.name, []).append(done["seconds"])
            if s.group == "eval":
                m = _load(seed_root / s.name / "metrics.json")
                if m:
                    data["evals"].setdefault(s.meta["model"], []).append(m)
            elif s.group == "rl":
                data["meta"][s.name] = s.meta
                h = _load(seed_root / s.name / "history.json")
                if h:
                    data["histories"].setdefault(s.name, []).append(h)
            elif s.group == "orm":
                r = _load(seed_root / s.name / "report.json")
                if r:
                    data["orm"].setdefault(s.name, []).append(r)
            elif s.name == "sft":
                path = seed_root / "sft" / "metrics.jsonl"
                if path.is_file():
                    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
                    data["sft_epochs"][seed] = [r for r in rows if "dev/maj@1" in r]
    return data


def _metric(data, model, key):
    return _mean_std([m.get(key) for m in data["evals"].get(model, [])])


def _k_of(data) -> int:
    for ms in data["evals"].values():
        for m in ms:
            return m.get("k", 0)
    return 0


def findings(data) -> dict:
    """Each finding: (True: holds / False: does not hold / None: cannot be tested here, explanation with numbers);
    a finding whose runs are missing is absent ('not measured')."""
    k = _k_of(data)
    g = lambda model, key="maj@1": _metric(data, model, key)[0]  # noqa: E731
    out = {}
    ei, ppo, rcrl = g("ei-sparse-sft"), g("ppo-sparse-sft"), g("rcrl-sparse-sft")
    if None not in (ei, ppo, rcrl):
        ok = ei >= ppo >= rcrl
        out["F1"] = (ok, f"maj@1: EI {ei:.3f}, PPO {ppo:.3f}, RCRL {rcrl:.3f}")
    sft1, sftk = g("sft"), g("sft", f"pass@{k}")
    if None not in (sft1, sftk, ei, ppo):
        rl = [(n, g(n), g(n, f"pass@{k}")) for n in ("ei-sparse-sft", "ppo-sparse-sft")]
        rl_ok = all(a is not None and b is not None and a >= sft1 and b >= sftk - 0.01 for _, a, b in rl)
        epochs = data["sft_epochs"].get(0) or next(iter(data["sft_epochs"].values()), [])
        kk = max((int(key.split("@")[1]) for r in epochs for key in r if key.startswith("dev/pass@")
                  and "verified" not in key), default=0)
        trade = None
        if len(epochs) >= 2 and kk:
            first, last = epochs[0], epochs[-1]
            trade = (last["dev/maj@1"] > first["dev/maj@1"], last[f"dev/pass@{kk}"] < max(r[f"dev/pass@{kk}"]
                                                                                              for r in epochs))
        text = (f"SFT maj@1 {sft1:.3f} / pass@{k} {sftk:.3f}; " +
                "; ".join(f"{n}: maj@1 {a:.3f} / pass@{k} {b:.3f}" for n, a, b in rl if a is not None))
        if trade is not None:
            maj_path = " -> ".join(format(r["dev/maj@1"], ".3f") for r in epochs)
            pass_path = " -> ".join(format(r[f"dev/pass@{kk}"], ".3f") for r in epochs)
            text += f"; SFT epochs: dev maj@1 {maj_path}, dev pass@{kk} {pass_path}"
        out["F2"] = (rl_ok and bool(trade and all(trade)), text)
    budgets = {}
    for name in ("ei-sparse-sft", "ppo-sparse-sft"):
        hs = data["histories"].get(name) or []
        if hs:
            budgets[name] = _rollouts_to_90(hs[0])
    if len(budgets) == 2 and all(v is not None for v in budgets.values()):
        a, b = budgets["ei-sparse-sft"], budgets["ppo-sparse-sft"]
        ratio = max(a, b) / max(1, min(a, b))
        out["F3"] = (ratio <= 2.0, f"rollouts to reach 90% of the final maj@1 gain: EI {a}, PPO {b} (ratio {ratio:.1f})")
    pairs = [("ppo-dense-sft", "ppo-sparse-sft"), ("ppo-orm-sft", "ppo-sparse-sft"), ("ei-orm-sft", "ei-sparse-sft")]
    diffs = [(a, b, g(a), g(b)) for a, b in pairs if g(a) is not None and g(b) is not None]
    if diffs:
        ok = all(x - y <= 0.03 for _, _, x, y in diffs)
        out["F4"] = (ok, "; ".join(f"{a} {x:.3f} vs {b} {y:.3f}" for a, b, x, y in diffs) + " (holds if no gain > 0.03)")
    pt_name = "pretrain" if "pretrain" in data["evals"] else "pretrained"
    pt, ei_pt = g(pt_name), g("ei-sparse-pretrained")
    pt_passk = g(pt_name, f"pass@{k}")
    if pt_passk is not None and pt_passk == 0:
        out["F5"] = (None, f"the pretrained start solves nothing (pass@{k} 0.000 few-shot), so RL from it has no "
                           "correct sample to reinforce; the comparison needs a stronger pretrained model")
    elif None not in (pt, sft1, ei, ei_pt):
        before, after = sft1 - pt, ei - ei_pt
        out["F5"] = (after < before, f"maj@1 gap SFT - pretrained: {before:.3f} before RL, {after:.3f} after EI "
                                     f"(EI from SFT {ei:.3f}, EI from pretrained {ei_pt:.3f})")
    sat = []
    for name in ("ei-sparse-sft", "ppo-sparse-sft"):
        hs = data["histories"].get(name) or []
        keys = [key for key in (hs[0][-1] if hs and hs[0] else {}) if key.startswith("pass@") and "verified" not in key]
        if hs and keys:
            kk = max(keys, key=lambda x: int(x.split("@")[1]))
            pts = [(h["rollouts"], h[kk]) for h in hs[0] if kk in h]
            if len(pts) >= 2:
                final = pts[-1][1]
                first_close = next(r for r, v in pts if abs(v - final) <= 0.02 or v >= final)
                sat.append((name, kk, first_close, pts[-1][0], final))
    if sat:
        ok = all(fc <= 0.5 * total for _, _, fc, total, _ in sat)
        out["F6"] = (ok, "; ".join(f"{n}: {kk} within 0.02 of its final {v:.3f} after {fc} of {t} rollouts"
                                   for n, kk, fc, t, v in sat))
    return out


def _verdict(ok: bool | None) -> str:
    return "cannot be tested at this scale" if ok is None else "holds" if ok else "does not hold"


def _rollouts_to_90(history) -> int | None:
    pts = [(h["rollouts"], h["maj@1"]) for h in history if "maj@1" in h]
    if len(pts) < 2:
        return None
    start, best = pts[0][1], max(v for _, v in pts)
    if best <= start:
        return pts[-1][0]
    goal = start + 0.9 * (best - start)
    return next(r for r, v in pts if v >= goal)


def _plot_histories(data, root: Path) -> list[Path]:
    plt = _pyplot()
    files = []
    by_alg = {}
    for name, meta in data["meta"].items():
        by_alg.setdefault(meta["algorithm"], []).append(name)
    for alg, names in sorted(by_alg.items()):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
        for name in names:
            hs = data["histories"].get(name) or []
            if not hs:
                continue
            h = hs[0]
            keys = [key for key in (h[-1] if h else {}) if key.startswith("pass@") and "verified" not in key]
            kk = max(keys, key=lambda x: int(x.split("@")[1])) if keys else None
            pts = [x for x in h if "maj@1" in x]
            axes[0].plot([x["rollouts"] for x in pts], [x["maj@1"] for x in pts], marker="o", label=name)
            if kk:
                axes[1].plot([x["rollouts"] for x in pts if kk in x], [x[kk] for x in pts if kk in x], marker="o",
                             label=f"{name} {kk}")
        for ax, title in zip(axes, ("maj@1", "pass@K")):
            ax.set_xlabel("rollouts consumed")
            ax.set_title(f"{alg}: {title} vs rollouts")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = root / f"curve-{alg.lower()}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files


def _plot_sft(data, root: Path) -> Path | None:
    epochs = data["sft_epochs"].get(0) or next(iter(data["sft_epochs"].values()), [])
    if not epochs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    xs = [r.get("epoch", i + 1) for i, r in enumerate(epochs)]
    kk = max((int(key.split("@")[1].split("_")[0]) for key in epochs[0] if key.startswith("dev/pass@")), default=0)
    for key in ("dev/maj@1", "dev/maj@1_verified", f"dev/pass@{kk}", f"dev/pass@{kk}_verified"):
        if key in epochs[0]:
            ax.plot(xs, [r.get(key) for r in epochs], marker="o", label=key[4:])
    return _save_plot(plt, fig, ax, root / "sft-epochs.png", "SFT epoch", "dev accuracy",
                      "SFT: maj@1 and pass@K per epoch", legend_size=7)


def _save_plot(plt, fig, ax, path: Path, x_label: str, y_label: str, title: str, legend_size: int) -> Path:
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_diversity(data, root: Path) -> Path | None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    any_line = False
    for name, hs in sorted(data["histories"].items()):
        pts = [(h["rollouts"], h["distinct_solutions"]) for h in (hs[0] if hs else []) if "distinct_solutions" in h]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            any_line = True
    if not any_line:
        plt.close(fig)
        return None
    return _save_plot(plt, fig, ax, root / "diversity.png", "rollouts consumed", "distinct solutions per question",
                      "Diversity during RL", legend_size=6)


def write_report(root: Path, cfg, all_stages: dict, wall_seconds: float) -> Path:
    data = collect(root, all_stages)
    k = _k_of(data)
    seeds = len(all_stages)
    order = ["pretrain", "pretrained", "sft"] + [s.name for s in all_stages[0] if s.group == "rl"]
    cols = ["maj@1", "maj@1_verified", f"maj@{k}", f"rerank@{k}", f"pass@{k}", f"pass@{k}_verified", "distinct_solutions"]
    rows = []
    for name in order:
        if name not in data["evals"]:
            continue
        meta = data["meta"].get(name, {})
        label = (f"{meta['algorithm']} ({meta['reward']}, from {meta['start']})" if meta else
                 {"sft": "SFT", "pretrain": "pretrained (few-shot)", "pretrained": "pretrained (few-shot)"}[name])
        rows.append([label] + [_fmt(*_metric(data, name, c)) for c in cols])
    found = findings(data)
    plots = [p for p in [_plot_sft(data, root), *_plot_histories(data, root), _plot_diversity(data, root)] if p]
    times = sorted(((n, statistics.mean(v)) for n, v in data["times"].items()), key=lambda x: -x[1])

    md = [f"# mathrl study: {cfg.task}{' (quick)' if cfg.quick else ''}", "",
          f"Re-testing Havrilla et al. 2024 at the scale at hand: {seeds} seed(s), final evaluation K={k}, "
          f"wall time {wall_seconds / 60:.1f} min.", "", "## Results (test split)", "",
          "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "Mean ± std over seeds. maj@1 is greedy; `_verified` counts a sample correct only if every step "
           "checks out (synthetic task).", "", "## Findings", ""]
    for key, claim in FINDINGS.items():
        if key in found:
            ok, text = found[key]
            md.append(f"- **{key} {claim}: {_verdict(ok)}.** {text}")
        else:
            md.append(f"- **{key} {claim}: not measured** (its runs are missing).")
    orm_lines = []
    for name, reps in data["orm"].items():
        r = reps[0]
        line = (f"- {name.upper()}: held-out AUC {_auc(r.get('auc'))} (within a question's samples "
                f"{_auc(r.get('auc_within_question'))})")
        if "step_precision" in r:
            line += f", bad-step precision {r['step_precision']:.3f} / recall {r['step_recall']:.3f} vs the exact checker"
        if "n/a" in line:
            line += " (n/a: its held-out samples are all of one class, so the AUC is undefined)"
        orm_lines.append(line + f" (trained in {r.get('total_seconds', 0) / 60:.1f} min)")
    if orm_lines:
        md += ["", "## Reward models", ""] + orm_lines
    md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    md += ["", "## Time per stage (mean over seeds)", "", "| stage | minutes |", "|---|---|"]
    md += [f"| {n} | {t / 60:.1f} |" for n, t in times]
    (root / "report.md").write_text("\n".join(md) + "\n")

    def img(p: Path) -> str:
        b64 = base64.b64encode(p.read_bytes()).decode()
        return f'<figure><img alt="{p.stem}" src="data:image/png;base64,{b64}"><figcaption>{p.stem}</figcaption></figure>'

    body = [f"<h1>mathrl study: {html.escape(cfg.task)}{' (quick)' if cfg.quick else ''}</h1>",
            f"<p>{seeds} seed(s), final evaluation K={k}, wall time {wall_seconds / 60:.1f} min.</p>",
            "<h2>Results (test split)</h2><table><tr><th>model</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
            + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>", "<h2>Findings</h2><ul>"]
    for key, claim in FINDINGS.items():
        if key in found:
            ok, text = found[key]
            verdict = _verdict(ok)
            body.append(f'<li class="{"ok" if ok else "no" if ok is not None else ""}"><b>{key} {html.escape(claim)}: {verdict}.</b> '
                        f"{html.escape(text)}</li>")
        else:
            body.append(f"<li><b>{key} {html.escape(claim)}: not measured.</b></li>")
    body.append("</ul>")
    if orm_lines:
        body.append("<h2>Reward models</h2><ul>" + "".join(f"<li>{html.escape(x[2:])}</li>" for x in orm_lines) + "</ul>")
    body.append("<h2>Plots</h2>" + "".join(img(p) for p in plots))
    body.append("<h2>Time per stage</h2><table><tr><th>stage</th><th>minutes</th></tr>"
                + "".join(f"<tr><td>{html.escape(n)}</td><td>{t / 60:.1f}</td></tr>" for n, t in times) + "</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}"
             "li.ok b{color:#176b17}li.no b{color:#9b1c1c}figure{margin:1em 0}")
    (root / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>mathrl study</title>"
                                      f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return root / "report"
