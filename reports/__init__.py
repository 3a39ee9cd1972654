"""Reports: read the results store and render comparisons (never touch live objects).

``load`` reads run / speed directories and the speed history, ``tables`` builds the tables
with their protocol marks, ``published`` matches published figures, ``markdown`` and
``html`` render, ``plots`` draws (matplotlib, imported lazily), ``report`` ties them
together for ``bench report`` and ``bench run``.
"""
