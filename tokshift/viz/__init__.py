"""Figures that let people look inside: explain one video, per-class results, training curves.

In a notebook: ``from tokshift.viz.explain import explain`` returns the arrays (an
`Explanation`), ``tokshift.viz.explain_figure.render_explanation`` draws them. The
`tokshift explain`, `per-class` and `curves` commands live in tokshift/viz/commands.py.
"""
