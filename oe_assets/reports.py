"""Static HTML neuron reports: one section per neuron, offline (inline CSS and images, no script)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass
class NeuronSection:
    neuron: int
    threshold: float
    explained: float
    descriptions: list[tuple[str, float]]  # (text, coefficient)
    inputs: list[dict] = field(default_factory=list)  # {norm, label, text, thumbnail (PNG bytes|None)}


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4em 0} td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.pos{color:#0a6} .neg{color:#c33} .inputs{display:flex;flex-wrap:wrap;gap:8px}
.input{border:1px solid #ddd;border-radius:4px;padding:4px;max-width:320px;font-size:.9em}
.meta{color:#666;font-size:.9em}
"""


def render_report(title: str, subtitle: str, sections: list[NeuronSection]) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><p class='meta'>{esc(subtitle)}</p>"]
    for s in sections:
        parts.append(f"<section class='neuron' id='neuron-{s.neuron}'><h2>Neuron {s.neuron}</h2>")
        parts.append(f"<p class='meta'>significance threshold {s.threshold:.4g}; "
                     f"variance along the PC {100 * s.explained:.1f}%</p>")
        parts.append("<table><tr><th>description</th><th>coefficient</th></tr>")
        for text, coef in s.descriptions:
            parts.append(f"<tr><td>{esc(text)}</td><td class='{'pos' if coef > 0 else 'neg'}'>{coef:+.4f}</td></tr>")
        parts.append("</table><div class='inputs'>")
        for item in s.inputs:
            body = ""
            if item.get("thumbnail"):
                body = f"<img alt='input' src='data:image/png;base64,{base64.b64encode(item['thumbnail']).decode()}'><br>"
            body += esc(item["text"])
            parts.append(f"<div class='input'>{body}<div class='meta'>effect norm {item['norm']:.4g}, "
                         f"label {esc(str(item['label']))}</div></div>")
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "".join(parts)
