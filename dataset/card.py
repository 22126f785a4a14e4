"""The dataset artifact's card (README.md, in the Hugging Face dataset-card layout): what a reader
of the store needs to use or redistribute the data without reading code.

It says where the text came from and under which licences, how many examples each source and
builder made, what was mixed in, what was dropped and why, and the evaluation sets with what a
model with no knowledge scores on them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Sequence

from loretune.dataset import builders, mix


def dataset_card(domain: str, pages: Sequence[Any], report: Any, mixed: Sequence[dict[str, Any]],
                 sets: dict[str, list[dict[str, Any]]]) -> str:
    licences = sorted({p.provenance.get("license", "") for p in pages if p.provenance.get("license")})
    lines = ["---", f"pretty_name: loretune {domain} lore", "language: [en]",
             "task_categories: [text-generation, question-answering]",
             f"license: {'other' if licences else 'unknown'}", "---", "",
             f"# loretune dataset: {domain}", "",
             f"Chat examples built from public {domain} lore, and multiple-choice evaluation sets built beside "
             "them. Every training row and evaluation item names its source, document, url, revision, licence, "
             "attribution and (training) the builder that made it.", "", "## Sources", "",
             "| source | documents | licence | attribution (first document) |", "|---|---|---|---|"]
    by_source: dict[str, list[Any]] = defaultdict(list)
    for page in pages:
        by_source[builders.source_of(page)].append(page)
    for source, members in sorted(by_source.items()):
        found = sorted({m.provenance.get("license", "") for m in members} - {""})
        lines.append(f"| {source} | {len(members)} | {', '.join(found) or 'not recorded'} | "
                     f"{_cell(members[0].provenance.get('attribution', ''))} |")
    lines += ["", "## Training examples by source and builder", "",
              f"{report.train} training and {report.validation} validation examples.", "",
              "| source / builder | examples |", "|---|---|"]
    lines += [f"| {key} | {count} |" for key, count in report.examples.items()]
    skipped = getattr(report, "skipped", {})
    if skipped:
        lines += ["", "Documents a builder made nothing from, and why:", "",
                  "| source / builder | reason | documents |", "|---|---|---|"]
        lines += [f"| {builder} | {reason} | {n} |" for builder, reasons in skipped.items()
                  for reason, n in reasons.items()]
    if mixed:
        lines += ["", "## Mixed-in general chat data", "", "| source | format | rows | sha256 |", "|---|---|---|---|"]
        for source in mixed:
            name = mix.name(source)
            lines.append(f"| {name} | {source['format']} | {report.mixed.get(name, 0)} | "
                         f"{source.get('sha256', 'hub')[:16]} |")
    lines += ["", "## Dropped", "",
              f"- {report.empty_answers} training examples with an empty answer.",
              f"- {sum(report.near_duplicate_examples.values())} training examples that nearly repeat another "
              "document's (MinHash LSH over the answers' word sets, free-text and mixed-in rows): "
              + (", ".join(f"{k} {v}" for k, v in report.near_duplicate_examples.items()) or "none") + ".",
              f"- {report.dropped_exact} evaluation questions that training saw verbatim, and "
              f"{report.dropped_near_duplicate} near-duplicates of a training prompt (word-set Jaccard "
              "at or above the configured threshold).", "",
              "## Evaluation sets", "",
              "Two-choice questions, answers placed evenly; the baselines are what a model with no knowledge "
              "scores (always the first choice, the more frequent answer in the training text, the shorter one).",
              "", "| set | items | sources | " + " | ".join(_baseline_names(report)) + " |",
              "|---|---|---|" + "---|" * len(_baseline_names(report))]
    for name, info in report.eval_sets.items():
        sources = Counter(item.get("source") or "?" for item in sets.get(name, []))
        values = " | ".join(f"{info['baselines'][b]['value']:.3f} ± {info['baselines'][b]['stderr']:.3f}"
                            for b in _baseline_names(report))
        lines.append(f"| {name} | {info['items']} | {', '.join(f'{k} {v}' for k, v in sorted(sources.items()))} "
                     f"| {values} |")
    if getattr(report, "open_sets", None):
        lines += ["", "## Open-question sets", "",
                  "Questions answered in words and scored against a reference (`dataset/opensets.py`): `facts_open` "
                  "asks an infobox field in a wording no training example uses, `prose_open` asks how the page's "
                  "subject relates to a name that one sentence of its prose mentions. Every answer is in the "
                  "training text; no question is.", "",
                  "| set | items | pages | fields or names | leaked (dropped) | answer not taught (dropped) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {info['items']} | {info['pages']} | {info['fields']} | {info['leaked']} "
                  f"| {info['not_taught']} |" for name, info in report.open_sets.items()]
    if control := getattr(report, "control", "none"):
        if control != "none":
            lines += ["", f"**Control experiment `{control}`:** training does not teach the true facts."]
    return "\n".join(lines) + "\n"


def _baseline_names(report: Any) -> list[str]:
    first = next(iter(report.eval_sets.values()), {"baselines": {}})
    return list(first["baselines"])


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")[:120]
